"""``pedcrowd eval``: MR^-2 (CityPersons / Caltech protocols) and COCO AP, or CrowdHuman's AP/MR^-2/JI (CrowdDet)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

METRICS = ("MR-2", "AP", "JI", "all")


def eval_command(
    gt: Annotated[
        Path,
        typer.Option(
            "--gt",
            help="Ground truth: CityPersons val_gt.json or anno_*.mat, COCO-style JSON, a Caltech "
            "gt-<Setup>.mat cache or a folder of them, bbGt v3 text annotations (file or folder), "
            "or a CrowdHuman .odgt (--protocol crowdhuman).",
        ),
    ],
    dets: Annotated[
        Path,
        typer.Option(
            "--dets",
            help="Detections: results JSON list (image_id or file_name, bbox xywh, score), a Caltech "
            "result tree (setXX/VYYY.txt or setXX/VYYY/I#####.txt) or CrowdDet's per-line dtboxes dump.",
        ),
    ],
    protocol: Annotated[
        str | None,
        typer.Option(
            help="citypersons (official eval_MR_multisetup.py), caltech (dbEval.m v3.2.1) or crowdhuman "
            "(CrowdDet's lib/evaluate: AP, MR^-2, JI). Default: crowdhuman for a .odgt GT, else citypersons.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str,
        typer.Option(
            help="MR-2, AP (COCO AP through pycocotools; crowdhuman: CrowdDet's AP), JI (crowdhuman only) or all."
        ),
    ] = "MR-2",
    setup: Annotated[
        list[str] | None,
        typer.Option(
            "--setup",
            help="Setup to evaluate (repeatable): an official name such as Reasonable, or "
            "NAME:HMIN-HMAX:VMIN-VMAX [default: all setups of the protocol].",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help='{"images": [{"id", "file_name"}]} naming the frames of Caltech gt caches, in order; '
            'crowdhuman: {"images": [{"id", "file_name", "height", "width"}]} giving the image sizes '
            "[default: none]."
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(help="crowdhuman: read missing image sizes from the images here [default: Images/ beside the .odgt]."),
    ] = None,
    resize_dets: Annotated[
        bool,
        typer.Option(
            "--resize-dets/--no-resize-dets",
            help="Caltech: resize detections to aspect 0.41 (toolbox v3.2.1); --no-resize-dets gives "
            "the Pedestron/CSP numbers.",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON results to this file [default: none].")] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw miss rate vs FPPI curves to this PNG [default: none].")] = None,
) -> None:
    """Evaluate detections: log-average miss rate (MR^-2) per setup, optionally COCO AP; CrowdHuman: AP, MR^-2, JI.

    --dets are detections in a file (pedcrowd infer writes OUT/detections.json, a
    training run RUN/val_dets.json); to detect on images first, run pedcrowd infer.

    \b
    Examples:
      pedcrowd eval --gt data/synth/annotations/val_gt.json \\
          --dets runs/demo/val_dets.json
      pedcrowd eval --gt gt.odgt --dets dets.json --protocol crowdhuman
    """
    from pedcrowd.errors import PedcrowdError
    from pedcrowd.eval import coco_ap, evaluate, report_to_json
    from pedcrowd.eval.protocols import default_protocol, get_protocol

    log = Console(stderr=True)
    if metric not in METRICS:
        raise PedcrowdError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    if plot is not None and metric in ("AP", "JI"):
        raise PedcrowdError("--plot draws MR-FPPI curves: use it with --metric MR-2 or all")
    if plot is not None and plot.is_dir():
        raise PedcrowdError(f"--plot {plot}: is a folder; give the PNG file to write")
    start = time.perf_counter()
    usual = default_protocol(gt_path=gt)  # each format under its own protocol
    if protocol is None:
        protocol = usual
    elif protocol != usual and get_protocol(usual).reports_ji:  # asked for, but never silently
        log.print(f"note: evaluating CrowdHuman ground truth ({gt}) with the {protocol} protocol as asked; "
                  f"--protocol {usual} gives CrowdDet's AP, MR^-2 and JI")
    proto = get_protocol(protocol)
    _refuse_images_as_detections(dets)
    if proto.reports_ji:  # CrowdHuman: CrowdDet's AP, MR^-2 and JI together
        _crowdhuman(gt, dets, metric, setup, images, image_root, as_json, out, plot, log, start)
        return
    if metric == "JI":
        raise PedcrowdError("--metric JI: the Jaccard index is a CrowdHuman metric; use it with --protocol crowdhuman")
    truth = proto.load_ground_truth(gt, images=images)
    detections, truth = proto.detections_for(truth, dets)
    warning = missing_detections_warning(truth.records, detections)
    if warning:
        log.print(f"warning: {warning}", style="yellow", highlight=False)
    report = None
    if metric in ("MR-2", "all"):
        report = evaluate(truth, detections, protocol=protocol, setups=setup or None, resize_dets=resize_dets)
    ap = coco_ap(truth.records, detections) if metric in ("AP", "all") else None
    doc = report_to_json(report, metric, ap) if report else {"protocol": protocol, "metric": metric, "results": {}, "ap": ap}
    from pedcrowd.fileio import dumps_strict

    text = dumps_strict(doc, indent=1)
    _write(text, out)
    if plot is not None:
        curves = {name: (r.fppi, r.miss_rate, r.mr) for name, r in report.results.items()}
        _plot(curves, plot, f"{Path(dets).name} ({protocol})")
    if as_json:
        typer.echo(text)
    else:
        _render(report, ap, protocol)
    log.print(f"[dim]evaluated {len(truth.records)} images in {time.perf_counter() - start:.2f} s[/dim]")


def _refuse_images_as_detections(dets: Path) -> None:
    """--dets naming images (a file or a folder of them): say to run ``pedcrowd infer`` first."""
    from pedcrowd.errors import PedcrowdError
    from pedcrowd.media.sources import IMAGE_EXTS

    if dets.is_dir():
        files = [p for p in dets.rglob("*") if p.is_file()]
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        is_images = bool(images) and not any(p.suffix.lower() == ".txt" for p in files)
    else:
        is_images = dets.suffix.lower() in IMAGE_EXTS
    if is_images:
        raise PedcrowdError(
            f"--dets {dets}: images, not detections; detect first with "
            f"'pedcrowd infer {dets} --weights RUN --out preds', then evaluate "
            "'--dets preds/detections.json'"
        )


def missing_detections_warning(records, detections) -> str:
    """A warning when most GT images with pedestrians have no detection at all (detections of a
    subset of the GT's images, or of other images): those images count as all missed."""
    with_people = [r.id for r in records if (~r.ignore).any()]
    missing = sum(1 for i in with_people if i not in detections)
    if not with_people or 2 * missing <= len(with_people):
        return ""
    return (
        f"{missing} of the {len(with_people)} GT images with pedestrians have no detections; "
        "they count as all missed (are --dets for a subset of --gt's images?)"
    )


def _write(text: str, out: Path | None) -> None:
    if out is not None:
        from pedcrowd.fileio import write_text_atomic

        write_text_atomic(out, text + "\n")


def _plot(curves: dict, plot: Path, title: str) -> None:
    from pedcrowd.errors import PedcrowdError
    from pedcrowd.eval.plot import plot_mr_fppi

    try:
        plot_mr_fppi(curves, plot, title=title)
    except OSError as e:
        raise PedcrowdError(f"{plot}: cannot write the plot ({e})") from None


def _crowdhuman(gt, dets, metric, setup, images, image_root, as_json, out, plot, log, start) -> None:
    from pedcrowd.errors import PedcrowdError
    from pedcrowd.eval.crowdhuman import METRICS as CH_METRICS
    from pedcrowd.eval.crowdhuman import evaluate_crowdhuman, load_crowdhuman, result_to_json

    if setup:
        raise PedcrowdError("--setup: the crowdhuman protocol has one setup (all boxes, no height or visibility filter)")
    records, detections, sizes = load_crowdhuman(gt, dets, images, image_root)
    result = evaluate_crowdhuman(records, detections, sizes, CH_METRICS if metric == "all" else (metric,))
    from pedcrowd.fileio import dumps_strict

    text = dumps_strict(result_to_json(result, metric), indent=1)
    _write(text, out)
    if plot is not None:
        _plot({"All": (result.fppi, result.miss_rate, result.mr)}, plot, f"{Path(dets).name} (crowdhuman)")
    if as_json:
        typer.echo(text)
    else:
        table = Table(title="CrowdHuman (CrowdDet evaluation)")
        for col in ("AP %", "MR^-2 %", "JI %", "#GT", "#images"):
            table.add_column(col, justify="right")
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
        table.add_row(pct(result.ap), pct(result.mr), pct(result.ji), str(result.n_gt), str(result.n_images))
        Console().print(table)
    log.print(f"[dim]evaluated {result.n_images} images in {time.perf_counter() - start:.2f} s[/dim]")


def _render(report, ap: dict | None, protocol: str) -> None:
    console = Console()
    if report is not None:
        table = Table(title=f"MR^-2 ({protocol} protocol)")
        table.add_column("setup")
        table.add_column("MR^-2 %", justify="right")
        table.add_column("#GT", justify="right")
        table.add_column("#images", justify="right")
        for name, r in report.results.items():
            mr = "n/a" if r.mr is None else f"{100 * r.mr:.2f}"
            table.add_row(name, mr, str(r.n_gt), str(r.n_images))
        console.print(table)
    if ap is not None:
        table = Table(title="COCO AP (ignore regions as crowd)")
        for key in ap:
            table.add_column(key, justify="right")
        table.add_row(*(f"{100 * v:.2f}" if v >= 0 else "n/a" for v in ap.values()))
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command(
        "eval", no_args_is_help=True, short_help="Evaluate detections: MR^-2, AP, JI."
    )(eval_command)
