"""CrowdHuman ``.odgt`` annotations: one JSON object per line, one line per image.

Each line is ``{"ID": "...", "gtboxes": [{"tag", "fbox", "vbox", "hbox",
"extra": {"ignore", "box_id", ...}}, ...]}`` with ``xywh`` boxes: ``fbox`` the
full body (it may reach past the image border), ``vbox`` the visible part,
``hbox`` the head (not used). ``tag == "mask"`` marks a crowd/ignore region;
``extra.ignore != 0`` marks a person that must be ignored. The image is
``Images/{ID}.jpg``; the file gives no image size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import regular_file
from pedcrowd.formats import validate
from pedcrowd.formats.records import IGNORE_REGION, PEDESTRIAN, ImageRecord


def _box(obj: dict, key: str, where: str) -> list[float]:
    box = obj.get(key)
    if box is None:
        return [np.nan] * 4
    if not isinstance(box, list) or len(box) != 4:
        raise PedcrowdError(f"{where}: '{key}' must be a list of 4 numbers, got {box!r}")
    return [validate.number(v, where, "a gtbox", f"'{key}' value") for v in box]


def _fast_columns(objs: list) -> tuple[np.ndarray, np.ndarray, list[bool], list[bool]] | None:
    """Column-wise parse of well-formed gtboxes (every one has 4-number fbox and vbox); None otherwise."""
    try:
        boxes = np.array([o["fbox"] for o in objs], dtype=np.float64)
        vis = np.array([o["vbox"] for o in objs], dtype=np.float64)
        person = [o.get("tag", "person") == "person" for o in objs]
        extras = [o.get("extra") or {} for o in objs]
        if not all(isinstance(e, dict) and type(e.get("ignore", 0)) in (int, float) for e in extras):
            return None
        flagged = [int(e.get("ignore", 0)) != 0 for e in extras]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        return None
    if boxes.shape != (len(objs), 4) or vis.shape != (len(objs), 4):
        return None
    return boxes, vis, person, [not p or f for p, f in zip(person, flagged, strict=True)]


def _parse_line(data: dict, index: int, first_ann_id: int, where: str) -> ImageRecord:
    if not isinstance(data, dict) or "ID" not in data:
        raise PedcrowdError(f"{where}: expected an object with an 'ID' field")
    if isinstance(data["ID"], bool) or not isinstance(data["ID"], str | int):
        raise PedcrowdError(f"{where}: 'ID' must be a string, got {data['ID']!r}")
    image_id = str(data["ID"])
    if image_id in ("", ".", "..") or "/" in image_id or "\\" in image_id or "\0" in image_id:
        # the image is read from ROOT/Images/{ID}.jpg: a path would read outside the root
        raise PedcrowdError(f"{where}: 'ID' must be a file name, not a path, got {image_id!r}")
    if "gtboxes" not in data:  # every line of a CrowdHuman file has one, [] for no people
        raise PedcrowdError(f"{where}: image {data['ID']!r} has no 'gtboxes' field")
    objs = data["gtboxes"]
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise PedcrowdError(f"{where}: 'gtboxes' must be a list of objects")
    fast = _fast_columns(objs) if isinstance(objs, list) and objs else None
    if fast is not None:
        box_arr, vis_arr, person, ignore = fast
        categories = [PEDESTRIAN if p else IGNORE_REGION for p in person]
        return _record(data, index, first_ann_id, where, box_arr, vis_arr, categories, ignore)
    boxes, vis, categories, ignore = [], [], [], []
    for obj in objs:
        tag = obj.get("tag", "person")
        if "fbox" not in obj:
            raise PedcrowdError(f"{where}: a gtbox of image {data['ID']!r} has no 'fbox'")
        boxes.append(_box(obj, "fbox", where))
        vis.append(_box(obj, "vbox", where))
        extra = obj.get("extra") or {}
        if not isinstance(extra, dict):
            raise PedcrowdError(f"{where}: a gtbox 'extra' must be an object, got {extra!r}")
        # Anything that is not a person (masks and any tag we do not know) is
        # a region to ignore: treating it as background would teach the model
        # that people in crowds are negatives.
        is_person = tag == "person"
        categories.append(PEDESTRIAN if is_person else IGNORE_REGION)
        # CrowdDet (load_gt_boxes) ignores any non-zero extra.ignore.
        flag = extra.get("ignore", 0)
        if flag is not None and (isinstance(flag, bool) or not isinstance(flag, int | float) or not math.isfinite(flag)):
            raise PedcrowdError(f"{where}: a gtbox 'extra.ignore' must be a number, got {flag!r}")
        ignore.append(not is_person or (flag or 0) != 0)
    box_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    vis_arr = np.asarray(vis, dtype=np.float64).reshape(-1, 4)
    return _record(data, index, first_ann_id, where, box_arr, vis_arr, categories, ignore)


def _record(data: dict, index: int, first_ann_id: int, where: str, box_arr, vis_arr, categories, ignore) -> ImageRecord:
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
        width=_size(data, "width", where),
        height=_size(data, "height", where),
    )


def _size(data: dict, key: str, where: str) -> int | None:
    """An optional image size field (CrowdHuman's own files have none; CrowdDet reads it when present)."""
    return validate.image_size(data, key, where, f"image {data.get('ID')!r}")


def json_lines(path: Path, what: str) -> Iterator[tuple[str, Any]]:
    """``("FILE:LINE", parsed JSON)`` per non-blank line of a JSON-lines file (``.odgt``,
    CrowdDet dumps); PedcrowdError naming the file and line for anything unreadable."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PedcrowdError(f"{path}: cannot read {what} ({exc})") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise PedcrowdError(f"{where}: not a JSON object ({exc.msg})") from exc
        except RecursionError:
            raise PedcrowdError(f"{where}: not a JSON object (nested too deeply)") from None


def odgt_id(record: ImageRecord) -> str:
    """The ``.odgt`` ``ID`` of a record from :func:`read_odgt` (its file name is ``{ID}.jpg``)."""
    return record.file_name[: -len(".jpg")]


def read_odgt(path: str | Path) -> list[ImageRecord]:
    """Parse a CrowdHuman ``.odgt`` file.

    Records get ids 1, 2, ... in file order and annotations ids 1, 2, ...
    across the whole file (CrowdHuman's own ``box_id`` is not unique).
    Blank lines are skipped.

    Args:
        path: the ``.odgt`` file.
    """
    path = regular_file(path, "CrowdHuman .odgt file")
    seen: set[str] = set()
    records: list[ImageRecord] = []
    next_ann_id = 1
    for where, data in json_lines(path, "CrowdHuman annotations"):
        record = _parse_line(data, len(records) + 1, next_ann_id, where)
        if record.file_name in seen:  # listed twice, its boxes would count twice
            raise PedcrowdError(f"{where}: image {data['ID']!r} is listed twice")
        seen.add(record.file_name)
        validate.finite_rows(record.boxes, where, f"image {data['ID']!r}", "fbox")
        validate.box_sizes(record.boxes, where, f"image {data['ID']!r}", "fbox")
        validate.box_sizes(record.vis_boxes, where, f"image {data['ID']!r}", "vbox")
        next_ann_id += len(record)
        records.append(record)
    if not records:
        raise PedcrowdError(f"{path}: the CrowdHuman file lists no images")
    return records


def read_crowddet_detections(
    path: str | Path, records: list[ImageRecord]
) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, tuple[int, int]]]:
    """Read CrowdDet's detection dump: one JSON object per line, one line per image.

    Each line is ``{"ID", "height", "width", "dtboxes": [{"box": [x, y, w, h],
    "score", "tag"}, ...], "gtboxes": [...]}`` (``tools/test.py``); the
    ``gtboxes`` and the ``tag`` are not used (CrowdDet's AP/MR code reads neither).

    Args:
        path: the ``.json``/``.odgt`` lines file.
        records: the GT images from :func:`read_odgt` (matched by ``ID``).

    Returns:
        (record id -> (boxes [D, 4] float64 xywh, scores [D] float64) in file
        order; an empty ``dtboxes`` list gives zero rows), record id -> (width, height)
        for lines that give both).

    Raises:
        PedcrowdError: unreadable file, bad line, unknown or repeated ``ID``,
            a box that is not 4 numbers, a NaN score or a negative size.
    """
    path = regular_file(path, "detection file")
    by_id = {odgt_id(r): r.id for r in records}
    dets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sizes: dict[int, tuple[int, int]] = {}
    for where, data in json_lines(path, "detections"):
        if not isinstance(data, dict) or "ID" not in data or "dtboxes" not in data:
            raise PedcrowdError(f"{where}: expected an object with 'ID' and 'dtboxes' fields")
        image = by_id.get(str(data["ID"]))
        if image is None:
            raise PedcrowdError(f"{where}: detections for image {data['ID']!r}, which the ground truth does not have")
        if image in dets:
            raise PedcrowdError(f"{where}: a second detection record for image {data['ID']!r}")
        width, height = _size(data, "width", where), _size(data, "height", where)
        if width is not None and height is not None:
            sizes[image] = (width, height)
        rows = data["dtboxes"]
        if not isinstance(rows, list):
            raise PedcrowdError(f"{where}: 'dtboxes' must be a list")
        if not rows:  # an image without detections (CrowdDet writes such lines)
            dets[image] = (np.zeros((0, 4)), np.zeros(0))
            continue
        try:
            boxes = np.array([d["box"] for d in rows], dtype=np.float64).reshape(len(rows), -1)
            scores = np.array([d["score"] for d in rows], dtype=np.float64).reshape(len(rows))
            if boxes.shape != (len(rows), 4) or any(np.ndim(d["box"]) != 1 for d in rows):
                raise ValueError("not [x, y, w, h]")
        except (KeyError, TypeError, ValueError):
            raise PedcrowdError(f"{where}: every dtbox needs 'box' [x, y, w, h] and a numeric 'score'") from None
        if not np.isfinite(scores).all() or not np.isfinite(boxes).all():
            raise PedcrowdError(f"{where}: NaN or infinite score or coordinate")
        if (boxes[:, 2:] < 0).any():
            raise PedcrowdError(f"{where}: negative box size")
        dets[image] = (boxes, scores)
    return dets, sizes
