"""Caltech Pedestrian formats: bbGt v3 text annotations, ground-truth caches, result files.

* Text annotations (``% bbGt version=3``): one object per line,
  ``label x y w h occ xv yv wv hv ign ang``, one file per frame
  (``setXX/VYYY/I#####.txt``).
* Ground-truth caches ``gt-<Setup>.mat`` written by ``dbEval.m`` and shipped by
  Pedestron/CSP: variable ``gt``, a 1 x N cell of [K, 5] ``[x y w h ignore]``,
  already filtered for the setup, non-ignored boxes already resized to aspect
  0.41. They hold no frame names; an image list (``{"images": [...]}``, in the
  caches' order) supplies them.
* Results: per-video ``setXX/VYYY.txt`` (``frame,x,y,w,h,score``, frame 1-based,
  so frame 30 is ``I00029``) and per-frame ``setXX/VYYY/I#####.txt`` (``x,y,w,h,score``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import existing_path, regular_file
from pedcrowd.formats import validate
from pedcrowd.formats.coco import read_image_list
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, UNSURE, ImageRecord

LABELS = {"person": PEDESTRIAN, "person?": UNSURE, "people": GROUP, "ignore": IGNORE_REGION}

_FRAME_RE = re.compile(r"set(\d+)[_/\\]V(\d+)[_/\\]I(\d+)", re.IGNORECASE)
_VIDEO_RE = re.compile(r"set(\d+)[_/\\]V(\d+)$", re.IGNORECASE)

FrameKey = tuple[int, int, int]  # (set, video, 0-based frame index)


def frame_key(name: str) -> FrameKey | None:
    """``set06_V000_I00029.jpg`` or ``set06/V000/I00029.txt`` -> (6, 0, 29); None if not a frame name."""
    m = _FRAME_RE.search(name)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def _read_bbgt_file(path: Path, image_id: int, file_name: str) -> ImageRecord:
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("% bbGt"):
        raise PedcrowdError(f"{path}: not a bbGt annotation file (first line must be '% bbGt version=3')")
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    k = len(rows)
    boxes = np.zeros((k, 4))
    vis = np.full((k, 4), np.nan)
    cats = np.empty(k, dtype=object)
    ign = np.zeros(k, dtype=bool)
    ratios = np.ones(k)
    for j, row in enumerate(rows):
        if len(row) < 11:
            raise PedcrowdError(f"{path}: line {j + 2} has {len(row)} fields, expected 'label x y w h occ xv yv wv hv ign [ang]'")
        label = row[0]
        if label not in LABELS:
            raise PedcrowdError(f"{path}: line {j + 2}: unknown label {label!r}")
        try:
            nums = [float(v) for v in row[1:11]]
        except ValueError:
            raise PedcrowdError(f"{path}: line {j + 2}: non-numeric field") from None
        boxes[j] = nums[0:4]
        if not np.isfinite(nums).all():
            raise PedcrowdError(f"{path}: line {j + 2}: NaN or infinite value")
        if boxes[j, 2] < 0 or boxes[j, 3] < 0:
            raise PedcrowdError(f"{path}: line {j + 2}: negative box size")
        cats[j] = LABELS[label]
        if nums[4]:  # occ flag: the visible box is meaningful
            vis[j] = nums[5:9]
            area = boxes[j, 2] * boxes[j, 3]
            ratios[j] = vis[j, 2] * vis[j, 3] / area if area > 0 else 0.0
        ign[j] = bool(nums[9])
    return ImageRecord(
        id=image_id,
        file_name=file_name,
        boxes=boxes,
        vis_boxes=vis,
        categories=cats,
        ignore=ign,
        heights=boxes[:, 3].copy(),
        vis_ratios=ratios,
    )


def read_caltech_text(path: str | Path) -> list[ImageRecord]:
    """Read one bbGt v3 text file or a folder tree ``setXX/VYYY/I#####.txt``.

    Objects without an occlusion box get NaN ``vis_boxes`` and ``vis_ratios``
    1.0 (dbEval.m treats them as visibility ``inf``: see :mod:`pedcrowd.eval`).
    Image ids are 1..N in sorted file-name order.

    Returns:
        one record per file, ``file_name`` ``setXX/VYYY/I#####.jpg``.
    """
    path = existing_path(path, "file or folder")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise PedcrowdError(f"{path}: no .txt annotation files found")
    records = []
    for i, f in enumerate(files):
        rel = f.relative_to(path) if path.is_dir() else Path(f.name)
        key = frame_key(str(f.with_suffix("")))
        name = f"set{key[0]:02d}/V{key[1]:03d}/I{key[2]:05d}.jpg" if key else rel.with_suffix(".jpg").as_posix()
        records.append(_read_bbgt_file(f, i + 1, name))
    return records


# Caltech's standard split: set00-set05 train, set06-set10 test.
CALTECH_SETS = {
    "train": tuple(f"set{i:02d}" for i in range(6)),
    "test": tuple(f"set{i:02d}" for i in range(6, 11)),
}
CALTECH_SETS["val"] = CALTECH_SETS["test"]
_IMAGE_NAME = re.compile(r"^(set\d\d)[/_](V\d\d\d)[/_](I\d+\.\w+)$")


def select_split(records: list[ImageRecord], split: str, options: dict) -> list[ImageRecord]:
    """The records of ``split``: ``train`` (set00-05), ``test``/``val`` (set06-10) or ``all``."""
    if split not in (*CALTECH_SETS, "all"):
        raise PedcrowdError(f"Caltech split {split!r}: use train, test, val or all")
    if split == "all":
        return records
    return [r for r in records if r.file_name.split("/")[0][:5] in CALTECH_SETS[split]]


def image_candidates(image_root: Path, record: ImageRecord) -> list[Path]:
    """``images/setXX/VYYY/I#####.jpg`` or ``images/setXX_VYYY_I#####.jpg``, then the same as .png."""
    nested = image_root / record.file_name
    m = _IMAGE_NAME.match(record.file_name)
    flat = image_root / "_".join(m.groups()) if m else nested
    stems = [nested, flat]
    return stems + [p.with_suffix(".png") for p in stems]


