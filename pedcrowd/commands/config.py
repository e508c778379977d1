"""``pedcrowd config``: every key of the training config with its value (what ``--set`` sets)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def config_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c",
            help="YAML config to resolve (its base: file is read relative to it) "
            "[default: none, the CPU demo's defaults].",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one value, KEY=VALUE, as for pedcrowd train (repeatable) "
            "[default: none].",
        ),
    ] = None,
) -> None:
    """Print every training config key with its value, as YAML (the keys of --set).

    Without options: the defaults, i.e. the CPU demo that `pedcrowd train` runs.
    With --config and --set: the config `pedcrowd train` would use with them,
    fully resolved (the same file a run saves as RUN/config.yaml). A key is
    set as --set SECTION.KEY=VALUE, e.g. --set train.epochs=2; the comments
    on each field are in configs/cpu_demo.yaml and pedcrowd/*/config.py.

    \b
    Example:
      pedcrowd config -c configs/nms_ped_citypersons.yaml --set train.epochs=2
    """
    import yaml

    from pedcrowd.engine.config import config_to_dict, load_config

    cfg = load_config(config, list(overrides or []))
    typer.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), nl=False)


def register(app: typer.Typer) -> None:
    app.command("config", short_help="Print every training config key and its value.")(
        config_command
    )
