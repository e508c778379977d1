"""The ``pedcrowd`` command line: parses options, calls the library, renders.

Each command lives in its own module under :mod:`pedcrowd.commands` (found by
listing the package) with a ``register(app)`` function. Modules load on demand:
``pedcrowd eval`` imports ``commands/eval.py`` only (a command whose name is not
its module's, and ``--help``, load them all). Command modules import only typer
and the standard library at import time; rich and the heavy modules (torch, cv2,
matplotlib, scipy) are imported inside the command that needs them, so ``pedcrowd
eval`` never pays for torch.

Errors: library code raises :class:`pedcrowd.errors.PedcrowdError` for bad
input. The top-level group turns it into one line on stderr and exit code 2;
``pedcrowd --debug ...`` (or ``PEDCROWD_DEBUG=1``) shows the traceback too.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from typing import Annotated

import typer
import typer.main
from typer.core import TyperGroup

from pedcrowd import __version__
from pedcrowd.errors import PedcrowdError

try:  # typer >= 0.24 vendors click
    from typer._click.exceptions import NoSuchOption
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import NoSuchOption

_debug = os.environ.get("PEDCROWD_DEBUG", "") not in ("", "0")


# The workflow's order in --help; any other command module comes after.
ORDER = ["train", "eval", "infer", "compare", "data"]


def _command_modules() -> list[str]:
    import pedcrowd.commands as commands

    names = [info.name for info in pkgutil.iter_modules(commands.__path__) if not info.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def unknown_option_hint(option: str, args: list[str]) -> str:
    """For ``train --epochs 2``: "Config values are set with --set: --set train.epochs=2".

    ``option`` is the unknown option, ``args`` the command line after the program
    name (the option's value is read from it). Empty when no config key is named so.
    """
    if not args or args[0] not in ("train", "config"):
        return ""
    from pedcrowd.engine.config import config_keys

    name = option.lstrip("-").replace("-", "_")
    keys = [k for k in config_keys() if k.rsplit(".", 1)[-1] == name]
    if not keys:
        return ""
    value = ""
    for i, arg in enumerate(args):  # --epochs 2 or --epochs=2
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        elif arg == option and i + 1 < len(args) and not args[i + 1].startswith("-"):
            value = args[i + 1]
    sets = " or ".join(f"--set {k}={value or 'VALUE'}" for k in keys[:3])
    return f"Config values are set with --set: {sets} (every key: pedcrowd config)."


class _Group(TyperGroup):
    """Top-level group: loads command modules on demand; bad input becomes one
    line on stderr and exit code 2."""

    _loaded: set[str]

    def _load(self, modules: list[str]) -> None:
        loaded = self.__dict__.setdefault("_loaded", set())
        for name in modules:
            if name in loaded:
                continue
            loaded.add(name)
            sub = typer.Typer(rich_markup_mode=None)
            importlib.import_module(f"pedcrowd.commands.{name}").register(sub)
            for cmd_name, cmd in typer.main.get_group(sub).commands.items():
                self.commands.setdefault(cmd_name, cmd)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:
            modules = _command_modules()
            module = cmd_name.replace("-", "_")
            self._load([module] if module in modules else modules)
            if cmd_name not in self.commands:
                self._load(modules)
        return self.commands.get(cmd_name)

    def list_commands(self, ctx) -> list[str]:
        modules = _command_modules()
        self._load(modules)
        rank = {m: i for i, m in enumerate(modules)}

        def key(name: str):
            # typer lists command groups (``data``) after plain commands.
            is_group = hasattr(self.commands[name], "list_commands")
            return is_group, rank.get(name.replace("-", "_"), len(rank)), name

        return sorted(self.commands, key=key)

    def parse_args(self, ctx, args):
        ctx.meta["pedcrowd.args"] = list(args)  # for the hints on unknown options
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NoSuchOption as e:
            hint = unknown_option_hint(e.option_name, ctx.meta.get("pedcrowd.args", []))
            if hint:
                e.message, e.possibilities = f"No such option: {e.option_name}. {hint}", None
            raise
        except (PedcrowdError, OSError, RecursionError) as e:
            # OSError: a read-only or full disk, a path that is a file, ... wherever it
            # surfaces: one line naming the path and the cause. RecursionError: a
            # pathologically nested input file (a 100k-deep JSON line).
            if _debug:
                traceback.print_exception(e, file=sys.stderr)
            typer.echo(f"pedcrowd: error: {error_line(e)}", err=True)
            raise typer.Exit(2) from None


MAX_ERROR_CHARS = 500


def error_line(e: BaseException) -> str:
    """The one line printed for ``e``, cut to MAX_ERROR_CHARS (a value quoted whole could be megabytes)."""
    if isinstance(e, OSError):
        from pedcrowd.fileio import os_error_message

        text = os_error_message(e)
    elif isinstance(e, RecursionError):
        text = "an input is nested too deeply to read (recursion limit reached)"
    else:
        text = str(e)
    text = " ".join(text.splitlines())  # one line
    if len(text) > MAX_ERROR_CHARS:
        text = f"{text[:MAX_ERROR_CHARS]}... ({len(text)} characters)"
    return text


# Plain (click) help, not rich's: rich renders a value placeholder on every flag
# (--vis <bool>) and reads "[default: ...]" in help texts as markup and drops it.
app = typer.Typer(
    cls=_Group,
    rich_markup_mode=None,
    name="pedcrowd",
    help="Train and evaluate pedestrian detectors in crowds (NMS-Loss, RepLoss, MR^-2).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pedcrowd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback on errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    global _debug
    _debug = _debug or debug


def main() -> None:
    app()


if __name__ == "__main__":
    main()
