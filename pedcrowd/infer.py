"""Run a trained detector on images, folders, glob patterns and videos.

:func:`infer` is the library entry point behind ``pedcrowd infer``: it expands
the inputs (:func:`collect_sources`), decodes images in background threads
while the model runs on the previous batch, and returns the detections in the
standard results format (``image_id``, ``category_id``, ``bbox`` xywh,
``score``) plus ``file_name`` (and ``video``/``frame`` for video frames), which
``pedcrowd eval`` reads directly.

Images are read exactly as the training datasets read them (``cv2.imread``,
then :func:`pedcrowd.data.datasets.bgr_to_tensor`: BGR -> RGB, float32 / 255),
and the boxes go through the same :func:`pedcrowd.formats.detections.results_entries`,
so a checkpoint gives the same boxes here as in the evaluation run during training.

Output file names: a file given directly keeps its base name; files found in a
folder or by a glob are named relative to that folder (or the glob's fixed
prefix), e.g. ``frankfurt/frankfurt_000000_000294_leftImg8bit.png``; frame i of
``clip.mp4`` is ``clip.mp4#000123``.
"""

from __future__ import annotations

import glob
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from pedcrowd.data.datasets import bgr_to_tensor
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats._io import write_text_atomic
from pedcrowd.formats.detections import (
    AmbiguousFileName,
    FileNameIndex,
    file_name_index,
    output_to_xywh,
    results_entries,
)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
VIDEO_EXTS = frozenset({".mp4", ".avi"})
PERSON_CATEGORY = 1


