"""Decode images and video frames in background threads, in input order.

Images are read exactly as the training datasets read them (``cv2.imread``,
then :func:`pedcrowd.data.datasets.bgr_to_tensor`: BGR -> RGB, float32 / 255),
so a checkpoint sees the same bits here as in training's evaluation. Frame i of
``clip.mp4`` is named ``clip.mp4#000123``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pedcrowd.data.datasets import bgr_to_tensor
from pedcrowd.media.sources import Source


@dataclass
class Item:
    """One decoded image or frame, or a skipped input (``tensor is None``).

    Attributes:
        tensor: [3, H, W] float32 RGB in [0, 1].
        image: [H, W, 3] uint8 BGR, kept only when asked (for drawing).
    """

    name: str
    tensor: torch.Tensor | None
    image: np.ndarray | None = None
    video: str | None = None
    frame: int | None = None
    fps: float = 0.0
    error: str | None = None


_DONE = object()


_END_MARKERS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND"}


def truncated(path) -> bool:
    """Whether a JPEG/PNG lacks its end marker in its last bytes (a cut-off file that
    OpenCV would decode in part, with a grey or garbled bottom)."""
    marker = _END_MARKERS.get(path.suffix.lower())
    if marker is None:
        return False
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            return marker not in f.read()
    except OSError:
        return True


def decode_image(source: Source, keep_image: bool) -> Item:
    """One image file -> :class:`Item` (``tensor`` None and ``error`` set if undecodable)."""
    image = cv2.imread(str(source.path), cv2.IMREAD_COLOR)
    if image is None:
        return Item(source.name, None, error="cannot decode image")
    if truncated(source.path):
        return Item(source.name, None, error="truncated file (no end marker)")
    return Item(source.name, bgr_to_tensor(image), image if keep_image else None)


def _in_order(
    sources: Sequence[Source],
    decode: Callable[[Source], Item | Future],
    keep_image: bool,
    stop: threading.Event,
) -> Iterator[Item | Future]:
    """Every image (``decode(source)``) and video frame of ``sources``, in order."""
    for source in sources:
        if stop.is_set():
            return
        if not source.is_video:
            yield decode(source)
            continue
        cap = cv2.VideoCapture(str(source.path))
        if not cap.isOpened():  # degraded input: skip it, keep the other inputs
            yield Item(source.name, None, video=source.name, error="cannot open video")
            continue
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        index = 0
        try:
            while not stop.is_set():
                ok, frame = cap.read()
                if not ok:
                    # the header's count can be off by a few; far fewer frames: a corrupt video
                    if expected and index < expected - max(2, expected // 100):
                        yield Item(f"{source.name}#{index:06d}", None, video=source.name, frame=index,
                                   error=f"video ends after {index} of {expected} frames (corrupt or cut off)")
                    break
                yield Item(
                    f"{source.name}#{index:06d}", bgr_to_tensor(frame),
                    frame if keep_image else None, video=source.name, frame=index, fps=fps,
                )
                index += 1
        finally:
            cap.release()


def _produce(
    sources: Sequence[Source],
    out: queue.Queue,
    pool: ThreadPoolExecutor,
    keep_image: bool,
    stop: threading.Event,
    setup: Callable[[], None] | None = None,
) -> None:
    """Put decoded items (images as futures of the pool) on ``out`` in order (video
    frames are decoded here, so this thread gets ``setup`` too)."""
    if setup is not None:
        setup()
    try:
        for got in _in_order(sources, lambda s: pool.submit(decode_image, s, keep_image), keep_image, stop):
            out.put(got)
    except BaseException as e:  # surface loader crashes in the consumer
        out.put(e)
    finally:
        out.put(_DONE)


def decode_workers(device_type: str) -> int:
    """Default decoding threads: on a GPU one per core (at most 8), overlapping the
    model; on the CPU the cores torch's own threads leave free, and at least one, run at
    the lowest scheduling priority (``background=True`` in :func:`iter_items`) so that it
    only takes cycles the forward pass leaves idle. Measured with
    ``scripts/bench_infer.py`` on 2 cores with torch's 2 threads: one normal-priority
    decode thread 1.33x the bare forward loop, decoding between batches 1.25x, one
    low-priority thread 1.05-1.11x."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device_type != "cpu":
        return min(8, cores)
    return min(8, max(1, cores - torch.get_num_threads()))


def _lowest_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: per thread); a no-op elsewhere."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


def iter_items(
    sources: Sequence[Source], keep_image: bool, workers: int, prefetch: int = 8,
    background: bool = False,
) -> Iterator[Item]:
    """Decode in the background: a producer thread plus ``workers`` decode threads
    (``workers`` 0: no thread, each item decoded when the consumer asks for it);
    ``background``: the threads run at the lowest priority (for a CPU model that uses
    every core).

    Up to ``prefetch`` items wait decoded (or decoding) ahead of the consumer.

    cv2 releases the GIL while decoding, so threads overlap decoding with the
    model without the start-up cost of worker processes.
    """
    if workers <= 0:
        yield from _in_order(sources, lambda s: decode_image(s, keep_image), keep_image, threading.Event())
        return
    q: queue.Queue = queue.Queue(maxsize=max(prefetch, workers + 2))
    stop = threading.Event()
    setup = _lowest_priority if background else None
    with ThreadPoolExecutor(max_workers=max(1, workers), initializer=setup) as pool:
        thread = threading.Thread(
            target=_produce, args=(sources, q, pool, keep_image, stop, setup), daemon=True
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
