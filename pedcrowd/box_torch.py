"""Box overlaps on torch tensors: the one implementation every torch module uses.

Continuous convention (no +1 pixel), ``xyxy`` boxes. ``box_iou`` equals
``torchvision.ops.box_iou`` (a test holds it to it) except where the union is
empty, where torchvision divides by zero and this gives 0: degenerate boxes
occur in training (clipped proposals), and a NaN there would poison the loss.
(Numpy code at the file-format edges has its twin in :mod:`pedcrowd.box_np`; the
evaluator its own official arithmetic in :mod:`pedcrowd.eval.matching`.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """[N, 4] -> [N]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[A, 4], [B, 4] -> [A, B] intersection areas."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [A,B,2]
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [A,B,2]
    wh = (rb - lt).clamp(min=0)  # [A,B,2]
    return wh[..., 0] * wh[..., 1]  # [A,B]


def paired_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[P, 4], [P, 4] -> [P] intersection of each row pair."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])  # [P,2]
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])  # [P,2]
    wh = (rb - lt).clamp(min=0)  # [P,2]
    return wh[:, 0] * wh[:, 1]  # [P]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    return num / den.clamp(min=torch.finfo(den.dtype).tiny)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[A, 4], [B, 4] -> [A, B] IoU (0 where the union is empty)."""
    inter = box_intersection(boxes1, boxes2)  # [A,B]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter  # [A,B]
    return _safe_div(inter, union)


def paired_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[P, 4], [P, 4] -> [P] IoU of each row pair (the arithmetic of :func:`box_iou`)."""
    inter = paired_intersection(boxes1, boxes2)  # [P]
    return _safe_div(inter, box_area(boxes1) + box_area(boxes2) - inter)


def box_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """[N, 4], [M, 4] -> [N, M] intersection over each box's own area (0 for empty boxes)."""
    return box_intersection(boxes, regions) / box_area(boxes).clamp(min=1e-12)[:, None]
