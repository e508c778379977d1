"""WiderPerson (Zhang et al., "WiderPerson: A Diverse Dataset for Dense Pedestrian Detection
in the Wild", IEEE TMM 2019): ``Annotations/NAME.jpg.txt``, ``Images/NAME.jpg``, and split
lists ``train.txt`` / ``val.txt`` of image names.

An annotation file holds a count, then one object per line: ``class x1 y1 x2 y2``
(pixels). Classes: 1 pedestrian, 2 rider, 3 partially-visible person, 4 ignore region,
5 crowd.

Which count: the paper treats pedestrians, riders and partially-visible persons as one
class, "person", for training and evaluation, and ignore regions and crowd as regions
whose detections are neither true nor false positives. So classes 1-3 are pedestrians
here and 4-5 ignore regions (5 as a group box). WiderPerson has no visibility
annotation: visible ratios are 1, so the CityPersons setups filter by height only (the
occlusion setups are empty or all-inclusive, not meaningful).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import existing_path, regular_file
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, ImageRecord

CATEGORY = {1: PEDESTRIAN, 2: PEDESTRIAN, 3: PEDESTRIAN, 4: IGNORE_REGION, 5: GROUP}


def is_widerperson(path: Path) -> bool:
    """A split list with ``Annotations/`` beside it, or a folder of ``NAME.jpg.txt`` files
    (the registry's ``claims``)."""
    if path.is_dir():
        return any(p.name.lower().endswith((".jpg.txt", ".png.txt")) for p in path.glob("*.txt"))
    return (path.parent / "Annotations").is_dir()


def read_annotation(path: Path) -> np.ndarray:
    """One ``NAME.jpg.txt``: [K, 5] float64 ``class x1 y1 x2 y2``."""
    lines = [ln.split() for ln in regular_file(path).read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise PedcrowdError(f"{path}: expected the object count on the first line")
    count, rows = int(lines[0][0]), lines[1:]
    if count != len(rows):
        raise PedcrowdError(f"{path}: the first line says {count} objects, the file lists {len(rows)}")
    bad = next((i for i, r in enumerate(rows) if len(r) != 5), None)
    if bad is not None:
        raise PedcrowdError(f"{path}: line {bad + 2}: expected 'class x1 y1 x2 y2'")
    try:
        values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise PedcrowdError(f"{path}: a non-numeric value") from None
    for i, (cls, x1, y1, x2, y2) in enumerate(values):
        if cls not in CATEGORY:
            raise PedcrowdError(f"{path}: line {i + 2}: class {cls:g} is not 1-5")
        if not np.isfinite([x1, y1, x2, y2]).all() or x2 < x1 or y2 < y1:
            raise PedcrowdError(f"{path}: line {i + 2}: box {x1:g} {y1:g} {x2:g} {y2:g} is not x1 y1 x2 y2")
    return values


def read_widerperson(path: str | Path) -> list[ImageRecord]:
    """Read a split list (``val.txt``: image names, ``Annotations/`` beside it) or an
    ``Annotations`` folder (every image). Records in list (or name) order, ids 1, 2, ...;
    ``file_name`` ``NAME.jpg`` relative to ``Images/``."""
    path = existing_path(path, "file or folder")
    if path.is_dir():
        folder = path
        files = sorted(p for p in path.glob("*.txt") if p.name.lower().endswith((".jpg.txt", ".png.txt")))
    else:
        folder = path.parent / "Annotations"
        names = [ln.strip() for ln in regular_file(path).read_text().splitlines() if ln.strip()]
        files = []
        for name in names:
            candidates = [folder / f"{name}.jpg.txt", folder / f"{name}.png.txt", folder / f"{name}.txt"]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise PedcrowdError(f"{path}: image {name!r} has no annotation ({candidates[0]})")
            files.append(found)
    if not files:
        raise PedcrowdError(f"{path}: no WiderPerson annotations (NAME.jpg.txt) in {folder}")
    records = []
    n_objects = 0
    for f in files:
        rows = read_annotation(f)
        k = len(rows)
        boxes = np.c_[rows[:, 1:3], rows[:, 3:5] - rows[:, 1:3]]  # [K, 4] xywh
        cats = np.array([CATEGORY[int(c)] for c in rows[:, 0]], dtype=object)
        records.append(
            ImageRecord(
                id=len(records) + 1,
                file_name=f.name[: -len(".txt")] if f.name.count(".") > 1 else f.stem + ".jpg",
                boxes=boxes,
                vis_boxes=np.full((k, 4), np.nan),
                categories=cats,
                ignore=cats != PEDESTRIAN,
                heights=boxes[:, 3].copy(),
                vis_ratios=np.where(cats == PEDESTRIAN, 1.0, np.nan),
                ann_ids=np.arange(n_objects + 1, n_objects + k + 1, dtype=np.int64),
                crowd=cats == GROUP,
            )
        )
        n_objects += k
    return records
