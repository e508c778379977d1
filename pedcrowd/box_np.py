"""Boxes on numpy arrays: ``xywh`` <-> ``xyxy`` conversions and IoU at the file-format edges.

The torch twin is :mod:`pedcrowd.box_torch`; the evaluator keeps the official
arithmetic (its own overlaps) in :mod:`pedcrowd.eval.matching`.
"""

from __future__ import annotations

import numpy as np


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] ``x, y, w, h`` -> [K, 4] ``x1, y1, x2, y2``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] ``x1, y1, x2, y2`` -> [K, 4] ``x, y, w, h``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair of ``xyxy`` boxes, no +1 pixel (as ``torchvision.ops.box_iou``);
    0 where the union is empty.

    Args:
        a: [K, 4] ``xyxy``; b: [L, 4] ``xyxy``.

    Returns:
        [K, L] float64.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [K, L, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [K, L, 2]
    inter = np.clip(rb - lt, 0, None).prod(-1)  # [K, L]
    union = (a[:, 2:] - a[:, :2]).prod(-1)[:, None] + (b[:, 2:] - b[:, :2]).prod(-1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
