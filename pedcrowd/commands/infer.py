"""``pedcrowd infer``: run a checkpoint on images, folders, globs and videos."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def infer_command(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively for png/jpg/jpeg/bmp), "
            "glob patterns ('data/**/*.png', quoted) and videos (mp4/avi).",
            metavar="INPUT",
            show_default=False,
        ),
    ],
    weights: Annotated[
        Path,
        typer.Option(
            "--weights", "-w",
            help="A training run directory (uses its best.pt, else last.pt, and the config "
            "stored in it), a checkpoint file, or coco: torchvision's COCO Faster R-CNN as it is "
            "(its person class, a zero-shot pedestrian detector; downloaded on first use unless "
            "PEDCROWD_OFFLINE=1).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o",
            help="Output folder: detections.json (standard results format with file_name; "
            "'pedcrowd eval --dets' reads it) and, with --vis, annotated images in vis/.",
        ),
    ] = Path("infer_out"),
    vis: Annotated[
        bool,
        typer.Option(
            "--vis",
            help="Also write images (and an annotated VIDEO_vis.mp4 per video) with boxes "
            "coloured by score.",
        ),
    ] = False,
    gt: Annotated[
        Path | None,
        typer.Option(
            "--gt",
            help="Ground truth to overlay in green on the --vis images (ignore regions grey); "
            "its image ids are used in detections.json for the images it names [default: none].",
        ),
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="How to read --gt: citypersons or caltech.")
    ] = "citypersons",
    score_thr: Annotated[
        float | None,
        typer.Option(
            "--score-thr",
            help="Keep boxes scoring at least this. Default: the checkpoint's own setting, "
            "as used by the evaluation during training.",
            show_default=False,
        ),
    ] = None,
    nms_thr: Annotated[
        float | None,
        typer.Option(
            "--nms-thr",
            help="IoU threshold of the final NMS. Default: the checkpoint's own setting.",
            show_default=False,
        ),
    ] = None,
    nms: Annotated[
        str | None,
        typer.Option(
            "--nms",
            help="Final suppression: hard (torchvision NMS), soft-linear or soft-gaussian "
            "(soft-NMS). Default: the checkpoint's postprocess section (hard unless it was "
            "trained otherwise). Recorded in OUT/postprocess.json.",
            show_default=False,
        ),
    ] = None,
    var_voting: Annotated[
        bool | None,
        typer.Option(
            "--var-voting/--no-var-voting",
            help="Variance voting after the suppression (Softer-NMS); needs a model "
            "trained with --box-loss kl. Default: the checkpoint's postprocess section.",
            show_default=False,
        ),
    ] = None,
    vis_score_thr: Annotated[
        float, typer.Option("--vis-score-thr", help="Lowest score drawn with --vis.")
    ] = 0.3,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per forward pass.")
    ] = 4,
    device: Annotated[
        str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N.")
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(help="Background threads decoding images while the model runs; 0 decodes "
                     "between batches [default: with CUDA one per CPU core, at most 8; on the CPU "
                     "the cores torch's threads leave free].", show_default=False, min=0),
    ] = None,
) -> None:
    """Detect pedestrians in images and videos; write detections.json (and --vis images).

    \b
    Example:
      pedcrowd infer data/val/ clip.mp4 --weights runs/exp1 --vis --out preds
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from pedcrowd.infer import infer

    console = Console(stderr=True)
    shown_skips = 5
    progress = Progress(
        TextColumn("[bold]infer"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = progress.add_task("infer", total=None)
    n_skipped = 0

    def on_skip(name: str, why: str) -> None:  # the first few by name, then only the count
        nonlocal n_skipped
        n_skipped += 1
        if n_skipped <= shown_skips:
            console.print(f"[yellow]skipped[/] {name}: {why}")

    def on_start(total: int) -> None:  # the bar from when the images start (not on an early error)
        progress.start()
        progress.update(task, total=total or None)

    try:
        result = infer(
            inputs,
            weights=weights,
            out_file=out / "detections.json",
            postprocess_file=out / "postprocess.json",
            vis_dir=out / "vis" if vis else None,
            gt=gt,
            protocol=protocol,
            score_thr=score_thr,
            nms_thr=nms_thr,
            nms=nms,
            var_voting=var_voting,
            vis_score_thr=vis_score_thr,
            batch_size=batch_size,
            device=device,
            workers=workers,
            on_start=on_start,
            on_progress=lambda done: progress.update(task, completed=done),
            on_skip=on_skip,
        )
        # Video frame counts from the header can be off by a few; end the bar at 100 %.
        progress.update(task, total=result.n_images, completed=result.n_images)
    finally:
        if progress.live.is_started:  # stopping a bar never shown would print an empty line
            progress.stop()

    _print_summary(console, result)


def _print_summary(console: Console, result) -> None:
    """What ran, on stderr: counts, speed, skipped inputs, resize notes, where the files are."""
    skipped = ""
    if result.skipped:
        names = ", ".join(name for name, _ in result.skipped[:3])
        more = ", ..." if len(result.skipped) > 3 else ""
        skipped = f", [yellow]{len(result.skipped)} unreadable skipped ({names}{more})[/]"
    for (h, w), scale in result.input_scales.items():  # said once per input size
        if scale is not None and not 0.5 <= scale <= 2.0:
            console.print(
                f"note: {w} x {h} inputs are resized x{scale:.2f} to {round(w * scale)} x "
                f"{round(h * scale)} for the model (its model.min_size / max_size): a 50-pixel "
                f"person becomes {50 * scale:.0f} pixels", highlight=False,
            )
    videos = f" ({result.n_videos} videos)" if result.n_videos else ""
    console.print(
        f"{result.n_images} images{videos}, {len(result.detections)} detections in "
        f"{result.seconds:.1f} s: [bold]{result.images_per_s:.2f} images/s[/]{skipped}"
    )
    console.print(f"detections: {result.out_file} (post-processing {result.postprocess['method']}, "
                  f"recorded in {result.postprocess_file})")
    if result.vis_dir is not None:
        console.print(f"annotated: {result.vis_dir}/")


def _holding_the_out_lock(command):
    """``command`` run while holding ``--out``'s lock, as a training holds its run directory's:
    two runs into one folder would mix one's detections.json with both runs' vis/ images."""

    @functools.wraps(command)
    def run(**kwargs):
        from pedcrowd.engine.rundir import locked_output

        with locked_output(kwargs["out"]):
            return command(**kwargs)

    return run


def register(app: typer.Typer) -> None:
    app.command("infer", short_help="Detect pedestrians in images and videos.")(
        _holding_the_out_lock(infer_command)
    )
