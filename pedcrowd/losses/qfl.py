"""Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection (Li et al., NeurIPS 2020) -- the Quality Focal Loss part.

``QFL(sigma) = -|y - sigma|^beta ((1 - y) log(1 - sigma) + y log(sigma))``,
beta 2: binary cross-entropy of the sigmoid score against a soft target y,
scaled by the distance to the target. y is the IoU of the sample's decoded
(regressed) box with its matched GT for a positive, 0 for a negative; it is
computed without gradient (official: the IoU target is detached). A
background-only image is all negatives: QFL is then
``sigma^beta * BCE(x, 0)`` on every row.

On pedcrowd's 2-class softmax RoI head the logit is ``z_ped - z_bg``, whose
sigmoid is the softmax pedestrian probability: training with QFL and scoring
with the softmax at inference use the same score.

Shapes: N samples; ``logits``, ``quality`` [N]; boxes [N, 4] xyxy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pedcrowd.losses.nms_loss import paired_iou


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
