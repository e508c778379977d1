"""``pedcrowd analyze``: which misses the final NMS caused, which false positives it kept."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

MAX_PRE_NMS = 10_000  # detections_per_img while collecting the boxes before the final NMS


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
    from pedcrowd.analyze import analyze, report_to_json
    from pedcrowd.errors import PedcrowdError

    log = Console(stderr=True)
    from pedcrowd.analyze import parse_point

    points = tuple(at or ["fppi=0.1"])
    for point in points:  # before the model runs
        parse_point(point)
    path = Path(source)
    if path.is_file() and _first_byte(path) == b"{":
        raise PedcrowdError(
            f"{path}: a JSON-lines file (a CrowdDet dump or .odgt), not pre-NMS detections; "
            "analyze reads a results JSON list made with the final NMS off, or a run directory / checkpoint"
        )
    if path.is_file() and (path.suffix.lower() == ".json" or _first_byte(path) == b"["):
        if gt is None:
            raise PedcrowdError(f"{path}: a pre-NMS detection file needs --gt")
        protocol = protocol or ("crowdhuman" if gt.suffix.lower() == ".odgt" else "citypersons")
        truth, sizes, image_root_used = _load_gt(gt, protocol, images, image_root)
        from pedcrowd.formats.detections import read_detections

        records = truth if isinstance(truth, list) else truth.records
        pre = read_detections(path, records)
        nms, cap = (0.5 if nms_thresh is None else nms_thresh), (100 if max_dets is None else max_dets)
    else:
        pre, truth, sizes, image_root_used, protocol, nms, cap = _pre_nms_from_model(
            path, gt, protocol, images, image_root, device, log
        )
        nms = nms if nms_thresh is None else nms_thresh
        cap = cap if max_dets is None else max_dets
    if not 0.0 <= nms <= 1.0:
        raise PedcrowdError(f"--nms-thresh {nms}: must be in [0, 1]")
    if cap < 1:
        raise PedcrowdError(f"--max-dets {cap}: must be at least 1")
    report = analyze(truth, pre, protocol=protocol, nms_thresh=nms, max_dets=cap, setup=setup, points=points,
                     sizes=sizes)
    doc = report_to_json(report)
    from pedcrowd.fileio import dumps_strict

    text = dumps_strict(doc, indent=1)
    if out is not None:
        from pedcrowd.fileio import write_text_atomic

        write_text_atomic(out, text + "\n")
    if vis is not None:
        n = _write_vis(report, truth, image_root_used, vis, vis_max)
        log.print(f"[dim]wrote {n} images to {vis}[/dim]")
    if as_json:
        typer.echo(text)
    else:
        render(report)


def _first_byte(path: Path) -> bytes:
    """The first non-blank byte of a file (``[`` a JSON list, ``{`` JSON lines; a checkpoint is a zip)."""
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1]


def _load_gt(gt: Path, protocol: str, images: Path | None, image_root: Path | None):
    """(GT, CrowdHuman sizes or None, the image folder)."""
    if protocol == "crowdhuman":
        from pedcrowd.eval.crowdhuman import load_sizes
        from pedcrowd.formats.crowdhuman import read_odgt

        records = read_odgt(gt)
        return records, load_sizes(records, gt, {}, images, image_root), image_root or gt.parent / "Images"
    from pedcrowd.eval import load_ground_truth

    return load_ground_truth(gt, protocol, images), None, image_root


def _pre_nms_from_model(path, gt, protocol, images, image_root, device, log):
    """Run the model once with its final NMS off; the boxes, the GT and the NMS to replay."""
    from pedcrowd.engine.checkpoint import load_for_inference
    from pedcrowd.engine.device import resolve_device
    from pedcrowd.engine.train import predict
    from pedcrowd.errors import PedcrowdError

    dev = resolve_device(device)
    model, cfg = load_for_inference(path, device=dev)
    fmt = cfg.data.format
    protocol = protocol or {"caltech": "caltech", "crowdhuman": "crowdhuman"}.get(fmt, "citypersons")
    if gt is None:
        from pedcrowd.data.config import build_dataset

        dataset = build_dataset(cfg.data, "val", train=False)
        truth, root = list(dataset.records), None
        sizes = _dataset_sizes(dataset) if protocol == "crowdhuman" else None
    else:
        from pedcrowd.data.datasets import DetectionDataset

        if image_root is None:
            raise PedcrowdError("--gt with a model needs --image-root (the images to run the model on)")
        truth, sizes, root = _load_gt(gt, protocol, images, image_root)
        dataset = DetectionDataset(truth if isinstance(truth, list) else truth.records, image_root)
    post = getattr(cfg, "postprocess", None)
    if post is not None and (post.nms != "hard" or post.var_voting):
        raise PedcrowdError(f"{path}: analyze replays a hard NMS; this run post-processes with {post.describe()}")
    from pedcrowd.engine.predict import output_stage

    # Faster R-CNN keeps its final NMS in roi_heads; FCOS (model.arch fcos) on the model itself.
    heads = output_stage(model)
    if not (hasattr(heads, "nms_thresh") and hasattr(heads, "detections_per_img")):
        raise PedcrowdError(f"{path}: the model has no final NMS setting (nms_thresh) to turn off")
    saved = (heads.nms_thresh, heads.detections_per_img)
    log.print(f"[dim]running the model on {len(dataset)} images with the final NMS off[/dim]")
    try:
        heads.nms_thresh, heads.detections_per_img = 1.0, MAX_PRE_NMS
        import torch

        with torch.inference_mode():
            pre = predict(model, dataset, dev)
    finally:
        heads.nms_thresh, heads.detections_per_img = saved
    if root is None:
        root = getattr(dataset, "image_root", None)
    return pre, truth, sizes, root, protocol, float(saved[0]), int(saved[1])


def _dataset_sizes(dataset) -> dict[int, tuple[int, int]]:
    from PIL import Image

    sizes = {}
    for i, rec in enumerate(dataset.records):
        with Image.open(dataset.image_path(i)) as im:
            sizes[rec.id] = im.size
    return sizes


# What the analysis keys mean, in the tables (the JSON keeps the keys).
MISS_LABELS = {
    "nms_other_person": "removed by NMS (another person)",
    "nms_false_positive": "removed by NMS (a false positive)",
    "low_score": "scored below the threshold",
    "never_proposed": "never proposed",
    "other": "other",
}
FP_LABELS = {
    "duplicate": "duplicates NMS kept",
    "localisation": "poorly localised (IoU 0.1-0.5)",
    "background": "background",
}
FIX_LABELS = {
    "nms_other_person": "NMS misses (another person)",
    "nms_false_positive": "NMS misses (a false positive)",
    "nms_all": "all NMS misses",
    "low_score": "low-score misses",
    "never_proposed": "never-proposed misses",
    "duplicate": "kept duplicates",
    "localisation": "poor localisation",
    "background": "background FPs",
}


def ap_name(protocol: str) -> str:
    """The analysis's AP is the protocol matching's (IoU 0.5, trapezoid over its
    precision/recall points), not the COCO AP 0.5:0.95 of eval and compare."""
    return "CrowdDet AP" if protocol == "crowdhuman" else "AP50 (trapezoid, not COCO AP)"


def render(report) -> None:
    """The analysis as rich tables: one column per operating point."""
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
        rows.append((f"  {label}", [_share(p.misses[key], p.n_missed) for p in report.points]))
    rows.append(("false positives", [str(p.n_fp) for p in report.points]))
    for key, label in FP_LABELS.items():
        rows.append((f"  {label}", [_share(p.false_positives[key], p.n_fp) for p in report.points]))
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


def side_by_side(runs: list[str], as_json: bool = False) -> None:
    """Several ``pedcrowd analyze --out`` files (``name=path`` or ``path``), one column per run
    and operating point: the error counts and the oracle MR^-2."""
    from pedcrowd.compare import parse_run
    from pedcrowd.errors import PedcrowdError
    from pedcrowd.fileio import load_json

    docs = []
    for text in runs:
        name, path = parse_run(text)
        doc = load_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("points"), list):
            raise PedcrowdError(f"{path}: not a pedcrowd analyze --out file (no 'points')")
        _check_analysis(doc, path)
        docs.append((name, doc))
    if as_json:
        from pedcrowd.fileio import dumps_strict

        typer.echo(dumps_strict({"runs": [{"name": n, **d} for n, d in docs]}, indent=1))
        return
    table = Table(title="pedcrowd analyze, side by side")
    table.add_column("")
    columns = []
    for name, doc in docs:
        for p in doc["points"]:
            score = "-" if p["score"] is None else f"{p['score']:.3f}"
            table.add_column(f"{name}\n{p['name']} ({score})", justify="right")
            columns.append((doc, p))
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    table.add_row("MR^-2 % (all points)", *[pct(d["mr"]) for d, _ in columns])
    table.add_row("missed people", *[str(p["n_missed"]) for _, p in columns])
    for key, label in MISS_LABELS.items():
        table.add_row(f"  {label}", *[_share(p["misses"][key], p["n_missed"]) for _, p in columns])
    table.add_row("false positives", *[str(p["n_fp"]) for _, p in columns])
    for key, label in FP_LABELS.items():
        table.add_row(f"  {label}", *[_share(p["false_positives"][key], p["n_fp"]) for _, p in columns])
    for fix in _FIXES:
        table.add_row(f"MR^-2 % w/o {FIX_LABELS[fix]}", *[pct(p["oracle"][fix]["mr"]) for _, p in columns])
    Console().print(table)


_MISS_KEYS = tuple(MISS_LABELS)
_FP_KEYS = tuple(FP_LABELS)
_FIXES = ("nms_all", "duplicate", "low_score", "never_proposed")


def _check_analysis(doc: dict, path) -> None:
    """PedcrowdError naming the file and the entry when an ``analyze --out`` document lacks
    what the side-by-side table shows (an edited or truncated file)."""
    from pedcrowd.errors import PedcrowdError

    def number(value, where: str, optional: bool = False, integer: bool = False) -> None:
        ok = (value is None and optional) or (
            not isinstance(value, bool) and isinstance(value, int if integer else int | float)
            and (integer or math.isfinite(value)) and value >= 0
        )
        if not ok:
            kind = "a count" if integer else "a rate"
            raise PedcrowdError(f"{path}: {where} must be {kind}, got {str(value)[:60]}")

    number(doc.get("mr"), "'mr'", optional=True)
    for i, p in enumerate(doc["points"]):
        where = f"points[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise PedcrowdError(f"{path}: {where} is not an operating point with a 'name'")
        score = p.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise PedcrowdError(f"{path}: {where}.score must be a number or null")
        number(p.get("n_missed"), f"{where}.n_missed", integer=True)
        number(p.get("n_fp"), f"{where}.n_fp", integer=True)
        for section, keys in (("misses", _MISS_KEYS), ("false_positives", _FP_KEYS)):
            part = p.get(section)
            if not isinstance(part, dict):
                raise PedcrowdError(f"{path}: {where}.{section} must be an object")
            for key in keys:
                number(part.get(key), f"{where}.{section}.{key}", integer=True)
        oracle = p.get("oracle")
        for fix in _FIXES:
            entry = oracle.get(fix) if isinstance(oracle, dict) else None
            if not isinstance(entry, dict):
                raise PedcrowdError(f"{path}: {where}.oracle.{fix} must be an object")
            number(entry.get("mr"), f"{where}.oracle.{fix}.mr", optional=True)


def _share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.0f} %)" if total else str(count)


PERSON, SUPPRESSED, SUPPRESSOR = (0, 200, 0), (0, 165, 255), (0, 0, 255)  # BGR


def _with_legend(image, point, font: float):
    """``image`` with a band below naming the operating point and the three box colours."""
    import cv2
    import numpy as np

    score = "" if point is None or not point.score < float("inf") else f", score >= {point.score:.3f}"
    lines = [
        (f"NMS-caused misses at {point.name if point else '?'}{score}", (255, 255, 255)),
        ("green: the missed person", PERSON),
        ("orange: its box, removed by NMS (label: its score < the suppressor's)", SUPPRESSED),
        ("red: the box that suppressed it", SUPPRESSOR),
    ]
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, font, 1)
    step = th + base + 4
    band = np.full((step * len(lines) + 4, image.shape[1], 3), 30, np.uint8)
    for k, (text, color) in enumerate(lines):
        cv2.putText(band, text, (4, 2 + th + k * step), cv2.FONT_HERSHEY_SIMPLEX, font,
                    tuple(min(255, c + 60) for c in color), 1, cv2.LINE_AA)
    return np.vstack([image, band])  # below: the image keeps its pixel coordinates


def _write_vis(report, truth, image_root, out_dir: Path, limit: int) -> int:
    from pedcrowd.errors import PedcrowdError

    if image_root is None:
        raise PedcrowdError("--vis needs the images: pass --image-root")
    import cv2

    from pedcrowd.vis import place_label

    records = truth if isinstance(truth, list) else truth.records
    names = {r.id: r.file_name for r in records}
    by_image: dict[int, list[dict]] = {}
    point = report.points[0] if report.points else None
    for p in report.points[:1]:
        for ex in p.examples:
            by_image.setdefault(ex["image_id"], []).append(ex)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for image_id, examples in by_image.items():
        if written >= limit:
            break
        path = Path(image_root) / names[image_id]
        image = cv2.imread(str(path))
        if image is None:
            continue
        thick = max(1, round(max(image.shape[:2]) / 600))
        font = 0.45 * thick
        taken: list[tuple[int, int, int, int]] = []
        for ex in examples:
            for key, color in (("person", PERSON), ("suppressed", SUPPRESSED), ("suppressor", SUPPRESSOR)):
                x, y, w, h = ex[key]
                cv2.rectangle(image, (round(x), round(y)), (round(x + w), round(y + h)), color, thick + 1)
        for ex in examples:  # labels after the boxes, placed so that they do not cover each other
            text = f"{ex['score']:.2f} < {ex['suppressor_score']:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            x, y, w, h = ex["suppressed"]
            lx, ly = place_label(taken, (x, y, x + w, y + h), tw + 2, th + base + 1,
                                 image.shape[1], image.shape[0])
            cv2.rectangle(image, (lx, ly), (lx + tw + 2, ly + th + base + 1), SUPPRESSED, -1)
            cv2.putText(image, text, (lx + 1, ly + th), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1,
                        cv2.LINE_AA)
        image = _with_legend(image, point, font)
        target = out_dir / f"{Path(names[image_id]).stem}_nms.jpg"
        if not cv2.imwrite(str(target), image):
            raise PedcrowdError(f"{target}: cannot write the image")
        written += 1
    return written


def register(app: typer.Typer) -> None:
    app.command(
        "analyze", no_args_is_help=True, short_help="Which misses and false positives NMS caused."
    )(analyze_command)