@dataclass(frozen=True)
class Source:
    """One input file: ``name`` is how it appears in the output."""

    path: Path
    name: str
    is_video: bool


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
        vis_dir: where annotated images/videos were written, or None.
    """

    detections: list[dict[str, Any]]
    n_images: int
    n_videos: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    out_file: Path | None = None
    vis_dir: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else 0.0


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _from_folder(root: Path) -> list[Source]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            kind = _kind(path)
            if kind is not None:
                found.append(Source(path, path.relative_to(root).as_posix(), kind == "video"))
    return found


def collect_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """Expand image files, folders (recursively), glob patterns and videos.

    Args:
        inputs: paths or glob patterns (``data/**/*.png``), in the order wanted.

    Returns:
        Sources in input order (folders and globs sorted), each file once.

    Raises:
        PedcrowdError: a path that does not exist, a glob or folder with no
            image or video in it, or a file that is neither.
    """
    sources: list[Source] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = _from_folder(path)
            if not found:
                raise PedcrowdError(f"{text}: folder holds no image or video (png/jpg/jpeg/bmp/mp4/avi)")
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                raise PedcrowdError(f"{text}: not an image or video (png/jpg/jpeg/bmp/mp4/avi)")
            found = [Source(path, path.name, kind == "video")]
        elif glob.has_magic(text):
            # Names relative to the pattern's fixed prefix keep sub-folders apart.
            parts = Path(text).parts
            fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
            root = Path(*parts[:fixed]) if fixed else Path(".")
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                mpath = Path(match)
                kind = _kind(mpath)
                if mpath.is_file() and kind is not None:
                    found.append(Source(mpath, mpath.relative_to(root).as_posix(), kind == "video"))
            if not found:
                raise PedcrowdError(f"{text}: pattern matches no image or video")
        else:
            raise PedcrowdError(f"{text}: no such file or folder")
        sources.extend(found)
    seen: set[Path] = set()
    unique = []
    for s in sources:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return unique


def count_frames(sources: Sequence[Source]) -> int:
    """Images plus (approximate, from the container header) video frames.

    Raises:
        PedcrowdError: a video that cannot be opened, before any work is done.
    """
    total = 0
    for s in sources:
        if s.is_video:
            cap = cv2.VideoCapture(str(s.path))
            if not cap.isOpened():
                raise PedcrowdError(f"{s.path}: cannot open video")
            total += max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            cap.release()
        else:
            total += 1
    return total


# The datasets' own conversion (the same values and layout, so the same conv arithmetic);
# the name is kept for scripts/bench_infer.py.
to_tensor = bgr_to_tensor


@dataclass
class _Item:
    """One decoded image or frame, or a skipped input (``tensor is None``)."""

    name: str
    tensor: torch.Tensor | None
    image: np.ndarray | None = None  # BGR, kept only for --vis
    video: str | None = None
    frame: int | None = None
    fps: float = 0.0
    error: str | None = None


_DONE = object()


def _decode_image(source: Source, keep_image: bool) -> _Item:
    image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
    if image is None:
        return _Item(source.name, None, error="cannot decode image")
    return _Item(source.name, bgr_to_tensor(image), image if keep_image else None)


def _produce(
    sources: Sequence[Source],
    out: queue.Queue,
    pool: ThreadPoolExecutor,
    keep_image: bool,
    stop: threading.Event,
) -> None:
    """Put decoded items (images as futures of the pool) on ``out`` in order."""
    try:
        for source in sources:
            if stop.is_set():
                return
            if not source.is_video:
                out.put(pool.submit(_decode_image, source, keep_image))
                continue
            cap = cv2.VideoCapture(str(source.path))
            if not cap.isOpened():
                out.put(PedcrowdError(f"{source.path}: cannot open video"))
                return
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            index = 0
            while not stop.is_set():
                ok, frame = cap.read()
                if not ok:
                    break
                out.put(
                    _Item(
                        f"{source.name}#{index:06d}", bgr_to_tensor(frame),
                        frame if keep_image else None, video=source.name, frame=index, fps=fps,
                    )
                )
                index += 1
            cap.release()
    except BaseException as e:  # surface loader crashes in the consumer
        out.put(e)
    finally:
        out.put(_DONE)


def _iter_items(
    sources: Sequence[Source], keep_image: bool, workers: int, prefetch: int = 8
) -> Iterator[_Item]:
    """Decode in the background: a producer thread plus ``workers`` decode threads.

    Up to ``prefetch`` items wait decoded (or decoding) ahead of the consumer.

    cv2 releases the GIL while decoding, so threads overlap decoding with the
    model without the start-up cost of worker processes.
    """
    q: queue.Queue = queue.Queue(maxsize=max(prefetch, workers + 2))
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        thread = threading.Thread(
            target=_produce, args=(sources, q, pool, keep_image, stop), daemon=True
        )
        thread.start()
        try:
            while True:
                got = q.get()
                if got is _DONE:
                    break
                if isinstance(got, BaseException):
                    raise got
                yield got.result() if isinstance(got, Future) else got
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error.

    ``auto``, ``cpu`` and ``cuda`` are training's own parsing
    (:func:`pedcrowd.engine.distributed.resolve_device`); ``cuda:N`` (one GPU of
    several), which training does not take, is handled here.
    """
    from pedcrowd.engine.distributed import resolve_device as resolve_train_device

    if not device.startswith("cuda:"):
        return resolve_train_device(device)
    if not torch.cuda.is_available():
        raise PedcrowdError(f"--device {device}: no CUDA device available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise PedcrowdError(f"--device {device}: expected auto, cpu, cuda or cuda:N") from None


def load_model(weights: str | Path, device: torch.device) -> torch.nn.Module:
    """The detector (Faster R-CNN or FCOS) in eval mode from a run directory (its best.pt, else last.pt) or a checkpoint."""
    from pedcrowd.engine.checkpoint import load_for_inference

    model, _cfg = load_for_inference(weights, device=str(device))
    return model


def configure_postprocess(
    model: torch.nn.Module, score_thr: float | None, nms_thr: float | None
) -> None:
    """Set the output stage's score and NMS thresholds; None keeps the model's own.

    Faster R-CNN's live on its ``roi_heads``, FCOS's on the model itself.
    """
    heads = getattr(model, "roi_heads", model)
    if score_thr is not None:
        heads.score_thresh = float(score_thr)
    if nms_thr is not None:
        heads.nms_thresh = float(nms_thr)


def detections_to_records(
    output: dict[str, torch.Tensor], image_id: int, file_name: str
) -> list[dict[str, Any]]:
    """One image's model output -> results-format dicts (``bbox`` xywh).

    Args:
        output: torchvision detection output with ``boxes`` [D, 4] xyxy,
            ``scores`` [D], ``labels`` [D]; background never appears.
    """
    boxes_xywh, scores = output_to_xywh(output)
    return results_entries(image_id, file_name, boxes_xywh, scores)


def _gt_lookup(gt: str | Path, protocol: str) -> FileNameIndex:
    """The GT file's images by file name (and unique base name), as ``pedcrowd eval`` matches them."""
    from pedcrowd.eval import load_ground_truth

    return file_name_index(load_ground_truth(gt, protocol).records)


def _find_gt(lookup: FileNameIndex, name: str) -> Any | None:
    """The GT record of image ``name``; None if the GT does not name it unambiguously."""
    try:
        return lookup.find(name)
    except AmbiguousFileName:
        return None


class _VisWriter:
    """Writes annotated images, and one annotated video per input video."""

    def __init__(self, root: Path, gt: FileNameIndex | None, score_thr: float):
        self.root, self.gt, self.score_thr = root, gt, score_thr
        self.video_name: str | None = None
        self.writer: cv2.VideoWriter | None = None

    def write(self, item: _Item, records: list[dict[str, Any]]) -> None:
        from pedcrowd.vis import draw_detections

        boxes = np.array([r["bbox"] for r in records], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        scores = np.array([r["score"] for r in records], dtype=np.float64)
        gt_boxes = gt_ignore = None
        rec = _find_gt(self.gt, item.name) if self.gt is not None else None
        if rec is not None and len(rec):
            gt_boxes = rec.boxes.copy()
            gt_boxes[:, 2:] += gt_boxes[:, :2]
            gt_ignore = rec.ignore
        drawn = draw_detections(
            item.image, boxes, scores, score_thr=self.score_thr, gt_boxes=gt_boxes,
            gt_ignore=gt_ignore,
        )
        if item.video is None:
            path = self.root / item.name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), drawn):
                raise PedcrowdError(f"{path}: cannot write image")
            return
        if item.video != self.video_name:
            self.close()
            path = self.root / (Path(item.video).stem + "_vis.mp4")
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = drawn.shape[:2]
            self.writer = cv2.VideoWriter(
                str(path), cv2.VideoWriter_fourcc(*"mp4v"), item.fps, (w, h)
            )
            self.video_name = item.video
        self.writer.write(drawn)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.writer, self.video_name = None, None


