"""COCO AP (AP, AP50, AP75) through pycocotools, ignore regions as crowd."""

from __future__ import annotations

import contextlib
import io

import numpy as np

from pedcrowd.formats.records import ImageRecord


def coco_ap(gt_records: list[ImageRecord], dets: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict:
    """COCO box AP of one class (all annotations count as that class).

    Ignored objects (the record's ``ignore`` or ``crowd``) become ``iscrowd``
    regions: matching them costs nothing and gains nothing. All images and up
    to 100 detections per image count, as in pycocotools' defaults.

    Args:
        gt_records: the ground truth.
        dets: image id -> (boxes [D, 4] xywh, scores [D]).

    Returns:
        {"AP": float, "AP50": float, "AP75": float} as fractions; -1 where
        pycocotools has no GT to score.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns = [], []
    for rec in gt_records:
        images.append({"id": int(rec.id), "width": rec.width or 0, "height": rec.height or 0})
        for k in range(len(rec)):
            x, y, w, h = (float(v) for v in rec.boxes[k])
            crowd = bool(rec.ignore[k]) or (bool(rec.crowd[k]) if len(rec.crowd) else False)
            anns.append(
                {"id": len(anns) + 1, "image_id": int(rec.id), "category_id": 1, "bbox": [x, y, w, h],
                 "area": w * h, "iscrowd": int(crowd), "ignore": int(crowd)}
            )
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = [
        {"image_id": int(image_id), "category_id": 1, "bbox": [float(v) for v in box], "score": float(s)}
        for image_id, (boxes, scores) in dets.items()
        for box, s in zip(boxes, scores, strict=True)
    ]
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0} if any(not a["iscrowd"] for a in anns) else {"AP": -1.0, "AP50": -1.0, "AP75": -1.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = [int(r.id) for r in gt_records]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def coco_ap_value(gt, dets: dict[int, tuple[np.ndarray, np.ndarray]], matches: dict | None = None) -> float | None:
    """COCO AP (0.5:0.95) of ``gt.records`` for ``pedcrowd compare``'s AP column: None
    without pycocotools (AP is optional there) or without GT to score."""
    try:
        ap = coco_ap(gt.records, dets)
    except ModuleNotFoundError:
        return None
    value = ap.get("AP")
    # pycocotools reports -1 when there is no GT to score.
    return None if value is None or value < 0 else float(value)
