"""Run a trained detector on images, folders, glob patterns and videos.

:func:`infer` is the library entry point behind ``pedcrowd infer``: it expands
the inputs (:func:`pedcrowd.media.sources.collect_sources`), decodes images in
background threads while the model runs on the previous batch
(:mod:`pedcrowd.media.decode`), and returns the detections in the standard
results format (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) plus
``file_name`` (and ``video``/``frame`` for video frames), which ``pedcrowd
eval`` reads directly. Image ids come from the ground truth where it names the
image (:class:`pedcrowd.formats.detections.ImageIds`); ``--vis`` drawings are
:class:`pedcrowd.vis.VisWriter`'s.

Images are decoded as the training datasets decode them and the boxes go
through the same :func:`pedcrowd.formats.detections.results_entries`, so a
checkpoint gives the same boxes here as in the evaluation run during training.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pedcrowd.box_np import xywh_to_xyxy
from pedcrowd.engine.device import resolve_device as _resolve
from pedcrowd.engine.predict import (
    configure_postprocess,
    load_detector,
    output_records,
    output_stage,
    run_detector,
)
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval import load_ground_truth
from pedcrowd.fileio import write_text_atomic
from pedcrowd.formats.detections import ImageIds, file_name_index
from pedcrowd.media.decode import Item, decode_workers, iter_items
from pedcrowd.media.sources import collect_sources, count_frames
from pedcrowd.model import pretrained
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.vis import VisWriter


@dataclass
class InferResult:
    """What :func:`infer` did.

    Attributes:
        detections: results-format dicts, one per box, in input order.
        n_images: images and video frames that went through the model.
        n_videos: videos read.
        skipped: (name, reason) of every input that could not be decoded.
        seconds: wall time of decoding + model + output (model loading excluded).
        images_per_s: ``n_images / seconds``.
        out_file: where the detection JSON was written, or None.
        postprocess_file: where the post-processing record was written, or None.
        vis_dir: where annotated images/videos were written, or None.
        postprocess: the post-processing used (the ``postprocess:`` fields, ``method``
            such as ``soft-gaussian+var-voting``, the thresholds, ``box_std``).
        input_scales: (height, width) of each distinct input size -> the factor the
            model's transform resizes it by (model.min_size / max_size); None if unknown.
    """

    detections: list[dict[str, Any]]
    n_images: int
    n_videos: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out_file: Path | None = None
    postprocess_file: Path | None = None
    vis_dir: Path | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)  # what post-processing ran
    input_scales: dict[tuple[int, int], float | None] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else 0.0


def input_scale(model: torch.nn.Module, height: int, width: int) -> float | None:
    """The factor by which the model's transform resizes an image of this size (torchvision's
    rule: short side to ``min_size``, long side at most ``max_size``); None without one."""
    transform = getattr(model, "transform", None)
    if transform is None or not hasattr(transform, "min_size"):
        return None
    min_size = transform.min_size[-1] if isinstance(transform.min_size, tuple | list) else transform.min_size
    return min(min_size / min(height, width), transform.max_size / max(height, width))


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :mod:`pedcrowd.engine.device`)."""
    return _resolve(device, allow_index=True)


def load_model(weights: str | Path, device: torch.device) -> torch.nn.Module:
    """The detector (Faster R-CNN or FCOS) in eval mode from a run directory (its best.pt,
    else last.pt) or a checkpoint, post-processing as its config's ``postprocess`` section says;
    ``coco``: torchvision's COCO Faster R-CNN as it is, its person detections
    (:func:`pedcrowd.model.pretrained.coco_person_detector`, a zero-shot pedestrian detector)."""
    if str(weights) == "coco" and not Path(weights).exists():
        return pretrained.coco_person_detector().to(device).eval()
    return load_detector(weights, device=str(device))[0]


