"""Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection (Li et al., NeurIPS 2020) -- the Quality Focal Loss part.

``QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma))``,
beta 2: binary cross-entropy of the sigmoid score against a soft target y,
scaled by the distance to the target. y is the IoU of the sample's decoded
(regressed) box with its matched GT for a positive, 0 for a negative; it is
computed without gradient (official: the IoU target is detached). The IoU is
mmdetection's (``bbox_overlaps`` on the decoded boxes, continuous coordinates);
GFocal's own code (implus/GFocal) measures it with the legacy ``+1``-pixel
widths on stride-scaled boxes, which lowers small boxes' IoU: a documented
departure, kept because pedcrowd's boxes are continuous everywhere else. A
background-only image is all negatives: QFL is then
``sigma^beta * BCE(x, 0)`` on every row.

On pedcrowd's 2-class softmax RoI head the logit is ``z_ped - z_bg``, whose
sigmoid is the softmax pedestrian probability: training with QFL and scoring
with the softmax at inference use the same score.

Shapes: N samples; ``logits``, ``quality`` [N]; boxes [N, 4] xyxy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pedcrowd.box_torch import paired_iou
from pedcrowd.losses.focal import normaliser
from pedcrowd.losses.standard import sampled_rows, zero_loss

if TYPE_CHECKING:
    from pedcrowd.losses.config import QflConfig
    from pedcrowd.losses.samples import StageSamples


def quality_focal_loss(logits: Tensor, quality: Tensor, *, beta: float = 2.0) -> Tensor:
    """Per-sample QFL. [N], [N] -> [N].

    Args:
        logits: [N] binary logits (with gradient).
        quality: [N] soft targets in [0, 1] (no gradient).
        beta: exponent of the modulating factor ``|y - sigma|``.
    """
    quality = quality.detach().to(logits.dtype)
    modulator = (quality - torch.sigmoid(logits)).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, quality, reduction="none") * modulator


def quality_targets(pred_boxes: Tensor, matched_gt_boxes: Tensor, positive: Tensor) -> Tensor:
    """The QFL target: IoU of the decoded box with its GT on positives, 0 elsewhere. -> [N].

    Args:
        pred_boxes: [N, 4] decoded boxes (detached here).
        matched_gt_boxes: [N, 4] each row's matched GT box (any finite box on non-positives).
        positive: [N] bool.
    """
    iou = paired_iou(pred_boxes.detach(), matched_gt_boxes.to(pred_boxes.dtype))
    return torch.where(positive, iou.clamp(0.0, 1.0), torch.zeros_like(iou))


# ----------------------------------------------------------------------------- the registered term


def matched_gt_boxes(s: StageSamples, rows: Tensor) -> Tensor:
    """[S, 4] the matched GT box of each of ``rows`` (a zero box where there is none)."""
    if s.gt_boxes.shape[0] == 0:
        return s.boxes.new_zeros((rows.numel(), 4)).to(s.deltas.dtype)
    return s.gt_boxes[s.matched_gt[rows].clamp(min=0)].to(s.deltas.dtype)


def qfl_rows(s: StageSamples, rows: Tensor, options: QflConfig) -> Tensor:
    """Each of ``rows``' unweighted QFL against its IoU target. [S] -> [S]."""
    positive = s.positive[rows]
    quality = quality_targets(s.pred_boxes[rows], matched_gt_boxes(s, rows), positive)
    return quality_focal_loss(s.ped_logit()[rows], quality, beta=options.beta)


def qfl_term(s: StageSamples, options: QflConfig, state: dict) -> Tensor:
    """Classification term ``qfl``: QFL of ``s.ped_logit()`` against the IoU of each
    sampled positive's decoded box with its GT (0 for negatives), over the sampled rows."""
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s)
    loss = qfl_rows(s, rows, options)  # [S]
    if s.weights is not None:
        loss = loss * s.weights[rows]
    return loss.sum() / normaliser(s, rows, options.normalize)