def infer(
    inputs: Sequence[str | Path],
    *,
    weights: str | Path | None = None,
    model: torch.nn.Module | None = None,
    out_file: str | Path | None = None,
    vis_dir: str | Path | None = None,
    gt: str | Path | None = None,
    protocol: str = "citypersons",
    score_thr: float | None = None,
    nms_thr: float | None = None,
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
            in it) or a checkpoint;
            or pass ``model`` instead (a torchvision FasterRCNN).
        out_file: write the detection JSON here.
        vis_dir: write annotated images (and ``VIDEO_vis.mp4`` per video) here.
        gt: a ground-truth file; its boxes are drawn in green on the ``vis``
            images, and its image ids are used for images whose file name it knows.
        protocol: how to read ``gt`` (``citypersons`` or ``caltech``).
        score_thr, nms_thr: second-stage score and NMS thresholds; None keeps the
            model's own (those of the evaluation during training).
        vis_score_thr: the lowest score drawn on ``vis`` images.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        workers: image decoding threads (default: one per CPU core, at most 8).
        on_start: called once with the expected number of images + frames.
        on_progress: called with the number of images done after each batch.
        on_skip: called with (name, reason) for each undecodable image.

    Returns:
        The detections and a summary; see :class:`InferResult`.
    """
    if (weights is None) == (model is None):
        raise ValueError("pass exactly one of weights= and model=")
    if batch_size < 1:
        raise PedcrowdError(f"--batch-size {batch_size}: must be at least 1")
    sources = collect_sources(inputs)
    expected = count_frames(sources)  # also fails early on a video that cannot be opened
    dev = resolve_device(device)
    workers = workers or min(8, os.cpu_count() or 1)
    if model is None:
        model = load_model(weights, dev)
    else:
        model = model.to(dev).eval()
    configure_postprocess(model, score_thr, nms_thr)
    lookup = _gt_lookup(gt, protocol) if gt is not None else None
    if on_start is not None:
        on_start(expected)

    vis = _VisWriter(Path(vis_dir), lookup, vis_score_thr) if vis_dir is not None else None
    result = InferResult(detections=[], n_images=0, n_videos=sum(s.is_video for s in sources))
    # Images the GT does not name are numbered after its largest id, never clashing with it.
    next_id = 1 if lookup is None else max((int(r.id) for r in lookup.names.values()), default=0) + 1
    start = time.perf_counter()

    def run_batch(batch: list[_Item]) -> None:
        nonlocal next_id
        with torch.inference_mode():
            outputs = model([it.tensor.to(dev, non_blocking=True) for it in batch])
        for it, output in zip(batch, outputs, strict=True):
            rec = _find_gt(lookup, it.name) if lookup is not None else None
            if rec is not None:
                image_id = int(rec.id)
            else:
                image_id, next_id = next_id, next_id + 1
            records = detections_to_records(output, image_id, it.name)
            if it.video is not None:
                for r in records:
                    r["video"], r["frame"] = it.video, it.frame
            result.detections.extend(records)
            if vis is not None:
                vis.write(it, records)
        result.n_images += len(batch)
        if on_progress is not None:
            on_progress(result.n_images)

    batch: list[_Item] = []
    try:
        # Two batches ahead: the next batch is decoded while the model runs this one.
        items = _iter_items(sources, vis is not None, workers, prefetch=2 * batch_size)
        for item in items:
            if item.tensor is None:
                result.skipped.append((item.name, item.error or "unreadable"))
                if on_skip is not None:
                    on_skip(item.name, item.error or "unreadable")
                continue
            batch.append(item)
            if len(batch) == batch_size:
                run_batch(batch)
                batch = []
        if batch:
            run_batch(batch)
    finally:
        if vis is not None:
            vis.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    result.seconds = time.perf_counter() - start
    if out_file is not None:
        result.out_file = write_text_atomic(out_file, json.dumps(result.detections))
    result.vis_dir = Path(vis_dir) if vis_dir is not None else None
    return result
