"""Synthetic crowded street scenes in the CityPersons layout: pedcrowd's built-in data.

``generate(out, cfg)`` writes::
    OUT/leftImg8bit/{train,val}/CITY/CITY_000000_FFFFFF_leftImg8bit.png
    OUT/annotations/anno_train.mat, anno_val.mat     (official .mat structure)
    OUT/annotations/val_gt.json                      (official evaluation JSON)
    OUT/synth.json                                   (generator version + parameters)

so every reader, loader and the evaluator treat it like real CityPersons.

A scene: a textured street (facades, windows, pavement, road), people drawn
procedurally under a simple perspective (height proportional to the distance of
the feet below the horizon), some of them in overlapping groups, static
occluders (cars, poles, benches), posters with people on them (ignore regions)
and dense far-away groups (group boxes). Everything is pasted back to front
while an owner map records which object each pixel shows; a person's visible
box and visibility ratio come from the pixels of its silhouette that are still
its own at the end (:func:`visible_box`).

Boxes are ``xywh`` integer pixels here because that is what the files store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pedcrowd.data.config import SynthConfig
from pedcrowd.data.synth_scene import render_scene
from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import open_nofollow, write_text_atomic
from pedcrowd.formats.citypersons_write import write_citypersons_json, write_citypersons_mat
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, ImageRecord

# Bump when the drawn pixels or annotations change for the same parameters:
# ensure_synth() then regenerates cached sets. A cached set also records a
# digest of the generator's source, so a forgotten bump cannot reuse stale data.
VERSION = "2"  # 2: pure-numpy drawing (no opencv), the same pixels everywhere
_GENERATOR_MODULES = ("synth.py", "synth_scene.py", "synth_draw.py")


def generator_digest() -> str:
    """sha256 (16 hex digits) of the generator's source files."""
    h = hashlib.sha256()
    for name in _GENERATOR_MODULES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]

# Named presets of the CLI: mean labelled pedestrians per image / occlusion level.
DENSITY_PRESETS = {"low": 4.0, "medium": 8.0, "high": 14.0}
OCCLUSION_PRESETS = {"low": 0.25, "medium": 0.55, "high": 0.8}

TRAIN_CITIES = ("arlen", "brisk", "corvo")
VAL_CITIES = ("dunmore",)


@dataclass
class SynthSummary:
    """What ``generate`` / ``ensure_synth`` produced."""

    out: Path
    images: dict[str, int]
    pedestrians: dict[str, int]
    ignore_boxes: dict[str, int]
    seconds: float
    reused: bool = False


def parse_level(text: str, presets: dict[str, float], what: str) -> float:
    """``low|medium|high`` or a number (the CLI's --density / --occlusion)."""
    if text in presets:
        return presets[text]
    try:
        return float(text)
    except ValueError:
        raise PedcrowdError(
            f"--{what} {text!r}: expected {'|'.join(presets)} or a number"
        ) from None


