"""Dual Weighting label assignment (DW, Li et al., CVPR 2022) for the FCOS head.

Semantics follow the official ``dw_head.py`` (strongwolf/DW). For one image:

- **candidates** of a GT: the locations whose point lies strictly inside its
  box, on every level (no scale ranges, no centre sampling);
- **centre prior** (fixed Gaussian, the official ``CenterPrior`` with mean 0):
  ``prior = exp(-|(point - centre) / stride|^2 / (2 sigma^2))``, sigma 1.11,
  zero outside the box;
- **positive weights** from ``p = p_cls * p_loc``, ``p_cls = s`` (the joint
  score ``sigmoid(cls) * sigmoid(ctr)``), ``p_loc = exp(-5 L_GIoU)``:
  ``w_pos = e^{5p} p prior / sum_{GT's candidates} e^{3p} p prior``
  (5 over 3 on purpose; detached);
- **negative weights** ``P_neg(IoU) * I_neg(s)``: ``P_neg = 1`` below IoU 0.5
  and ``t(x) = (1 - x^2) / (1 - 0.5^2)`` min-max normalised over the GT's
  candidates above (``(t - min t + eps) / (min(1, max t) - min t + eps)``),
  ``P_neg = 1`` for non-candidates; ``I_neg = s^2`` (not detached, as in the
  official code);
- **losses** ``loss_cls_pos = 0.25 sum w_pos * -log p_cls``, ``loss_loc =
  0.25 sum w_pos * 5 L_GIoU`` (the official ``BCE(p_loc, 1)``), both divided
  by the number of GTs; ``loss_cls_neg = sum P_neg s^2 * -log(1 - s)`` divided
  by ``sum (1 - P_neg)``; both normalisers averaged over DDP processes and
  clamped at 1, as the official ``reduce_mean``.

Departures, documented: a location inside several GTs gets the *smallest*
``P_neg`` of them by default (``neg_overlap: min``: a location that fits one
GT well is not pushed down as a negative of its neighbour); the official code
writes them with one indexed assignment, where duplicates leave one of the
values, in practice the last GT's on the CPU and an unspecified one on a GPU
(``neg_overlap: last`` gives the last GT's). Locations are torchvision's
anchor points (offset 0, not the official 0.5), and the regression is
torchvision's ``relu(conv)`` in strides, without the official per-level
learnable ``Scale``. Background locations whose
point lies inside an ignore box take no negative loss and do not count in its
normaliser (see :mod:`pedcrowd.losses.fcos`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from pedcrowd.losses.fcos import ignored_points

EPS = 1e-12
POS_GAMMA, POS_GAMMA_NORM = 5.0, 3.0  # e^{5p} over e^{3p}
LOC_SCALE = 5.0  # p_loc = exp(-5 L_GIoU)
NEG_IOU = 0.5  # P_neg = 1 below this IoU
NEG_ALPHA = 2  # t(x) = (1 - x^alpha) / (1 - 0.5^alpha)
NEG_BETA = 2  # I_neg = s^beta
POS_LOSS_SCALE = 0.25


def center_prior(points: Tensor, strides: Tensor, gt_boxes: Tensor, sigma: float = 1.11) -> Tensor:
    """Gaussian centre prior of every location for every GT.

    Args:
        points: [N, 2] location points (x, y), input pixels.
        strides: [N] the stride of each location's level.
        gt_boxes: [M, 4] xyxy.

    Returns:
        [N, M] ``exp(-((dx / s)^2 + (dy / s)^2) / (2 sigma^2))``, 0 where the
        point is not strictly inside the box.
    """
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
    d = (points[:, None, :] - centres[None]) / strides[:, None, None]  # [N, M, 2]
    prior = torch.exp(-(d**2).sum(dim=2) / (2 * sigma**2))
    return prior * inside(points, gt_boxes)


def inside(points: Tensor, boxes: Tensor) -> Tensor:
    """[N, 2] points x [M, 4] boxes -> [N, M] bool, strictly inside."""
    lt = points[:, None, :] - boxes[None, :, :2]
    rb = boxes[None, :, 2:] - points[:, None, :]
    return torch.cat([lt, rb], dim=2).amin(dim=2) > 0


def positive_weights(p: Tensor, prior: Tensor, gt_index: Tensor, num_gts: int) -> Tensor:
    """DW positive weights of candidate pairs.

    Args:
        p: [K] ``p_cls * p_loc`` of each (location, GT) candidate pair.
        prior: [K] the pair's centre prior.
        gt_index: [K] the pair's GT (0..num_gts-1).

    Returns:
        [K] ``e^{5p} p prior / sum_{same GT} e^{3p} p prior`` (denominator clamped at 1e-12).
    """
    num = torch.exp(POS_GAMMA * p) * p * prior
    den_terms = torch.exp(POS_GAMMA_NORM * p) * p * prior
    den = torch.zeros(num_gts, dtype=p.dtype, device=p.device).index_add_(0, gt_index, den_terms)
    return num / den.clamp(min=EPS)[gt_index]


def negative_iou_weights(ious: Tensor, gt_index: Tensor, num_gts: int) -> Tensor:
    """P_neg of candidate pairs: 1 below IoU 0.5, the per-GT min-max normalised t(IoU) above.

    Args:
        ious: [K] IoU of each pair's predicted box with its GT.
        gt_index: [K] the pair's GT.

    Returns:
        [K] in [0, 1].
    """
    t = (1 - ious**NEG_ALPHA) / (1 - NEG_IOU**NEG_ALPHA)
    fill = torch.full((num_gts,), float("inf"), dtype=t.dtype, device=t.device)
    t_min = fill.scatter_reduce(0, gt_index, t, "amin")[gt_index]
    t_max = (-fill).scatter_reduce(0, gt_index, t, "amax")[gt_index].clamp(max=1.0)
    y = (t - t_min + EPS) / (t_max - t_min + EPS)
    return torch.where(ious < NEG_IOU, torch.ones_like(y), y)


def combine_negative(
    pair_weight: Tensor, point_index: Tensor, gt_index: Tensor, num_points: int, how: str = "min"
) -> Tensor:
    """Per-location P_neg from its candidate pairs (1 where a location is no candidate).

    Args:
        pair_weight: [K] P_neg per pair; point_index, gt_index: [K].
        how: ``min`` (smallest over the GTs holding the location) or ``last``
            (the highest-indexed GT's, the official code's CPU outcome).

    Returns:
        [num_points] P_neg.
    """
    ones = torch.ones(num_points, dtype=pair_weight.dtype, device=pair_weight.device)
    if pair_weight.numel() == 0:
        return ones
    if how == "min":
        return ones.scatter_reduce(0, point_index, pair_weight, "amin")
    if how == "last":
        last = torch.full((num_points,), -1, dtype=gt_index.dtype, device=gt_index.device)
        last = last.scatter_reduce(0, point_index, gt_index, "amax")
        chosen = last[point_index] == gt_index
        return ones.index_put((point_index[chosen],), pair_weight[chosen])
    raise ValueError(f"neg_overlap must be min or last, got {how!r}")


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of [K, 4] xyxy ``a[k]`` with ``b[k]``."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter).clamp(min=EPS)


def _global_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over DDP processes (``x`` itself outside DDP)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


def dw_image_terms(
    cls_logit: Tensor, ctr_logit: Tensor, pred_boxes: Tensor, anchors: Tensor,
    gt_boxes: Tensor, ignore: Tensor, prior_sigma: float = 1.11, neg_overlap: str = "min",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DW loss sums of one image.

    Args:
        cls_logit, ctr_logit: [N] logits; pred_boxes: [N, 4] decoded xyxy;
        anchors: [N, 4] (point = centre, stride = width); gt_boxes: [M, 4];
        ignore: [N] bool, the location's point is inside an ignore box.

    Returns:
        (positive classification sum, localisation sum, negative sum, its normaliser
        ``sum (1 - P_neg)``), before the division by the batch normalisers.
    """
    log_s = F.logsigmoid(cls_logit) + F.logsigmoid(ctr_logit)  # log joint score
    s = log_s.exp()
    n, m = cls_logit.shape[0], gt_boxes.shape[0]
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    if m:
        prior = center_prior(points, anchors[:, 2] - anchors[:, 0], gt_boxes, prior_sigma)
        pt, g = inside(points, gt_boxes).nonzero(as_tuple=True)
    else:
        pt = g = torch.zeros(0, dtype=torch.int64, device=cls_logit.device)
    giou = generalized_box_iou_loss(pred_boxes[pt], gt_boxes[g], reduction="none")  # [K]
    with torch.no_grad():
        p = s[pt] * torch.exp(-LOC_SCALE * giou)
        w_pos = positive_weights(p, prior[pt, g], g, m) if m else p
        ious = aligned_iou(pred_boxes[pt], gt_boxes[g])
        p_neg = combine_negative(negative_iou_weights(ious, g, m), pt, g, n, neg_overlap)
        candidate = torch.zeros(n, dtype=torch.bool, device=s.device)
        candidate[pt] = True
        keep = candidate | ~ignore
        p_neg = p_neg * keep
        neg_norm = ((1 - p_neg) * keep).sum()
    cls_pos = (-log_s[pt].clamp(min=-100) * w_pos).sum() * POS_LOSS_SCALE
    loc = (LOC_SCALE * giou).clamp(max=100).mul(w_pos).sum() * POS_LOSS_SCALE
    # Departure: a saturated negative (s rounds to 1) costs -log(1e-7) = 16.1 here, where the
    # official F.binary_cross_entropy(s, 0) clamps its log at -100 (a cost of 100); the clamp
    # on s keeps log1p's gradient finite. Below s = 1 - 1e-7 the two are equal.
    bce_neg = -torch.log1p(-s.clamp(max=1 - 1e-7)).clamp(max=100)
    neg = (p_neg * s**NEG_BETA * bce_neg).sum()
    return cls_pos, loc, neg, neg_norm


