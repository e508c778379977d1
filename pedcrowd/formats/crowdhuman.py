"""CrowdHuman ``.odgt`` annotations: one JSON object per line, one line per image.

Each line is ``{"ID": "...", "gtboxes": [{"tag", "fbox", "vbox", "hbox",
"extra": {"ignore", "box_id", ...}}, ...]}`` with ``xywh`` boxes: ``fbox`` the
full body (it may reach past the image border), ``vbox`` the visible part,
``hbox`` the head (not used). ``tag == "mask"`` marks a crowd/ignore region;
``extra.ignore == 1`` marks a person that must be ignored. The image is
``Images/{ID}.jpg``; the file gives no image size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.records import IGNORE_REGION, PEDESTRIAN, ImageRecord


def _box(obj: dict, key: str, where: str) -> list[float]:
    box = obj.get(key)
    if box is None:
        return [np.nan] * 4
    if not isinstance(box, list) or len(box) != 4:
        raise PedcrowdError(f"{where}: '{key}' must be a list of 4 numbers, got {box!r}")
    return [float(v) for v in box]


def _parse_line(data: dict, index: int, first_ann_id: int, where: str) -> ImageRecord:
    if not isinstance(data, dict) or "ID" not in data:
        raise PedcrowdError(f"{where}: expected an object with an 'ID' field")
    boxes, vis, categories, ignore = [], [], [], []
    for obj in data.get("gtboxes", []):
        tag = obj.get("tag", "person")
        if "fbox" not in obj:
            raise PedcrowdError(f"{where}: a gtbox of image {data['ID']!r} has no 'fbox'")
        boxes.append(_box(obj, "fbox", where))
        vis.append(_box(obj, "vbox", where))
        extra = obj.get("extra") or {}
        # Anything that is not a person (masks and any tag we do not know) is
        # a region to ignore: treating it as background would teach the model
        # that people in crowds are negatives.
        is_person = tag == "person"
        categories.append(PEDESTRIAN if is_person else IGNORE_REGION)
        ignore.append(not is_person or int(extra.get("ignore", 0)) == 1)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    vis_arr = np.asarray(vis, dtype=np.float64).reshape(-1, 4)
    full_area = box_arr[:, 2] * box_arr[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        # vbox is drawn inside fbox; the clip guards against annotation slop.
        ratios = np.minimum(vis_arr[:, 2] * vis_arr[:, 3] / full_area, 1.0)
    ratios[full_area <= 0] = np.nan
    return ImageRecord(
        id=index,
        file_name=f"{data['ID']}.jpg",
        boxes=box_arr,
        vis_boxes=vis_arr,
        categories=np.asarray(categories, dtype=object),
        ignore=np.asarray(ignore, dtype=bool),
        heights=box_arr[:, 3].copy(),
        vis_ratios=ratios,
        ann_ids=np.arange(first_ann_id, first_ann_id + len(box_arr), dtype=np.int64),
        crowd=np.asarray([c == IGNORE_REGION for c in categories], dtype=bool),
    )


def read_odgt(path: str | Path) -> list[ImageRecord]:
    """Parse a CrowdHuman ``.odgt`` file.

    Records get ids 1, 2, ... in file order and annotations ids 1, 2, ...
    across the whole file (CrowdHuman's own ``box_id`` is not unique).
    Blank lines are skipped.

    Args:
        path: the ``.odgt`` file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PedcrowdError(f"{path}: cannot read CrowdHuman annotations ({exc.strerror})") from exc
    records: list[ImageRecord] = []
    next_ann_id = 1
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PedcrowdError(f"{where}: not a JSON object ({exc.msg})") from exc
        record = _parse_line(data, len(records) + 1, next_ann_id, where)
        next_ann_id += len(record)
        records.append(record)
    return records