def resolve_postprocess(
    base: PostprocessConfig, nms: str | None = None, var_voting: bool | None = None
) -> PostprocessConfig:
    """``base`` with the ``--nms`` / ``--var-voting`` choices applied (None keeps base's).

    Raises:
        PedcrowdError: an unknown ``--nms`` method.
    """
    if nms is not None:
        choices = typing.get_args(typing.get_type_hints(PostprocessConfig)["nms"])
        if nms not in choices:
            raise PedcrowdError(f"--nms {nms}: choose one of {', '.join(choices)}")
        base = dataclasses.replace(base, nms=nms)
    if var_voting is not None:
        base = dataclasses.replace(base, var_voting=var_voting)
    return base


def gt_image_ids(gt: str | Path | None, protocol: str) -> ImageIds:
    """Image ids from the GT file's images by file name (and unique base name), as
    ``pedcrowd eval`` matches them; 1, 2, ... without GT."""
    if gt is None:
        return ImageIds()

    return ImageIds(file_name_index(load_ground_truth(gt, protocol).records))


def _draw(vis, item: Item, records: list[dict[str, Any]], gt_record: Any | None) -> None:
    """Draw one image's detections (and its GT boxes, ignore regions grey) with ``vis``."""
    boxes = xywh_to_xyxy(np.array([r["bbox"] for r in records], dtype=np.float64))
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    gt_boxes = gt_ignore = None
    if gt_record is not None and len(gt_record):
        gt_boxes, gt_ignore = xywh_to_xyxy(gt_record.boxes), gt_record.ignore
    vis.write(
        item.image, item.name, boxes, scores, gt_boxes=gt_boxes, gt_ignore=gt_ignore,
        video=item.video, fps=item.fps,
    )