def read_caltech_gt_cache(path: str | Path, images: str | Path | list[ImageRecord]) -> list[ImageRecord]:
    """Read a ``gt-<Setup>.mat`` cache; ``images`` names its cells (file or records, same order).

    Args:
        path: the cache, variable ``gt`` = 1 x N cell of [K, 5] ``[x y w h ignore]``.
        images: the image list (``{"images": [{"id", "file_name"}]}`` file, or
            records from :func:`pedcrowd.formats.coco.read_image_list`); N entries.

    Returns:
        N records with the cache's boxes (``categories`` all pedestrian; the
        cache keeps only the ignore flag).
    """
    import scipy.io

    path = regular_file(path, ".mat file")
    if not isinstance(images, list):
        images = read_image_list(images)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise PedcrowdError(f"{path}: not a readable .mat file ({e})") from None
    if "gt" not in mat:
        raise PedcrowdError(f"{path}: no 'gt' variable (not a Caltech ground-truth cache)")
    cells = np.asarray(mat["gt"]).ravel()
    if len(cells) != len(images):
        raise PedcrowdError(f"{path}: {len(cells)} frames, but the image list has {len(images)}")
    records = []
    for im, cell in zip(images, cells, strict=True):
        arr = np.asarray(cell, dtype=np.float64)
        arr = arr.reshape(-1, arr.shape[-1] if arr.size else 5)
        if arr.shape[1] < 5:
            raise PedcrowdError(f"{path}: frame {im.file_name} has {arr.shape[1]} columns, expected 5")
        validate.finite_rows(arr[:, :5], path, f"frame {im.file_name}")
        k = len(arr)
        records.append(
            ImageRecord(
                id=im.id,
                file_name=im.file_name,
                boxes=arr[:, :4].copy(),
                vis_boxes=np.full((k, 4), np.nan),
                categories=np.array([PEDESTRIAN] * k, dtype=object),
                ignore=arr[:, 4] != 0,
                heights=arr[:, 3].copy(),
                vis_ratios=np.full(k, np.nan),
                width=im.width,
                height=im.height,
            )
        )
    return records


def _parse_rows(path: Path, ncols: int) -> np.ndarray:
    text = regular_file(path).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return np.zeros((0, ncols))
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise PedcrowdError(f"{path}: non-numeric value in a result line") from None
    if values.size != ncols * len(lines):
        bad = next(i for i, ln in enumerate(lines) if len(ln.replace(",", " ").split()) != ncols)
        raise PedcrowdError(f"{path}: line {bad + 1} does not have {ncols} values")
    rows = values.reshape(-1, ncols)
    bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad_rows):
        raise PedcrowdError(f"{path}: line {bad_rows[0] + 1}: NaN or infinite value")
    return rows


def read_caltech_results(path: str | Path) -> dict[FrameKey, np.ndarray]:
    """Read a Caltech result tree: per-video ``setXX/VYYY.txt`` and/or per-frame ``setXX/VYYY/I#####.txt``.

    Per-frame values are rounded to 5 significant digits, because the official
    code first merges them into per-video files written with ``%.5g``.

    Returns:
        (set, video, 0-based frame) -> [D, 5] float64 ``x y w h score`` in file order.
    """
    path = existing_path(path, "folder")
    out: dict[FrameKey, list[np.ndarray]] = {}
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [regular_file(path)]
    if not files:
        raise PedcrowdError(
            f"{path}: no Caltech result files (setXX/VYYY.txt or setXX/VYYY/I#####.txt) in this folder"
        )
    for f in files:
        stem = f.with_suffix("").as_posix()
        vm = _VIDEO_RE.search(stem)
        if vm:
            rows = _parse_rows(f, 6)
            if not len(rows):  # a video without detections: valid, nothing to add
                continue
            frame = rows[:, 0]
            bad = np.flatnonzero(~np.isfinite(frame) | (frame < 1) | (frame != np.round(frame)))
            if len(bad):
                raise PedcrowdError(
                    f"{f}: line {bad[0] + 1}: frame {frame[bad[0]]:g} is not a 1-based frame number "
                    "(an integer >= 1; frame 30 is I00029)"
                )
            order = np.argsort(rows[:, 0], kind="stable")  # group by frame, file order inside
            rows = rows[order]
            frames, starts = np.unique(rows[:, 0], return_index=True)
            for fr, a, b in zip(frames.astype(int), starts, [*starts[1:], len(rows)], strict=True):
                out.setdefault((int(vm[1]), int(vm[2]), fr - 1), []).append(rows[a:b, 1:])
            continue
        key = frame_key(stem)
        if key is None:
            raise PedcrowdError(f"{f}: not a Caltech result file (setXX/VYYY.txt or setXX/VYYY/I#####.txt)")
        rows = _parse_rows(f, 5)
        rows = np.array([[float(f"{v:.5g}") for v in r] for r in rows]).reshape(-1, 5)
        out.setdefault(key, []).append(rows)
    return {k: np.concatenate(v) for k, v in out.items()}
