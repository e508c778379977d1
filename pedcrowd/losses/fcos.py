"""FCOS's own loss (Tian et al., "FCOS: Fully Convolutional One-Stage Object
Detection", ICCV 2019), as torchvision computes it, with ignore regions.

The loss of ``model.arch: fcos`` with ``model.assigner: fcos`` (the detector is
:mod:`pedcrowd.model.fcos`; DW, the other assigner, is :mod:`pedcrowd.losses.dw`).
With no ignore boxes the losses equal torchvision's.

Ignore regions (one rule for both assigners): a location that is not a
positive of any GT and whose *point* lies inside an ignore box is neither
positive nor negative (it takes no classification loss).

Shapes: B images, N locations of an image (every level, finest first), M GT
boxes of an image, P positives of the batch. A location's anchor is a square of
one stride centred on its point; boxes are ``xyxy`` in the network's input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss


def points_in_boxes(points: Tensor, boxes: Tensor | None) -> Tensor:
    """[N, 2] points x [M, 4] xyxy boxes -> [N, M] bool: strictly inside (l, t, r, b > 0)."""
    if boxes is None or boxes.numel() == 0:
        return torch.zeros(points.shape[0], 0, dtype=torch.bool, device=points.device)
    boxes = boxes.reshape(-1, 4).to(points)
    lt = points[:, None, :] - boxes[None, :, :2]
    rb = boxes[None, :, 2:] - points[:, None, :]
    return torch.cat([lt, rb], dim=2).min(dim=2).values > 0


def ignored_points(anchors: Tensor, ignore_boxes: Tensor | None) -> Tensor:
    """[N, 4] anchors -> [N] bool: the anchor's point lies inside an ignore box."""
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    return points_in_boxes(centres, ignore_boxes).any(dim=1)


def fcos_match(
    anchors: Tensor, gt_boxes: Tensor, num_anchors_per_level: list[int], radius: float
) -> Tensor:
    """FCOS's assignment of one image: [N, 4] anchors, [M, 4] GTs -> [N] GT index or -1.

    A location matches a GT when its point is inside the box, within ``radius``
    anchor sizes of the box centre (both axes), and ``max(l, t, r, b)`` lies in
    the level's range ``(4 s, 8 s)`` (no lower bound on the finest level, no
    upper bound on the coarsest); of several matches the smallest-area GT wins.
    """
    n = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((n,), -1, dtype=torch.int64, device=anchors.device)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [N, 2]
    size = anchors[:, 2] - anchors[:, 0]  # [N]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
    near = (centres[:, None] - gt_centres[None]).abs().amax(dim=2) < radius * size[:, None]
    ltrb = torch.cat([centres[:, None] - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centres[:, None]], 2)
    low, high = size * 4, size * 8
    low[: num_anchors_per_level[0]] = 0
    high[n - num_anchors_per_level[-1]:] = math.inf
    reach = ltrb.amax(dim=2)  # [N, M]
    ok = near & (ltrb.amin(dim=2) > 0) & (reach > low[:, None]) & (reach < high[:, None])
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # [M]
    cost = torch.where(ok, area[None].expand_as(ok), torch.full_like(reach, math.inf))
    best, idx = cost.min(dim=1)
    return torch.where(torch.isfinite(best), idx, torch.full_like(idx, -1))


def fcos_loss(
    head_outputs: dict[str, Tensor],
    anchors: list[Tensor],
    targets: list[dict[str, Tensor]],
    matched: list[Tensor],
    box_coder,
) -> dict[str, Tensor]:
    """torchvision's FCOS loss, with ignored background locations left out of the focal loss.

    Args:
        head_outputs: ``cls_logits`` [B, N, 1], ``bbox_regression`` [B, N, 4],
            ``bbox_ctrness`` [B, N, 1].
        anchors: per image [N, 4]; matched: per image [N] GT index or -1.

    Returns:
        ``loss_cls`` (focal, alpha 0.25, gamma 2), ``loss_giou``, ``loss_ctrness``,
        each summed and divided by max(1, positives in the batch).
    """
    cls_logits = head_outputs["cls_logits"][..., 0]  # [B, N]
    regression = head_outputs["bbox_regression"]  # [B, N, 4]
    ctrness = head_outputs["bbox_ctrness"][..., 0]  # [B, N]
    fg = torch.stack(matched) >= 0  # [B, N]
    keep = torch.stack(
        [m.ge(0) | ~ignored_points(a, t.get("ignore_boxes"))
         for m, a, t in zip(matched, anchors, targets, strict=True)]
    )  # [B, N]
    gt = torch.stack([
        t["boxes"][m.clamp(min=0)] if t["boxes"].numel() else a.new_zeros(a.shape)
        for m, a, t in zip(matched, anchors, targets, strict=True)
    ])  # [B, N, 4]
    anchors_b = torch.stack(anchors)
    num_fg = max(1, int(fg.sum()))
    loss_cls = sigmoid_focal_loss(cls_logits[keep], fg[keep].to(cls_logits.dtype), reduction="sum")
    pred = box_coder.decode(regression[fg], anchors_b[fg])
    loss_giou = generalized_box_iou_loss(pred, gt[fg], reduction="sum")
    enc = box_coder.encode(anchors_b[fg], gt[fg])  # [P, 4] l, t, r, b in anchor sizes
    lr, tb = enc[:, [0, 2]], enc[:, [1, 3]]
    target_ctr = torch.sqrt(
        (lr.amin(1) / lr.amax(1)) * (tb.amin(1) / tb.amax(1))
    )
    loss_ctr = F.binary_cross_entropy_with_logits(ctrness[fg], target_ctr, reduction="sum")
    return {
        "loss_cls": loss_cls / num_fg,
        "loss_giou": loss_giou / num_fg,
        "loss_ctrness": loss_ctr / num_fg,
    }
