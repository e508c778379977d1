"""``pedcrowd analyze``: which misses the final NMS caused, which false positives it kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pedcrowd.compare_render import FIX_LABELS, FP_LABELS, MISS_LABELS, share


def analyze_command(
    source: Annotated[
        str,
        typer.Argument(
            help="A run directory or checkpoint (the model runs once with its final NMS off), or a "
            "results JSON of boxes BEFORE the final NMS (with --gt and --nms-thresh).",
            metavar="RUN_OR_PRE_NMS_DETS",
            show_default=False,
        ),
    ],
    gt: Annotated[
        Path | None,
        typer.Option("--gt", help="Ground truth (as for pedcrowd eval) [default: a run's val split].",
                     show_default=False),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(help="citypersons, caltech or crowdhuman [default: from the run's data format, else citypersons]."),
    ] = None,
    setup: Annotated[str | None, typer.Option(help="Setup [default: Reasonable; crowdhuman: All].")] = None,
    at: Annotated[
        list[str] | None,
        typer.Option("--at", help="Operating point, repeatable: fppi=X (the score where FPPI reaches X) "
                     "or score=X. Default: fppi=0.1.", show_default=False),
    ] = None,
    nms_thresh: Annotated[
        float | None,
        typer.Option(help="The final NMS IoU threshold to replay [default: the model's box_nms_thresh; 0.5 for a file]."),
    ] = None,
    max_dets: Annotated[
        int | None,
        typer.Option(help="Detections kept per image after NMS [default: the model's box_detections_per_img; 100]."),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(help="Images of --gt (needed to run a model on --gt, for --vis and CrowdHuman "
                     "sizes) [default: a run's own image folder].",
                     show_default=False),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="crowdhuman: image sizes file (as pedcrowd eval --images) [default: none].",
                     show_default=False),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON here [default: none].", show_default=False)] = None,
    vis: Annotated[
        Path | None,
        typer.Option(help="Write images of NMS-caused misses here: the person (green), its suppressed "
                     "box (orange) and the box that suppressed it (red) [default: none].",
                     show_default=False),
    ] = None,
    vis_max: Annotated[int, typer.Option(help="At most this many --vis images.")] = 50,
) -> None:
    """Attribute every miss and false positive at an operating point to NMS, score, proposals,
    duplicates, localisation or background, with oracle MR^-2 / AP per fixed error type.

    \b
    Example:
      pedcrowd analyze runs/baseline --at fppi=0.1 --at fppi=1 --vis nms_vis/
    """
    from pedcrowd.analyze import DEFAULT_POINTS, analyze, report_to_json
    from pedcrowd.fileio import dumps_strict

    log = Console(stderr=True)

    def on_model_start(n_images: int) -> None:
        log.print(f"[dim]running the model on {n_images} images with the final NMS off[/dim]")

    report = analyze(
        source, gt=gt, protocol=protocol, setup=setup, points=tuple(at or DEFAULT_POINTS),
        nms_thresh=nms_thresh, max_dets=max_dets, image_root=image_root, images=images, device=device,
        out_file=out, vis_dir=vis, vis_max=vis_max, on_model_start=on_model_start,
    )
    if report.vis_dir is not None:
        log.print(f"[dim]wrote {report.n_vis} images to {report.vis_dir}[/dim]")
    if as_json:
        typer.echo(dumps_strict(report_to_json(report), indent=1))
    else:
        render(report)


def render(report) -> None:
    """The analysis as rich tables: one column per operating point."""
    from pedcrowd.analyze import ap_name

    console = Console()
    mr = "n/a" if report.mr is None else f"{100 * report.mr:.2f} %"
    ap = "n/a" if report.ap is None else f"{100 * report.ap:.2f} %"
    console.print(f"{report.protocol} / {report.setup}: MR^-2 {mr}, {ap_name(report.protocol)} {ap}, "
                  f"{report.n_gt} people, {report.n_images} images; NMS IoU > {report.nms_thresh:g} "
                  f"replayed, cap {report.max_dets}", highlight=False)
    table = Table(title="errors at each operating point")
    table.add_column("")
    for p in report.points:
        score = "-" if not p.score < float("inf") else f"{p.score:.3f}"
        table.add_column(f"{p.name}\n(score {score})", justify="right")
    rows = [("missed people", [str(p.n_missed) for p in report.points])]
    for key, label in MISS_LABELS.items():
        rows.append((f"  {label}", [share(p.misses[key], p.n_missed) for p in report.points]))
    rows.append(("false positives", [str(p.n_fp) for p in report.points]))
    for key, label in FP_LABELS.items():
        rows.append((f"  {label}", [share(p.false_positives[key], p.n_fp) for p in report.points]))
    rows.append(("    dup. below NMS overlap", [str(p.flags["duplicate_below_nms"]) for p in report.points]))
    rows.append(("    loc. touching >= 2 people", [str(p.flags["localisation_crowd"]) for p in report.points]))
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    oracle = Table(title=f"if one error type were fixed: MR^-2 % / {ap_name(report.protocol)} %")
    oracle.add_column("fixed")
    for p in report.points:
        oracle.add_column(p.name, justify="right")
    for fix in report.points[0].oracle if report.points else ():
        cells = []
        for p in report.points:
            o = p.oracle[fix]
            m = "n/a" if o["mr"] is None else f"{100 * o['mr']:.2f}"
            a = "n/a" if o["ap"] is None else f"{100 * o['ap']:.2f}"
            cells.append(f"{m} / {a}")
        oracle.add_row(FIX_LABELS.get(fix, fix), *cells)
    console.print(oracle)


def register(app: typer.Typer) -> None:
    app.command(
        "analyze", no_args_is_help=True, short_help="Which misses and false positives NMS caused."
    )(analyze_command)
