"""Repulsion Loss: Detecting Pedestrians in a Crowd.

Wang et al., CVPR 2018. Besides the usual attraction to its own GT (the box
head's SmoothL1, not repeated here), each positive prediction is repelled from

* RepGT: the GT it overlaps most other than its own, measured on its proposal
  (``Smooth_ln(IoG(B^P, G_Rep^P))``, averaged over all positives), and
* RepBox: the predictions of the other persons
  (``sum Smooth_ln(IoU(B_i, B_j)) / #overlapping pairs``, pairs with different targets).

Rules from ``docs/techniques.md`` section "Repulsion Loss", avoiding the
listed defects of public ports: ``-ln`` is a torch op (gradient in both branches), RepBox goes
through Smooth_ln, RepGT is normalised by the positives, and repulsion targets
are chosen among all GT boxes of the image.

Shapes: N = positive predictions of the image, G = its GT boxes. Boxes are
``xyxy`` absolute pixels, continuous IoU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pedcrowd.box_torch import box_area, box_iou, paired_intersection
from pedcrowd.losses import positives

if TYPE_CHECKING:
    from pedcrowd.losses.config import RepLossConfig
    from pedcrowd.losses.samples import StageSamples

LOG_X_MAX = 1.0 - 1e-6  # -ln(1 - x) is evaluated at x <= 1 - 1e-6 (finite when IoG -> 1)
REPBOX_EPS = 1e-6  # RepBox denominator: #overlapping pairs + eps (0 / eps = 0 without pairs)


def smooth_ln(x: Tensor, sigma: float) -> Tensor:
    """``-ln(1 - x)`` for x <= sigma, ``(x - sigma) / (1 - sigma) - ln(1 - sigma)`` above.

    Continuous with a continuous first derivative at sigma. For sigma >= 1 only the
    log branch exists; its input is clamped to ``1 - 1e-6`` (value <= ~13.8, zero
    gradient in that last sliver) so that IoG = 1 stays finite.

    Args:
        x: [...] overlaps in [0, 1].
        sigma: the branch point in [0, 1].
    """
    log_branch = -torch.log1p(-x.clamp(max=LOG_X_MAX))
    if sigma >= 1.0:
        return log_branch
    # Both branches are finite everywhere, so torch.where's backward never mixes in a NaN.
    linear_branch = (x - sigma) / (1.0 - sigma) - math.log1p(-sigma)  # a constant offset
    return torch.where(x <= sigma, log_branch, linear_branch)


def intersection_over_gt(boxes: Tensor, gts: Tensor) -> Tensor:
    """[P, 4], [P, 4] xyxy -> [P] ``area(box ∩ gt) / area(gt)`` per row pair."""
    return paired_intersection(boxes, gts) / box_area(gts).clamp(min=torch.finfo(gts.dtype).tiny)


def repulsion_loss(
    pred_boxes: Tensor,
    proposals: Tensor,
    gt_index: Tensor,
    gt_boxes: Tensor,
    *,
    sigma_gt: float = 1.0,
    sigma_box: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """RepGT and RepBox of one image, unweighted (the paper's alpha, beta apply outside).

    Args:
        pred_boxes: [N, 4] xyxy boxes regressed from the positive proposals (with gradient).
        proposals: [N, 4] xyxy proposals they were regressed from (choose the RepGT target).
        gt_index: [N] int64 index into ``gt_boxes`` of each proposal's attracting GT.
        gt_boxes: [G, 4] xyxy all GT boxes of the image.
        sigma_gt: Smooth_ln sigma of RepGT (paper 1.0).
        sigma_box: Smooth_ln sigma of RepBox (paper 0.0).

    Returns:
        ``(rep_gt, rep_box)`` scalars; zero (still connected to the graph) with no
        positives, and a positive without any other overlapping GT adds 0 to
        RepGT while still counting in its denominator.
    """
    num_pred, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    rep_gt, rep_box = batched_repulsion_loss(
        pred_boxes,
        proposals,
        gt_index,
        gt_boxes,
        pred_boxes.new_zeros(num_pred, dtype=torch.long),
        pred_boxes.new_zeros(num_gt, dtype=torch.long),
        1,
        sigma_gt=sigma_gt,
        sigma_box=sigma_box,
    )
    return rep_gt[0], rep_box[0]


def batched_repulsion_loss(
    pred_boxes: Tensor,
    proposals: Tensor,
    gt_index: Tensor,
    gt_boxes: Tensor,
    image_index: Tensor,
    gt_image_index: Tensor,
    num_images: int,
    *,
    sigma_gt: float = 1.0,
    sigma_box: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """:func:`repulsion_loss` of several images at once (same values, fewer tensor ops).

    Args:
        pred_boxes, proposals: [N, 4] the positives of all images, concatenated.
        gt_index: [N] index into the concatenated ``gt_boxes`` [G, 4].
        image_index: [N] image of each positive, in [0, num_images).
        gt_image_index: [G] image of each GT box.
        num_images: I.
        sigma_gt, sigma_box: as :func:`repulsion_loss`.

    Returns:
        ``(rep_gt, rep_box)``: [I] each, the per-image terms of :func:`repulsion_loss`.
    """
    if pred_boxes.dtype in (torch.float16, torch.bfloat16):  # IoUs and logs need float32 (AMP)
        pred_boxes, proposals = pred_boxes.float(), proposals.float()
    dtype = pred_boxes.dtype
    zeros = pred_boxes.new_zeros(num_images) + pred_boxes.sum() * 0.0  # [I], in the graph
    gt_boxes = gt_boxes.to(dtype)
    positives = torch.bincount(image_index, minlength=num_images).to(dtype)  # [I] |P+|

    # RepGT: the target is the other GT of the same image with the highest IoU with
    # the *proposal*; a proposal overlapping no other GT has none (its term is 0).
    rep_gt = zeros
    if gt_boxes.shape[0] > 0 and pred_boxes.shape[0] > 0:
        with torch.no_grad():
            proposal_iou = box_iou(proposals.to(dtype), gt_boxes)  # [N,G]
            proposal_iou[image_index[:, None] != gt_image_index[None, :]] = -1.0
            proposal_iou[torch.arange(pred_boxes.shape[0], device=gt_index.device), gt_index] = -1.0  # not its own GT
            best_iou, target = proposal_iou.max(1)  # [N]
            has_target = best_iou > 0  # [N]
        iog = intersection_over_gt(pred_boxes[has_target], gt_boxes[target[has_target]])  # [T]
        rep_gt = zeros.index_add(0, image_index[has_target], smooth_ln(iog, sigma_gt))
        rep_gt = rep_gt / positives.clamp(min=1)

    # RepBox: ordered pairs of positives of one image attracted by different GTs.
    pair = (gt_index[:, None] != gt_index[None, :]) & (
        image_index[:, None] == image_index[None, :]
    )  # [N,N], False on the diagonal
    pair_iou = box_iou(pred_boxes, pred_boxes)[pair]  # [pairs]
    pair_image = image_index[:, None].expand_as(pair)[pair]  # [pairs]
    overlapping = zeros.detach().index_add(0, pair_image, (pair_iou.detach() > 0).to(dtype))  # [I]
    rep_box = zeros.index_add(0, pair_image, smooth_ln(pair_iou, sigma_box))
    return rep_gt, rep_box / (overlapping + REPBOX_EPS)


def rep_terms(s: StageSamples, options: RepLossConfig, state: dict) -> dict[str, Tensor]:
    """The registered term ``rep``: Repulsion Loss of the RoI head's sampled positives.

    Each image's RepGT is its mean over its positives and RepBox its sum over
    overlapping pairs divided by their count (the paper); the batch value is the
    mean over the images. With ``normalize: box_loss`` (default) both are then
    multiplied by (sampled positives / sampled RoIs) of the batch: torchvision's box
    loss, the attraction term, is normalised by every sampled RoI rather than by
    the positives, and this keeps alpha and beta weighing RepGT and RepBox against
    it as in the paper.

    Returns:
        ``{"rep_gt": ..., "rep_box": ...}`` unweighted.
    """
    rows = s.positive & s.sampled  # [N]
    p = positives.positives_of(s, rows)
    rep_gts, rep_boxes = [], []
    for g in positives.image_groups(p):  # looked up per call: tests bound the group size
        rep_gt, rep_box = batched_repulsion_loss(
            g.pred_boxes, g.proposals, g.gt_index, g.gt_boxes, g.image_index,
            g.gt_image_index, g.num_images, sigma_gt=options.sigma_gt, sigma_box=options.sigma_box,
        )  # fmt: skip
        rep_gts.append(rep_gt)
        rep_boxes.append(rep_box)
    rep_gt, rep_box = torch.cat(rep_gts).mean(), torch.cat(rep_boxes).mean()
    if options.normalize == "box_loss":
        scale = rows.sum() / s.sampled.sum().clamp(min=1)
        rep_gt, rep_box = rep_gt * scale, rep_box * scale
    return {"rep_gt": rep_gt, "rep_box": rep_box}