def infer(
    inputs: Sequence[str | Path],
    *,
    weights: str | Path | None = None,
    model: torch.nn.Module | None = None,
    out_file: str | Path | None = None,
    postprocess_file: str | Path | None = None,
    vis_dir: str | Path | None = None,
    gt: str | Path | None = None,
    protocol: str = "citypersons",
    score_thr: float | None = None,
    nms_thr: float | None = None,
    nms: str | None = None,
    var_voting: bool | None = None,
    vis_score_thr: float = 0.3,
    batch_size: int = 4,
    device: str = "auto",
    workers: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> InferResult:
    """Detect pedestrians in images and videos.

    Args:
        inputs: image files, folders (recursive), glob patterns, videos (mp4/avi).
        weights: a run directory (its best.pt, else last.pt, with the config stored
            in it), a checkpoint, or ``coco`` (torchvision's COCO model, person class);
            or pass ``model`` instead (a torchvision FasterRCNN).
        out_file: write the detection JSON here.
        postprocess_file: write what post-processing ran here (``weights`` and
            ``InferResult.postprocess``; ``pedcrowd infer`` writes ``OUT/postprocess.json``).
        vis_dir: write annotated images (and ``VIDEO_vis.mp4`` per video) here.
        gt: a ground-truth file; its boxes are drawn in green on the ``vis``
            images, and its image ids are used for images whose file name it knows.
        protocol: how to read ``gt`` (``citypersons`` or ``caltech``).
        score_thr, nms_thr: second-stage score and NMS thresholds; None keeps the
            model's own (those of the evaluation during training).
        nms, var_voting: ``hard``, ``soft-linear`` or ``soft-gaussian``, and variance
            voting (needs the KL head); None keeps the model's own (a checkpoint's
            ``postprocess`` section). What ran is in ``InferResult.postprocess``.
        vis_score_thr: the lowest score drawn on ``vis`` images.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: image decoding threads; 0 decodes between batches (default: on a GPU one
            per CPU core, at most 8; on the CPU the cores torch's threads leave free).
        on_start: called once with the expected number of images + frames.
        on_progress: called with the number of images done after each batch.
        on_skip: called with (name, reason) for each undecodable image.

    Returns:
        The detections and a summary; see :class:`InferResult`.

    Raises:
        PedcrowdError: a threshold out of range, a batch size below 1, an input that
            does not exist or cannot be opened (before the model loads); no input
            readable at all (after ``out_file`` is written, before ``postprocess_file``).
    """
    if (weights is None) == (model is None):
        raise ValueError("pass exactly one of weights= and model=")
    if score_thr is not None and not 0.0 <= score_thr <= 1.0:
        raise PedcrowdError(f"--score-thr {score_thr}: must be in [0, 1]")
    if nms_thr is not None and not 0.0 < nms_thr <= 1.0:
        raise PedcrowdError(f"--nms-thr {nms_thr}: must be in (0, 1]")
    if batch_size < 1:
        raise PedcrowdError(f"--batch-size {batch_size}: must be at least 1")
    sources = collect_sources(inputs)
    expected = count_frames(sources)  # also fails early on a video that cannot be opened
    dev = resolve_device(device)
    workers = decode_workers(dev.type) if workers is None else workers
    if model is None:
        model = load_model(weights, dev)
    else:
        model = model.to(dev).eval()
    heads = output_stage(model)
    own = getattr(heads, "postprocess", PostprocessConfig())  # torchvision, FCOS: hard
    post = resolve_postprocess(own, nms, var_voting)
    configure_postprocess(model, post, score_thr, nms_thr)
    ids = gt_image_ids(gt, protocol)
    if on_start is not None:
        on_start(expected)

    vis = None
    if vis_dir is not None:
        vis = VisWriter(Path(vis_dir), vis_score_thr)
    result = InferResult(detections=[], n_images=0, n_videos=sum(s.is_video for s in sources))
    result.postprocess = {
        **dataclasses.asdict(post), "method": post.describe(),
        "score_thresh": heads.score_thresh, "nms_thresh": heads.nms_thresh,
        "box_std": bool(getattr(heads, "has_box_std", False)),
    }
    start = time.perf_counter()
    try:
        _detect_all(result, model, sources, ids, vis, dev, batch_size, workers, on_progress, on_skip)
    finally:
        if vis is not None:
            vis.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    result.seconds = time.perf_counter() - start
    if out_file is not None:
        result.out_file = write_text_atomic(out_file, json.dumps(result.detections))
    if result.skipped and result.n_images == 0:
        names = ", ".join(name for name, _ in result.skipped[:3])
        raise PedcrowdError(
            f"none of the {len(result.skipped)} inputs could be read ({names}"
            f"{', ...' if len(result.skipped) > 3 else ''}); nothing was detected"
        )
    if postprocess_file is not None:  # what ran, so that runs of one checkpoint can be told apart
        meta = {"weights": None if weights is None else str(weights), **result.postprocess}
        result.postprocess_file = write_text_atomic(postprocess_file, json.dumps(meta, indent=1) + "\n")
    result.vis_dir = Path(vis_dir) if vis_dir is not None else None
    return result


def _detect_all(result: InferResult, model, sources, ids, vis, dev: torch.device, batch_size: int,
                workers: int, on_progress, on_skip) -> None:
    """Run ``model`` over every decodable image and frame of ``sources``, adding the
    detections (and the skipped inputs) to ``result`` and drawing on ``vis``."""

    def decoded(items: Iterable[Item]) -> Iterator[Item]:
        for item in items:
            if item.tensor is None:
                result.skipped.append((item.name, item.error or "unreadable"))
                if on_skip is not None:
                    on_skip(item.name, item.error or "unreadable")
            else:
                yield item

    # Two batches ahead: the next batch is decoded while the model runs this one.
    items = iter_items(sources, vis is not None, workers, prefetch=2 * batch_size,
                       background=dev.type == "cpu")
    for batch in run_detector(model, decoded(items), lambda it: it.tensor, device=dev,
                              batch_size=batch_size):
        for it, output in batch:
            size = tuple(it.tensor.shape[-2:])
            if size not in result.input_scales:
                result.input_scales[size] = input_scale(model, *size)
            image_id, gt_record = ids.assign(it.name)
            records = output_records(output, image_id, it.name)
            if it.video is not None:
                for r in records:
                    r["video"], r["frame"] = it.video, it.frame
            result.detections.extend(records)
            if vis is not None:
                _draw(vis, it, records, gt_record)
        result.n_images += len(batch)
        if on_progress is not None:
            on_progress(result.n_images)
