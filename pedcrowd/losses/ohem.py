"""Training Region-based Object Detectors with Online Hard Example Mining
(Shrivastava, Gupta and Girshick, CVPR 2016).

The box head scores a pool of RoIs without gradient; each RoI's loss
(classification cross-entropy plus, on positives, the box regression loss, as
in the paper) is its hardness. Greedy NMS over the RoIs (IoU 0.7, the RoIs
scored by their loss) removes near-duplicates, which would have near-equal
losses; the B hardest survivors of each image are the RoIs trained on (with
gradient). There is no positive fraction: the loss decides. mmdetection's
OHEMSampler is a different form (classification loss only, the positive
fraction kept, no NMS); it is not offered here.

Ignore regions keep their meaning: a row with label -1 (an ignored negative,
or between the thresholds) is never a candidate, so never "hard".

Shapes: R candidate RoIs of one image; boxes [R, 4] xyxy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms

from pedcrowd.losses.standard import RandomSampler, SamplerContext

SMOOTH_L1_BETA = 1.0 / 9.0  # torchvision's fastrcnn_loss


def ohem_row_loss(
    class_logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    target_deltas: Tensor,
    *,
    with_box: bool = True,
) -> Tensor:
    """Each RoI's loss, the hardness. -> [R] (computed from whatever is given; no reduction).

    Args:
        class_logits: [R, C] class logits.
        deltas: [R, 4] box regression of the pedestrian class.
        labels: [R] int64: 1 pedestrian, 0 background, -1 ignored (its loss is set to -inf).
        target_deltas: [R, 4] targets (used on positives).
        with_box: add the smooth L1 box loss (torchvision's beta 1/9) on positives (paper).
    """
    loss = F.cross_entropy(class_logits, labels.clamp(min=0), reduction="none")  # [R]
    if with_box:
        box = F.smooth_l1_loss(deltas, target_deltas, beta=SMOOTH_L1_BETA, reduction="none").sum(
            dim=1
        )
        loss = loss + torch.where(labels > 0, box, torch.zeros_like(box))
    return torch.where(labels >= 0, loss, torch.full_like(loss, float("-inf")))


def ohem_select(
    loss: Tensor, boxes: Tensor, labels: Tensor, *, num: int, nms_thresh: float = 0.7
) -> Tensor:
    """The hard RoIs of one image. -> [R] bool mask.

    Args:
        loss: [R] each RoI's loss (no gradient).
        boxes: [R, 4] the RoIs (proposals), xyxy.
        labels: [R] int64; rows with label -1 are never selected.
        num: B, how many to keep (fewer if fewer survive NMS).
        nms_thresh: IoU above which a less hard RoI is a duplicate; >= 1 turns NMS off.
    """
    eligible = torch.nonzero((labels >= 0) & torch.isfinite(loss)).flatten()
    mask = torch.zeros(loss.shape[0], dtype=torch.bool, device=loss.device)
    if eligible.numel() == 0 or num <= 0:
        return mask
    scores = loss[eligible].detach().float()
    if nms_thresh < 1.0:
        keep = nms(boxes[eligible].float(), scores, nms_thresh)  # hardest first
    else:
        keep = torch.sort(scores, descending=True, stable=True).indices
    mask[eligible[keep[:num]]] = True
    return mask


# ----------------------------------------------------------------------------- the registered sampler


class OhemSampler(RandomSampler):
    """Sampler ``ohem``: per image, the ``num`` hardest RoIs of the pool after NMS.

    The pool is a uniform random ``pool`` of the proposals that may be trained on
    (null: 4 x ``num``, the issue's "128 of 512"), or every one of them (``pool`` 0,
    the paper: about 1.65x the default step on the CPU demo, where the RoIAlign of
    the no-gradient pass dominates); ``num`` null takes the model's
    ``box_batch_size_per_image``, so that the box head trains on as many rows as
    with the random sampler.
    """

    def select(self, ctx: SamplerContext) -> list[Tensor]:
        opts = self.options
        num = opts.num if opts.num is not None else ctx.fg_bg_sampler.batch_size_per_image
        pool_size = 4 * num if opts.pool is None else opts.pool
        pools = []
        for labels in ctx.labels:
            eligible = torch.where(labels >= 0)[0]
            if 0 < pool_size < eligible.numel():
                perm = torch.randperm(eligible.numel(), device=eligible.device)[:pool_size]
                eligible = eligible[perm.sort().values]
            pools.append(eligible)
        scored = ctx.score(pools)  # the box head on the pools, without gradient
        loss = ohem_row_loss(
            scored.class_logits,
            scored.deltas,
            scored.labels,
            scored.target_deltas,
            with_box=opts.with_box,
        )  # [sum of pool sizes]
        chosen = []
        for pool, image_loss, boxes, labels in zip(
            pools,
            loss.split([p.numel() for p in pools]),
            scored.boxes.split([p.numel() for p in pools]),
            scored.labels.split([p.numel() for p in pools]),
            strict=True,
        ):
            mask = ohem_select(image_loss, boxes, labels, num=num, nms_thresh=opts.nms_thresh)
            chosen.append(pool[mask])
        return chosen