def dw_loss(
    head_outputs: dict[str, Tensor], anchors: list[Tensor], targets: list[dict[str, Tensor]],
    box_coder, prior_sigma: float = 1.11, neg_overlap: str = "min",
) -> dict[str, Tensor]:
    """DW losses of a batch from the FCOS head's outputs.

    Args:
        head_outputs: ``cls_logits`` [B, N, 1], ``bbox_regression`` [B, N, 4]
            (``l, t, r, b`` in anchor sizes), ``bbox_ctrness`` [B, N, 1].
        anchors: per image [N, 4]; targets: ``boxes`` [M, 4], optional ``ignore_boxes``.

    Returns:
        ``loss_cls_pos``, ``loss_loc``, ``loss_cls_neg`` (scalars).
    """
    sums = [
        dw_image_terms(
            head_outputs["cls_logits"][i, :, 0], head_outputs["bbox_ctrness"][i, :, 0],
            box_coder.decode(head_outputs["bbox_regression"][i], anchors[i]), anchors[i],
            t["boxes"].reshape(-1, 4), ignored_points(anchors[i], t.get("ignore_boxes")),
            prior_sigma, neg_overlap,
        )
        for i, t in enumerate(targets)
    ]
    cls_pos, loc, neg, neg_norm = (torch.stack(x).sum() for x in zip(*sums, strict=True))
    num_gts = anchors[0].new_tensor(float(sum(t["boxes"].shape[0] for t in targets)))
    pos_norm = _global_mean(num_gts).clamp(min=1)
    neg_norm = _global_mean(neg_norm.detach()).clamp(min=1)
    return {
        "loss_cls_pos": cls_pos / pos_norm,
        "loss_loc": loc / pos_norm,
        "loss_cls_neg": neg / neg_norm,
    }
