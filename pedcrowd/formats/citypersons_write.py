"""Writers for the CityPersons annotation files: ``anno_<split>.mat`` and ``val_gt.json``.

They produce exactly the official structures, so the official tools and
pedcrowd's own readers (:mod:`pedcrowd.formats.citypersons`) read them like
the released files:

* ``.mat``: variable ``anno_<split>_aligned``, a 1 x N cell array of structs
  with ``cityname``, ``im_name`` and ``bbs``, a [K, 10] uint16 matrix of rows
  ``[label, x, y, w, h, instance_id, xv, yv, wv, hv]``.
* JSON: ``categories`` (the official table), ``images`` (``id``, ``im_name``,
  ``height``, ``width``) and ``annotations`` with ``category_id`` 1 for every
  object and the label mapping of the official file (docs/evaluation.md
  section "CityPersons: ground truth and detections"): pedestrians ``ignore`` 0; ignore regions, riders, sitting and
  other persons ``ignore`` 1; groups ``ignore`` 1, ``iscrowd`` 1,
  ``vis_bbox`` [0, 0, 0, 0] and ``vis_ratio`` 0.

Records carry ``xywh`` boxes (the file convention); coordinates are written as
integers as in the released files. Annotation ids are numbered 1..N over the
file in image and row order, as the official JSON does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.records import (
    GROUP,
    IGNORE_REGION,
    OTHER,
    PEDESTRIAN,
    RIDER,
    SITTING,
    UNSURE,
    ImageRecord,
)

# category -> .mat class label (annotations/README.txt); Caltech's 'person?' has no
# CityPersons label and is written as 'other' (ignored either way).
MAT_LABEL = {IGNORE_REGION: 0, PEDESTRIAN: 1, RIDER: 2, SITTING: 3, OTHER: 4, GROUP: 5, UNSURE: 4}

_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by pedcrowd".ljust(116)

# The official val_gt.json category table, in its order.
JSON_CATEGORIES = [
    {"id": 1, "name": "pedestrian"},
    {"id": 2, "name": "rider"},
    {"id": 3, "name": "sitting person"},
    {"id": 4, "name": "other person"},
    {"id": 5, "name": "people group"},
    {"id": 0, "name": "ignore region"},
]


def _im_name(rec: ImageRecord) -> tuple[str, str]:
    """(cityname, im_name) from ``CITY/CITY_..._leftImg8bit.png``."""
    name = rec.file_name.replace("\\", "/").rsplit("/", 1)[-1]
    city = rec.file_name.split("/", 1)[0] if "/" in rec.file_name else name.split("_", 1)[0]
    return city, name


def _labels(rec: ImageRecord, where: str) -> np.ndarray:
    try:
        return np.array([MAT_LABEL[str(c)] for c in rec.categories], dtype=np.int64)
    except KeyError as e:
        raise PedcrowdError(f"{where}: image {rec.file_name}: unknown category {e}") from None


def _int_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.nan_to_num(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), nan=0.0)
    return np.rint(b).astype(np.int64)


def write_citypersons_mat(path: str | Path, records: list[ImageRecord], split: str) -> None:
    """Write ``records`` as an official ``anno_<split>.mat``.

    Instance ids follow the released files: Cityscapes ids ``24000 + n`` for
    persons and ``25000 + n`` for riders (n counts within the image), ``24``
    for groups and ``0`` for ignore regions.

    Args:
        path: the ``.mat`` file to write.
        records: one per image, in file order; boxes ``xywh``.
        split: ``train`` or ``val`` (names the variable ``anno_<split>_aligned``).
    """
    import scipy.io

    path = Path(path)
    cells = np.empty((1, len(records)), dtype=object)
    for i, rec in enumerate(records):
        labels = _labels(rec, str(path))
        boxes = _int_boxes(rec.boxes)
        vis = _int_boxes(rec.vis_boxes)
        vis[labels == 0] = boxes[
            labels == 0
        ]  # the released files repeat the box for ignore regions
        vis[labels == 5] = 0
        inst = np.zeros(len(labels), np.int64)
        n_person = n_rider = 0
        for j, lbl in enumerate(labels):
            if lbl == 2:
                inst[j], n_rider = 25000 + n_rider, n_rider + 1
            elif lbl in (1, 3, 4):
                inst[j], n_person = 24000 + n_person, n_person + 1
            elif lbl == 5:
                inst[j] = 24
        bbs = np.concatenate([labels[:, None], boxes, inst[:, None], vis], axis=1)
        if bbs.size and (bbs.min() < 0 or bbs.max() > 65535):
            raise PedcrowdError(f"{path}: image {rec.file_name}: a value does not fit uint16")
        city, name = _im_name(rec)
        struct = np.empty(
            (1, 1), dtype=[("cityname", object), ("im_name", object), ("bbs", object)]
        )
        struct[0, 0] = (np.array([city]), np.array([name]), bbs.reshape(-1, 10).astype(np.uint16))
        cells[0, i] = struct
    buf = io.BytesIO()
    scipy.io.savemat(buf, {f"anno_{split}_aligned": cells}, do_compression=True)
    data = bytearray(buf.getvalue())
    # The 116-byte text header carries a creation time; a fixed one makes the file a
    # pure function of its content (synthetic sets are checked by hashing).
    data[:116] = _MAT_HEADER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def _ratio(value: float) -> float | int:
    # The official file stores 12 significant digits and writes 0 and 1 as integers.
    r = float(f"{value:.12g}")
    return int(r) if r in (0.0, 1.0) else r


def write_citypersons_json(path: str | Path, records: list[ImageRecord]) -> None:
    """Write ``records`` as the official evaluation JSON (``val_gt.json``).

    Image ids are the 1-based positions in ``records``; ``height`` is the
    box height and ``vis_ratio`` = area(vis_bbox) / area(bbox), as in the
    official file.

    Args:
        path: the JSON file to write.
        records: one per image, in file order; ``width``/``height`` must be set.
    """
    path = Path(path)
    images, anns = [], []
    next_id = 1
    for i, rec in enumerate(records):
        if rec.width is None or rec.height is None:
            raise PedcrowdError(f"{path}: image {rec.file_name} has no width/height")
        _, name = _im_name(rec)
        images.append(
            {"id": i + 1, "im_name": name, "height": int(rec.height), "width": int(rec.width)}
        )
        labels = _labels(rec, str(path))
        boxes = _int_boxes(rec.boxes)
        vis = _int_boxes(rec.vis_boxes)
        for j, lbl in enumerate(labels):
            group = lbl == 5
            vb = boxes[j] if lbl == 0 else (np.zeros(4, np.int64) if group else vis[j])
            area = boxes[j, 2] * boxes[j, 3]
            ratio = 0.0 if group or area <= 0 else vb[2] * vb[3] / area
            anns.append(
                {
                    "id": next_id,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": int(group),
                    "ignore": int(lbl != 1),
                    "bbox": [int(v) for v in boxes[j]],
                    "vis_bbox": [int(v) for v in vb],
                    "height": int(boxes[j, 3]),
                    "vis_ratio": _ratio(ratio),
                }
            )
            next_id += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"categories": JSON_CATEGORIES, "images": images, "annotations": anns})
    )
