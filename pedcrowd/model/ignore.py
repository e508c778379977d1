"""The ignore-region rule shared by the RPN and the second stage.

CityPersons ignore regions (groups, riders, sitting and other persons),
CrowdHuman ``ignore`` boxes and Caltech ``people``/``person?`` boxes are
neither pedestrians nor background. An anchor or proposal that mostly lies
inside one of them is therefore never sampled as a negative: torchvision's
matcher only sees the real GT boxes and would call it background, teaching
the detector to suppress people in crowds. Positives (matched to a real GT)
stay positive; ignore boxes never produce positives since they are not GT.

"Mostly inside" is intersection over the anchor's own area (IoA) >= 0.5, the
rule of the official CityPersons evaluator for matching detections to ignore
regions.
"""

from __future__ import annotations

import torch


def intersection_over_area(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection of each box with each region, divided by the box's own area.

    Args:
        boxes: [N, 4] xyxy.
        regions: [M, 4] xyxy.

    Returns:
        [N, M] IoA in [0, 1] (0 for empty boxes).
    """
    top_left = torch.maximum(boxes[:, None, :2], regions[None, :, :2])  # [N,M,2]
    bottom_right = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])  # [N,M,2]
    wh = (bottom_right - top_left).clamp(min=0)  # [N,M,2]
    inter = wh[..., 0] * wh[..., 1]  # [N,M]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1e-12)  # [N]
    return inter / area[:, None]


def ignored_mask(
    boxes: torch.Tensor, ignore_boxes: torch.Tensor | None, thresh: float = 0.5
) -> torch.Tensor:
    """Which boxes lie in an ignore region (IoA >= ``thresh`` with any of them).

    Args:
        boxes: [N, 4] xyxy anchors or proposals.
        ignore_boxes: [M, 4] xyxy ignore regions, or None.

    Returns:
        [N] bool.
    """
    if ignore_boxes is None or ignore_boxes.numel() == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    ioa = intersection_over_area(boxes, ignore_boxes.to(boxes))  # [N,M]
    return (ioa >= thresh).any(dim=1)


def exclude_ignored_negatives(
    labels: torch.Tensor,
    boxes: torch.Tensor,
    ignore_boxes: torch.Tensor | None,
    thresh: float = 0.5,
) -> torch.Tensor:
    """Turn negatives (label 0) inside ignore regions into "not sampled" (label -1).

    torchvision's samplers draw positives from ``labels >= 1`` and negatives from
    ``labels == 0``; -1 is skipped by both.

    Args:
        labels: [N] RPN (float) or second-stage (int64) labels.
        boxes: [N, 4] xyxy anchors or proposals the labels belong to.
        ignore_boxes: [M, 4] xyxy, or None.

    Returns:
        [N] labels, same dtype, a new tensor.
    """
    drop = ignored_mask(boxes, ignore_boxes, thresh) & (labels == 0)
    return torch.where(drop, torch.full_like(labels, -1), labels)
