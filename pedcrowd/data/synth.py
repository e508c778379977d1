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

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pedcrowd.data.config import SynthConfig
from pedcrowd.data.synth_scene import render_scene
from pedcrowd.errors import PedcrowdError
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
    out: Path, split: str, n: int, cfg: SynthConfig, tick: Callable[[], None]
) -> list[ImageRecord]:
    import cv2

    records = []
    split_key = 0 if split == "train" else 1
    names = _names(split, n)
    # A smaller set written over a larger one: remove the generator's own leftover
    # images (only our city folders and file pattern), so the folder matches the annotations.
    keep = set(names)
    for city in TRAIN_CITIES if split == "train" else VAL_CITIES:
        for old in (out / "leftImg8bit" / split / city).glob(f"{city}_000000_*_leftImg8bit.png"):
            if f"{city}/{old.name}" not in keep:
                old.unlink()
    # One thread: the images are small, and cv2's thread pool only fights the
    # other processes on a busy machine (measured: wall time 1.6x lower on 2 cores).
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for i, name in enumerate(names):
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
    cv2.imwrite(
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
    return rec


def generate(
    out: str | Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> SynthSummary:
    """Write a synthetic set (images, ``.mat``, ``val_gt.json``, ``synth.json``) under ``out``.

    Args:
        out: the data set root (created; existing files are overwritten).
        cfg: what to generate.
        progress: called as ``progress(done, total)`` after every image.
    """
    from pedcrowd.formats.citypersons_write import write_citypersons_json, write_citypersons_mat

    out = Path(out)
    t0 = time.perf_counter()
    total = cfg.train_images + cfg.val_images
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "synth.json").unlink(missing_ok=True)  # invalid until the set is complete
    summary = SynthSummary(out=out, images={}, pedestrians={}, ignore_boxes={}, seconds=0.0)
    for split, n in (("train", cfg.train_images), ("val", cfg.val_images)):
        records = _write_split(out, split, n, cfg, tick)
        write_citypersons_mat(out / "annotations" / f"anno_{split}.mat", records, split)
        if split == "val":
            write_citypersons_json(out / "annotations" / "val_gt.json", records)
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
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary


def read_synth_meta(out: str | Path) -> dict | None:
    """The ``synth.json`` of a generated set, or None when absent or unreadable."""
    path = Path(out) / "synth.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_synth(
    out: str | Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> SynthSummary:
    """Generate the set once; reuse it when its ``synth.json`` matches version, generator code and parameters."""
    out = Path(out)
    meta = read_synth_meta(out)
    complete = all(
        (out / "annotations" / f"anno_{split}.mat").is_file() for split in ("train", "val")
    )
    same = meta and (meta.get("version"), meta.get("code"), meta.get("params")) == (
        VERSION, generator_digest(), cfg.params()
    )
    if complete and same:
        return SynthSummary(
            out=out,
            images=meta.get("images", {}),
            pedestrians=meta.get("pedestrians", {}),
            ignore_boxes={},
            seconds=0.0,
            reused=True,
        )
    return generate(out, cfg, progress)
