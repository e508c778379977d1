"""The ignore-region rule shared by the RPN and the second stage.

CityPersons ignore regions (groups, riders, sitting and other persons),
CrowdHuman ``ignore`` boxes and Caltech ``people``/``person?`` boxes are
neither pedestrians nor background. An anchor or proposal that mostly lies
inside one of them is therefore never sampled as a negative: torchvision's
matcher only sees the real GT boxes and would call it background, teaching
the detector to suppress people in crowds. Ignore boxes never produce
positives since they are not GT. A *positive* that mostly lies inside an ignore
region (a person in a crowd box: 4.8 % of the CityPersons training GT lie at
least half inside one) is dropped too by default (``model.ignore_positives:
drop``), as the official NMS-Loss assigner (mmdetection's ``MaxIoUAssigner``
with ``ignore_iof_thr`` 0.5) does; ``keep`` leaves it positive. mmdetection
drops at IoA > 0.5, pedcrowd at >= 0.5, the evaluator's rule.

"Mostly inside" is intersection over the anchor's own area (IoA) >= 0.5, the
rule of the official CityPersons evaluator for matching detections to ignore
regions.
"""

from __future__ import annotations

import torch

from pedcrowd.box_torch import box_ioa


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
    ioa = box_ioa(boxes, ignore_boxes.to(boxes))  # [N,M]
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


def exclude_ignored(
    labels: torch.Tensor,
    boxes: torch.Tensor,
    ignore_boxes: torch.Tensor | None,
    thresh: float = 0.5,
    drop_positives: bool = True,
) -> torch.Tensor:
    """Turn samples inside ignore regions into "not sampled" (label -1).

    Negatives always; positives too when ``drop_positives``.

    Args:
        labels: [N] RPN (float) or second-stage (int64) labels: >= 1 positive, 0 negative.
        boxes: [N, 4] xyxy anchors or proposals the labels belong to.
        ignore_boxes: [M, 4] xyxy, or None.

    Returns:
        [N] labels, same dtype, a new tensor.
    """
    if not drop_positives:
        return exclude_ignored_negatives(labels, boxes, ignore_boxes, thresh)
    drop = ignored_mask(boxes, ignore_boxes, thresh) & (labels >= 0)
    return torch.where(drop, torch.full_like(labels, -1), labels)
