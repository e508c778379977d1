"""Prime Sample Attention in Object Detection (Cao, Chen, Loy and Lin, CVPR 2020).

PISA weights the second stage's samples by how much they matter for AP:

* IoU-HLR (hierarchical local rank) of the positives: group them by their GT,
  rank each group by the IoU of the *regressed* box with its GT (local rank),
  then order all positives by (local rank, IoU descending): every GT's best box
  first, ordered by IoU, then every GT's second best, and so on. The ranking
  runs over the whole batch (official).
* ISR-P: a positive of rank r (0 = most important) among n gets
  ``w = ((1 - r / n) (1 - bias) + bias)^k`` (official ``(n - r) / n``; k 2,
  bias 0), then all positive weights are scaled so that the weighted positive
  classification loss equals the unweighted one.
* ISR-N (official ScoreHLRSampler): negatives with pedestrian score > score_thr
  are grouped by greedy NMS (iou_thr 0.5) on their regressed boxes, ranked by
  (rank in group, score descending) (Score-HLR), the first ``num`` of them are
  the sampled negatives (randomly drawn low-score negatives fill up when there
  are too few) with ``w = ((1 - r / m)(1 - bias) + bias)^k``, m = max(num,
  valid), k 0.5, bias 0; the fill-ups get the smallest weight; weights are
  scaled to keep the selected negatives' loss sum.
* CARL: ``w_i = ((1 - bias) p_i + bias)^k`` of the positive's (softmax)
  pedestrian probability, with gradient, scaled to sum to the number of
  positives; the loss is ``sum_i w_i * L_box(i) / avg_factor`` (k 1, bias 0.2).

One class only: positives are ``labels == 1``. (mmdetection's ``isr_p`` and
``carl_loss`` take ``num_class`` with a default of 80 and test ``labels <
num_class`` for "positive"; its PISA heads pass the head's ``num_classes``, so
a one-class config is right there, and only a direct call that leaves the
default 80 with one-class labels counts background as positive. Its ISR-P also
offsets GT indices per image by the previous image's largest index only, so GT
groups of different images can merge; pedcrowd uses one global GT index.)
Group membership in mmcv's ``nms_match`` is IoU >= thr; here torchvision's
``nms`` (IoU > thr): they differ only at exactly IoU = thr.

Settings of mmdetection 3.3's ``configs/pisa/faster-rcnn_r50_fpn_pisa_1x_coco.py``
(the defaults here): the box loss is smooth L1 with beta 1.0 (its line 7,
``loss_bbox=dict(type='SmoothL1Loss', beta=1.0)``), and CARL uses that same
box loss (``pisa_roi_head.py``: ``carl_loss(..., self.bbox_head.loss_bbox)``),
so ``box_beta`` 1 replaces torchvision's 1/9 for both; ``isr=dict(k=2,
bias=0)``, ``carl=dict(k=1, bias=0.2)``, ``ScoreHLRSampler(k=0.5, bias=0)``,
score_thr 0.05 and iou_thr 0.5 (the sampler's defaults). ISR-P keeps the sum
of the head's own classification loss on the positives
(``pisa_loss.py``: ``loss_cls(..., reduction_override='none')``): with
``loss.cls`` focal or QFL that is the focal / QFL per-row loss; GHM-C has no
per-row form outside its batch statistics, so there ISR-P uses cross-entropy.
When no negative is to be sampled (``box_positive_fraction`` 1 and the batch
full of positives) ISR-N selects nothing (mmdetection fails on the empty
``imp_weights.min()`` there).

Shapes: P positives, Q negatives, num selected negatives; boxes xyxy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import nms

from pedcrowd.box_torch import box_iou, paired_iou
from pedcrowd.losses.standard import RandomSampler, SamplerContext, zero_loss

if TYPE_CHECKING:
    from pedcrowd.losses.config import PisaConfig
    from pedcrowd.losses.samples import StageSamples


def hlr_rank(values: Tensor, groups: Tensor) -> Tensor:
    """Hierarchical local rank. [P], [P] -> [P] int64 (0 = first).

    Rank inside each group by ``values`` descending (local rank), then rank
    everything by (local rank ascending, value descending). Ties keep index order.

    Args:
        values: [P] IoU (IoU-HLR) or score (Score-HLR).
        groups: [P] int64 group id (the GT, or the NMS group).
    """
    p = values.shape[0]
    if p == 0:
        return torch.zeros(0, dtype=torch.int64, device=values.device)
    by_value = torch.sort(values, descending=True, stable=True).indices  # [P]
    by_group = by_value[torch.sort(groups[by_value], stable=True).indices]  # group, then value desc
    sorted_groups = groups[by_group]
    positions = torch.arange(p, device=values.device)
    starts = torch.ones(p, dtype=torch.bool, device=values.device)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first = torch.cummax(
        torch.where(starts, positions, 0), dim=0
    ).values  # start of each row's group
    local = torch.empty(p, dtype=torch.int64, device=values.device)
    local[by_group] = positions - first
    order = torch.sort(values, descending=True, stable=True).indices
    order = order[torch.sort(local[order], stable=True).indices]  # local asc, value desc
    rank = torch.empty(p, dtype=torch.int64, device=values.device)
    rank[order] = positions
    return rank


def rank_weights(rank: Tensor, n: int, *, k: float, bias: float) -> Tensor:
    """``((n - r) / n * (1 - bias) + bias) ** k``. [P] -> [P] float."""
    u = (n - rank.to(torch.float64)) / max(n, 1)
    return (bias + (1.0 - bias) * u).pow(k)


def _preserve_sum(weights: Tensor, loss: Tensor) -> Tensor:
    """Scale ``weights`` so that ``sum(w * loss) == sum(loss)`` (unchanged if the weighted sum is 0)."""
    loss = loss.detach().to(weights.dtype)
    new = (weights * loss).sum()
    keep = ~torch.isfinite(new) | (new <= 0)  # decided on the device: no host read
    return torch.where(keep, weights, weights * (loss.sum() / new))


def isr_p_weights(
    ious: Tensor, gt_index: Tensor, pos_loss: Tensor, *, k: float = 2.0, bias: float = 0.0
) -> Tensor:
    """ISR-P weights of the positives. [P], [P], [P] -> [P] (no gradient).

    Args:
        ious: [P] IoU of each positive's regressed box with its GT.
        gt_index: [P] int64 GT of each positive (unique over the batch).
        pos_loss: [P] each positive's unweighted classification loss (detached).
    """
    if ious.numel() == 0:
        return ious.new_zeros(0)
    rank = hlr_rank(ious.detach(), gt_index)
    w = rank_weights(rank, ious.shape[0], k=k, bias=bias).to(pos_loss.dtype)
    return _preserve_sum(w, pos_loss)


def nms_groups(boxes: Tensor, scores: Tensor, *, iou_thr: float) -> Tensor:
    """Greedy-NMS groups: each kept box and the boxes it suppresses. [Q,4], [Q] -> [Q] int64.

    A removed box joins the first box kept before it (in score order) that
    overlaps it by IoU > ``iou_thr``; the group id is that kept box's index.
    """
    q = boxes.shape[0]
    groups = torch.arange(q, device=boxes.device)
    if q == 0:
        return groups
    keep = nms(boxes, scores, iou_thr)  # [K] score order
    order = torch.sort(scores, descending=True, stable=True).indices
    position = torch.empty(q, dtype=torch.int64, device=boxes.device)
    position[order] = torch.arange(q, device=boxes.device)
    overlaps = box_iou(boxes[keep], boxes) > iou_thr  # [K,Q]
    before = position[keep][:, None] < position[None, :]  # [K,Q]
    hit = overlaps & before
    hit[:, keep] = False
    has = hit.any(dim=0)  # [Q]
    first = hit.to(torch.int8).argmax(dim=0)  # first kept suppressor, in keep order
    return torch.where(has, keep[first], groups)


def isr_n_select(
    scores: Tensor,
    boxes: Tensor,
    neg_loss: Tensor,
    *,
    num: int,
    k: float = 0.5,
    bias: float = 0.0,
    score_thr: float = 0.05,
    iou_thr: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ISR-N: the sampled negatives by Score-HLR and their weights.

    Args:
        scores: [Q] pedestrian probability of each candidate negative (no gradient).
        boxes: [Q, 4] their regressed boxes.
        neg_loss: [Q] their unweighted classification loss.
        num: how many negatives to sample (at most Q are).
        generator: RNG for the random fill-up.

    Returns:
        indices [S] into the Q candidates (S = min(num, Q); Score-HLR ones
        first, then fill-ups) and weights [S].
    """
    q = scores.shape[0]
    num = min(num, q)
    if num <= 0:  # nothing to sample (official: crashes on an empty min())
        empty = torch.zeros(0, dtype=torch.int64, device=scores.device)
        return empty, neg_loss.new_zeros(0)
    valid = torch.nonzero(scores > score_thr).flatten()
    invalid = torch.nonzero(scores <= score_thr).flatten()
    if valid.numel() == 0:
        pick = torch.randperm(q, generator=generator, device="cpu")[:num].to(scores.device)
        return pick, scores.new_ones(num)
    groups = nms_groups(boxes[valid], scores[valid], iou_thr=iou_thr)
    rank = hlr_rank(scores[valid], groups)
    n_hlr = min(valid.numel(), num)
    order = torch.argsort(rank)[:n_hlr]  # the first n_hlr by Score-HLR
    up = max(num, valid.numel())
    hlr_w = rank_weights(rank[order], up, k=1.0, bias=0.0)  # linear part, (up - r) / up
    n_rand = num - n_hlr
    fill = invalid[
        torch.randperm(invalid.numel(), generator=generator, device="cpu")[:n_rand].to(
            scores.device
        )
    ]
    pick = torch.cat([valid[order], fill])
    linear = torch.cat([hlr_w, hlr_w.min().expand(n_rand)])
    w = (bias + (1.0 - bias) * linear).pow(k).to(neg_loss.dtype)
    return pick, _preserve_sum(w, neg_loss[pick])


