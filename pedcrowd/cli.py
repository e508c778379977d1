"""The ``pedcrowd`` command line: parses options, calls the library, renders.

Each command lives in its own module under :mod:`pedcrowd.commands` and is
registered here. Command modules import only typer, rich and the standard
library at import time; heavy modules (torch, cv2, matplotlib, scipy) are
imported inside the command that needs them, so ``pedcrowd eval`` never pays for
torch.

Errors: library code raises :class:`pedcrowd.errors.PedcrowdError` for bad
input. The top-level group turns it into one line on stderr and exit code 2;
``pedcrowd --debug ...`` (or ``PEDCROWD_DEBUG=1``) shows the traceback too.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
from typer.core import TyperGroup

from pedcrowd import __version__
from pedcrowd.errors import PedcrowdError

_debug = os.environ.get("PEDCROWD_DEBUG", "") not in ("", "0")


class _Group(TyperGroup):
    """Top-level group: bad input becomes one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PedcrowdError as e:
            if _debug:
                traceback.print_exception(e, file=sys.stderr)
            typer.echo(f"pedcrowd: error: {e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
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


def _register() -> None:
    import importlib
    import pkgutil

    import pedcrowd.commands as commands

    # The workflow's order in --help; any other command module comes after.
    order = ["train", "eval", "infer", "compare", "data"]
    names = [info.name for info in pkgutil.iter_modules(commands.__path__)]
    for name in sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n)):
        importlib.import_module(f"pedcrowd.commands.{name}").register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
