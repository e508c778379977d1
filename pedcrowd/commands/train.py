"""``pedcrowd train``: load the config, call :func:`pedcrowd.engine.train.train`, print MR^-2.

With no arguments it trains the CPU demo (the config defaults) on the
synthetic crowds, generating them under ``data/synth`` on first use.
Progress and logs go to stderr; stdout carries the final MR^-2 table (or JSON
with ``--json``). SIGTERM/SIGINT stop after the current step with a checkpoint
and exit 143/130, printing the command that continues the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pedcrowd.losses.config import LOSS_PRESETS, TERM_CHOICES


def _choices(key: str) -> str:
    """The registered terms of ``loss.<key>``, for the help: ``ce | focal | ghm | qfl``."""
    return " | ".join(TERM_CHOICES[key][2])


def train_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c",
            help="YAML config (e.g. configs/nms_ped_citypersons.yaml); a base: path in it is "
            "relative to the file [default: the CPU demo on synthetic crowds; with --resume, "
            "the run directory's config.yaml].",
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss",
            help=f"Crowd-loss preset: {' | '.join(LOSS_PRESETS)} (the papers' weights); "
            "applied after the config file, before --set [default: the config's loss section].",
        ),
    ] = None,
    cls_loss: Annotated[
        str | None,
        typer.Option(
            "--cls-loss",
            help=f"RoI-head classification loss: {_choices('cls')}, a "
            "registered term (pedcrowd.losses.registry.TERMS); the same as --set loss.cls=NAME "
            "[default: the config's loss.cls, ce].",
        ),
    ] = None,
    box_loss: Annotated[
        str | None,
        typer.Option(
            "--box-loss",
            help=f"RoI-head box loss: {_choices('box')}, a registered term; "
            "the same as --set loss.box=NAME. kl (KL-Loss) also turns on model.box_std_head; "
            "add --set postprocess.var_voting=true to evaluate with variance voting "
            "[default: the config's loss.box, smooth_l1].",
        ),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            "--sampler",
            help=f"How the RoI head picks its training RoIs: {_choices('sampler')} (random is "
            "torchvision's); the same as --set loss.sampler=NAME [default: the config's "
            "loss.sampler, random].",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one config value, KEY=VALUE with a dotted key, the value read as "
            "YAML (repeatable): --set optim.lr=0.01 --set train.epochs=2. Every key and its "
            "value: pedcrowd config [default: none].",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory [default: the config's train.out_dir]."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --out from its last.pt."),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto | cpu | cuda [default: the config's train.device]."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")
    ] = False,
) -> None:
    """Train a pedestrian detector; with no arguments, the 10-minute CPU demo.

    The config is the defaults (the CPU demo, configs/cpu_demo.yaml), or --config's
    file, then --loss/--cls-loss/--box-loss/--sampler, then each --set. Every key
    and its value: pedcrowd config (the same options print the resolved config).

    \b
    Examples:
      pedcrowd train
      pedcrowd train --set train.epochs=2 --out runs/short
      pedcrowd train -c configs/nms_ped_citypersons.yaml --loss nms
    """
    from pedcrowd.engine.config import resolve_config, run_config_path
    from pedcrowd.engine.train import train

    if config is None and resume:  # continue a run as it was configured
        config = run_config_path(out)
    cfg = resolve_config(config, loss=loss, cls_loss=cls_loss, box_loss=box_loss, sampler=sampler,
                         overrides=overrides or [], device=device)

    from pedcrowd.engine.reporter import RichReporter
    from pedcrowd.engine.signals import Interrupted

    err = Console(stderr=True)
    try:
        # the library refuses an --out holding a run (without --resume) and moves the
        # default directory on to NAME-2, ...; it locks the directory while training
        summary = train(cfg, out, resume=resume, reporter=RichReporter(err))
    except Interrupted as stopped:
        typer.echo(f"pedcrowd: {stopped}", err=True)
        raise typer.Exit(stopped.exit_code) from None
    if summary.get("rank", 0) != 0:
        return
    if as_json:
        from pedcrowd.fileio import dumps_strict

        typer.echo(dumps_strict(summary))
        return
    console = Console()
    console.print(mr_table(summary))
    console.print(run_summary_line(summary), soft_wrap=True, markup=False, highlight=False)


def mr_table(summary: dict) -> Table:
    """Final MR^-2 per setup (lower is better)."""
    table = Table(title=f"MR^-2 on the val split ({summary['run_dir']})")
    table.add_column("setup")
    table.add_column("MR^-2 %", justify="right")
    for name, mr in (summary.get("final_mr") or {}).items():
        table.add_row(name, "n/a" if mr is None else f"{100 * mr:.2f}")
    return table


def run_summary_line(summary: dict) -> str:
    """The best Reasonable of the run and its length, one line under the table (a table
    caption would wrap to the table's width)."""
    best = summary.get("best_mr")
    return (
        f"best Reasonable {100 * best:.2f}% (best.pt); " if best is not None else ""
    ) + f"{summary['iterations']} iterations in {summary['wall_s'] / 60:.1f} min"


def register(app: typer.Typer) -> None:
    app.command("train", short_help="Train a detector (no arguments: the CPU demo).")(
        train_command
    )