def carl_loss(
    scores: Tensor, box_loss: Tensor, *, k: float = 1.0, bias: float = 0.2, avg_factor: float | Tensor
) -> Tensor:
    """Classification-aware regression loss. [P], [P] -> scalar.

    Args:
        scores: [P] pedestrian probability of each positive (WITH gradient: CARL
            trains the classifier through the box loss).
        box_loss: [P] each positive's box loss summed over its 4 coordinates (with gradient).
        avg_factor: the normaliser (number of sampled rows, as the box loss it sits beside).
    """
    if scores.numel() == 0:
        return (scores.sum() + box_loss.sum()) * 0.0
    w = (bias + (1.0 - bias) * scores).pow(k)
    w = w * (scores.shape[0] / w.sum())
    if isinstance(avg_factor, Tensor):
        return (w * box_loss).sum() / avg_factor.clamp(min=1.0)
    return (w * box_loss).sum() / max(avg_factor, 1.0)


# ----------------------------------------------------------------------------- the registered sampler


class PisaSampler(RandomSampler):
    """Sampler ``pisa``: torchvision's random positives; negatives by ISR-N (Score-HLR,
    the box head run without gradient on every negative) or random; after the box
    head, ISR-P and ISR-N weights on the classification rows (``s.weights``) and the
    CARL term.
    """

    def __init__(self, options: PisaConfig) -> None:
        super().__init__(options)
        self._neg_weights: list[Tensor] = []

    def select(self, ctx: SamplerContext) -> list[Tensor]:
        opts = self.options
        sampled_pos, sampled_neg = ctx.fg_bg_sampler(ctx.labels)
        pos = [torch.where(p)[0] for p in sampled_pos]
        if not opts.isr_n:
            self._neg_weights = []
            return [torch.where(p | n)[0] for p, n in zip(sampled_pos, sampled_neg, strict=True)]
        negs = [torch.where(labels == 0)[0] for labels in ctx.labels]
        scored = ctx.score(negs)
        scores = scored.scores()
        boxes = scored.pred_boxes
        neg_loss = -torch.log1p(-scores.clamp(max=1.0 - 1e-7))  # cross-entropy with label 0
        chosen, self._neg_weights = [], []
        sizes = [n.numel() for n in negs]
        per_image = zip(
            pos,
            negs,
            scores.split(sizes),
            boxes.split(sizes),
            neg_loss.split(sizes),
            strict=True,
        )
        batch = ctx.fg_bg_sampler.batch_size_per_image
        for p, n, sc, bx, nl in per_image:
            pick, w = isr_n_select(
                sc,
                bx,
                nl,
                num=batch - p.numel(),
                k=opts.neg_k,
                bias=opts.neg_bias,
                score_thr=opts.score_thr,
                iou_thr=opts.iou_thr,
            )
            rows = torch.cat([p, n[pick]])
            weights = torch.cat([torch.ones(p.numel(), dtype=w.dtype, device=w.device), w])
            order = torch.argsort(rows)
            chosen.append(rows[order])
            self._neg_weights.append(weights[order])
        return chosen

    def reweight(
        self, s: StageSamples, cls_rows: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, Tensor]:
        opts = self.options
        s.box_beta = opts.box_beta
        weights = torch.ones(s.labels.shape[0], dtype=s.class_logits.dtype, device=s.labels.device)
        if self._neg_weights:  # the sampled rows come first in each image, in select's order
            weights[s.sampled] = torch.cat(self._neg_weights).to(weights.dtype)
            self._neg_weights = []
        pos = torch.where(s.sampled & s.positive)[0]  # [P]
        if opts.isr_p and pos.numel() > 0:
            with torch.no_grad():
                gt = s.gt_boxes[s.matched_gt[pos]].to(s.deltas.dtype)
                ious = paired_iou(s.pred_boxes[pos].detach(), gt)
                if cls_rows is None:  # cross-entropy with label 1
                    pos_loss = -torch.nn.functional.logsigmoid(s.ped_logit()[pos])
                else:  # the head's own classification loss (official)
                    pos_loss = cls_rows(pos)
                weights[pos] = isr_p_weights(
                    ious, s.matched_gt[pos], pos_loss, k=opts.k, bias=opts.bias
                ).to(weights.dtype)
        s.weights = weights  # classification only; the box loss stays unweighted (official)
        if opts.carl_weight == 0.0:  # a zero weight skips the computation
            return {}
        sampled = s.sampled.sum().to(s.deltas.dtype)  # a device tensor: no host read
        box = torch.nn.functional.smooth_l1_loss(
            s.deltas[pos], s.target_deltas[pos], beta=opts.box_beta, reduction="none"
        ).sum(dim=1)
        carl = carl_loss(
            s.scores()[pos], box, k=opts.carl_k, bias=opts.carl_bias, avg_factor=sampled
        )
        return {"carl": carl + zero_loss(s)}  # weighted by the criterion (carl_weight)