def _names(split: str, n: int) -> list[str]:
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    names = []
    for i in range(n):
        city = cities[i * len(cities) // max(n, 1)]
        names.append(f"{city}/{city}_000000_{i:06d}_leftImg8bit.png")
    return sorted(names)


def _write_split(
    out: Path, split: str, n: int, cfg: SynthConfig, tick: Callable[[], None],
    should_stop: Callable[[], bool] | None = None,
) -> list[ImageRecord]:
    import cv2

    records = []
    split_key = 0 if split == "train" else 1
    names = _names(split, n)  # into a fresh folder: no image of an earlier set stays behind
    # One thread: the images are small, and cv2's thread pool only fights the
    # other processes on a busy machine (measured: wall time 1.6x lower on 2 cores).
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for i, name in enumerate(names):
            if should_stop is not None and should_stop():
                raise SynthInterrupted(f"{out}: generation stopped after {len(records)} {split} images")
            records.append(_write_image(out, split, split_key, i, name, cfg))
            tick()
    finally:
        cv2.setNumThreads(threads)
    return records


def _write_image(
    out: Path, split: str, split_key: int, i: int, name: str, cfg: SynthConfig
) -> ImageRecord:
    """Render image ``i`` of a split from its own seed and write its PNG."""
    import cv2

    # Each image has its own stream: the set does not depend on generation order.
    rng = np.random.default_rng([cfg.seed, split_key, i])
    image, rec = render_scene(rng, cfg.height, cfg.width, cfg, image_id=i + 1, file_name=name)
    path = out / "leftImg8bit" / split / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fast PNG settings (Huffman only, SUB filter): 2x faster than the default
    # level, files about 0.4 MB at 384 x 768.
    written = cv2.imwrite(
        str(path),
        image,
        [
            cv2.IMWRITE_PNG_COMPRESSION,
            1,
            cv2.IMWRITE_PNG_STRATEGY,
            cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
            cv2.IMWRITE_PNG_FILTER,
            cv2.IMWRITE_PNG_FILTER_SUB,
        ],
    )
    if not written:  # cv2 says no more than that: a full or read-only disk
        raise PedcrowdError(f"{path}: cannot write the image (disk full or not writable?)")
    return rec


class SynthInterrupted(PedcrowdError):
    """Generation stopped on request (a signal during training); nothing was left behind."""


LOCK_NAME = ".synth.lock"
# what the generator writes, relative to the set's root (moved into place in this order,
# synth.json, the completeness marker, last)
_OUTPUTS = ("leftImg8bit/train", "leftImg8bit/val", "annotations/anno_train.mat",
            "annotations/anno_val.mat", "annotations/val_gt.json")


class SetLock:
    """An ``flock`` on ``ROOT/.synth.lock``: shared while a process reads the set (a
    training), exclusive while one (re)generates it, so that a set is never rewritten
    under a training that uses it. One per root and process (:func:`set_lock`): a
    shared lock is converted to an exclusive one on the same descriptor."""

    def __init__(self, root: Path):
        self.root = root
        self.fd: int | None = None
        self.mode = 0
        self.users = 0

    def _open(self) -> int:
        if self.fd is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self.fd = open_nofollow(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT)
        return self.fd

    def shared(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Wait (polling, so that a stop request is seen) while another process generates."""
        fd = self._open()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                self.mode = fcntl.LOCK_SH
                return
            except BlockingIOError:
                if should_stop is not None and should_stop():
                    raise SynthInterrupted(f"{self.root}: stopped while waiting for its generation") from None
                time.sleep(0.2)

    def exclusive(self) -> None:
        """PedcrowdError when another process reads or writes the set."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.mode = fcntl.LOCK_EX
        except BlockingIOError:
            raise SetBusy(
                f"{self.root}: another process is using this synthetic set (made with other "
                "parameters) and it is not regenerated under it; wait for that process to end "
                "or set data.root (data synth --out) to another folder"
            ) from None

    def unlock(self) -> None:
        """Let go of the lock, keeping the file open (:meth:`shared` takes it again)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.mode = 0

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
        self.fd, self.mode = None, 0


class SetBusy(PedcrowdError):
    """Another process holds the synthetic set (training on it, or generating it)."""


_LOCKS: dict[Path, SetLock] = {}


@contextlib.contextmanager
def set_lock(root: str | Path, should_stop: Callable[[], bool] | None = None) -> Iterator[SetLock]:
    """This process's lock of the set at ``root``, held shared while inside (nested uses share it)."""
    key = Path(root).absolute()
    lock = _LOCKS.get(key)
    if lock is None:
        lock = _LOCKS[key] = SetLock(key)
    if lock.users == 0:
        lock.shared(should_stop)
    lock.users += 1
    try:
        yield lock
    finally:
        lock.users -= 1
        if lock.users == 0:
            lock.release()
            del _LOCKS[key]


def generate(
    out: str | Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SynthSummary:
    """Write a synthetic set (images, ``.mat``, ``val_gt.json``, ``synth.json``) under ``out``.

    The set is drawn into a temporary folder beside its files and moved into
    place once every file is on disk, ``synth.json`` (the completeness marker)
    last; a failure (full disk) or a stop leaves ``out`` as it was (or without
    ``synth.json``, which :func:`ensure_synth` then regenerates). It holds the
    set's lock exclusively: a set that another process is training on is refused.

    Args:
        out: the data set root (created; the generator's earlier files are replaced).
        cfg: what to generate.
        progress: called as ``progress(done, total)`` after every image.
        should_stop: checked before every image; True stops with :class:`SynthInterrupted`.
    """
    out = Path(out)
    with set_lock(out, should_stop) as lock:
        lock.exclusive()
        try:
            return _generate(out, cfg, progress, should_stop)
        finally:
            lock.shared()


def _generate(out: Path, cfg: SynthConfig, progress, should_stop) -> SynthSummary:
    _check_generated_here(out)
    t0 = time.perf_counter()
    total = cfg.train_images + cfg.val_images
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for stale in [*out.glob(".generating-*"), *out.glob(".replaced-*")]:  # of a killed generator
        shutil.rmtree(stale, ignore_errors=True)  # (we hold the set's lock exclusively)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".generating-"))
    try:
        (tmp / "annotations").mkdir()
        (tmp / "leftImg8bit").mkdir()
        summary = SynthSummary(out=out, images={}, pedestrians={}, ignore_boxes={}, seconds=0.0)
        for split, n in (("train", cfg.train_images), ("val", cfg.val_images)):
            records = _write_split(tmp, split, n, cfg, tick, should_stop)
            (tmp / "leftImg8bit" / split).mkdir(exist_ok=True)  # an empty split too
            write_citypersons_mat(tmp / "annotations" / f"anno_{split}.mat", records, split)
            if split == "val":
                write_citypersons_json(tmp / "annotations" / "val_gt.json", records)
            summary.images[split] = len(records)
            summary.pedestrians[split] = int(sum((r.categories == PEDESTRIAN).sum() for r in records))
            summary.ignore_boxes[split] = int(
                sum(np.isin(r.categories, [IGNORE_REGION, GROUP]).sum() for r in records)
            )
        summary.seconds = time.perf_counter() - t0
        meta = {
            "generator": "pedcrowd.data.synth",
            "version": VERSION,
            "code": generator_digest(),
            "params": cfg.params(),
            "images": summary.images,
            "pedestrians": summary.pedestrians,
        }
        _move_into_place(tmp, out)
        write_text_atomic(out / "synth.json", json.dumps(meta, indent=2) + "\n")
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_CITIES = "|".join(TRAIN_CITIES + VAL_CITIES)
_OWN_IMAGE = re.compile(rf"^(?:{_CITIES})/(?:{_CITIES})_000000_\d{{6}}_leftImg8bit\.png$")


def _check_generated_here(out: Path) -> None:
    """PedcrowdError when ``out`` holds image folders the generator did not write (a real
    data set): replacing its split folders would delete them."""
    if (out / "synth.json").is_file():
        return
    for split in ("train", "val"):
        folder = out / "leftImg8bit" / split
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and not _OWN_IMAGE.match(path.relative_to(folder).as_posix()):
                raise PedcrowdError(
                    f"{out}: holds images the generator did not write ({path}); generate the "
                    "synthetic set into another folder"
                )


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace the generator's outputs in ``out`` by those in ``tmp`` (renames in one file system)."""
    (out / "synth.json").unlink(missing_ok=True)  # invalid from the first move on
    trash = Path(tempfile.mkdtemp(dir=out, prefix=".replaced-"))
    try:
        for rel in _OUTPUTS:
            new, old = tmp / rel, out / rel
            old.parent.mkdir(parents=True, exist_ok=True)
            if old.exists():
                (trash / rel).parent.mkdir(parents=True, exist_ok=True)
                old.rename(trash / rel)
            new.rename(old)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def read_synth_meta(out: str | Path) -> dict | None:
    """The ``synth.json`` of a generated set, or None when absent or unreadable."""
    path = Path(out) / "synth.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_synth(
    out: str | Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SynthSummary:
    """Generate the set once; reuse it when its ``synth.json`` matches version, generator code
    and parameters and every file it promises is there (:func:`is_complete`)."""
    out = Path(out)
    with set_lock(out, should_stop) as lock:  # waits while another process generates it
        for attempt in range(3):
            reused = _reusable(out, cfg)
            if reused is not None:
                return reused
            try:
                return generate(out, cfg, progress, should_stop)
            except SetBusy:
                # Two processes that found the set missing at once both hold it shared, so
                # neither can take it exclusively: this one lets go for a random moment (the
                # other's exclusive lock succeeds meanwhile), waits for the other's set and
                # reuses it. A process training on a set made with other parameters keeps it
                # busy: after three tries the error stands.
                if attempt == 2:
                    raise
                lock.unlock()
                time.sleep(random.uniform(0.05, 0.5))
                lock.shared(should_stop)
        raise AssertionError("unreachable")


def _reusable(out: Path, cfg: SynthConfig) -> SynthSummary | None:
    """The summary of the complete set at ``out`` made with ``cfg`` by this generator, else None."""
    meta = read_synth_meta(out)
    same = meta and (meta.get("version"), meta.get("code"), meta.get("params")) == (
        VERSION, generator_digest(), cfg.params()
    )
    if not (same and is_complete(out, meta)):
        return None
    return SynthSummary(
        out=out,
        images=meta.get("images", {}),
        pedestrians=meta.get("pedestrians", {}),
        ignore_boxes={},
        seconds=0.0,
        reused=True,
    )


def is_complete(out: Path, meta: dict) -> bool:
    """Whether every file ``synth.json`` promises is there: both ``.mat`` files, ``val_gt.json``
    when there is a val split, and as many images per split as it records (a set
    whose files were deleted or never all written is regenerated, not reused)."""
    images = meta.get("images")
    if not isinstance(images, dict):
        return False
    for split in ("train", "val"):
        if not (out / "annotations" / f"anno_{split}.mat").is_file():
            return False
        found = sum(1 for _ in (out / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        if found != images.get(split):
            return False
    return images.get("val", 0) == 0 or (out / "annotations" / "val_gt.json").is_file()
