"""Training Region-based Object Detectors with Online Hard Example Mining
(Shrivastava, Gupta and Girshick, CVPR 2016).

The box head scores every RoI of an image without gradient; each RoI's loss
(classification cross-entropy plus, on positives, the smooth-L1 box loss, as
in the paper) is its hardness. Greedy NMS over the RoIs of one image and one
label (IoU 0.7, the RoIs scored by their loss) removes near-duplicates, which
would have near-equal losses; the B hardest survivors of each image are the
RoIs trained on (with gradient). There is no positive fraction: the loss
decides. mmdetection's OHEMSampler is a different form (classification loss
only, the positive fraction kept, no NMS); it is not offered here.

The authors' settings (abhi2610/ohem), each the default here:

* NMS per image *and per label* (``lib/roi_data_layer/minibatch.py:155-164``:
  ``for img_id ... for label in np.unique(labels)``), so a hard background RoI
  is never suppressed by an overlapping positive; IoU 0.7
  (``lib/fast_rcnn/config.py:129``, ``OHEM_NMS_THRESH``).
* The box part of the hardness is smooth L1 with sigma 1, i.e. beta 1
  (``SmoothL1Loss`` without ``sigma`` in
  ``models/pascal_voc/VGG16/fast_rcnn_ohem/train.prototxt``), not torchvision's 1/9.
* B = 64 RoIs per image chosen from *every* RoI of the image
  (``experiments/cfgs/fast_rcnn_ohem.yml``: ``IMS_PER_BATCH: 1``, ``BATCH_SIZE: 64``;
  ``get_allrois_minibatch`` scores all of them).

Departure kept as an option: ``pool`` > 0 scores a random subset of that many
RoIs per image instead of all (cheaper: on the CPU demo the no-gradient RoIAlign
over every proposal costs about 1.65x a default step); the authors have no such
subset.

Ignore regions keep their meaning: a row with label -1 (an ignored negative,
or between the thresholds) is never a candidate, so never "hard".

Shapes: R candidate RoIs of one image; boxes [R, 4] xyxy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from pedcrowd.losses.standard import RandomSampler, SamplerContext

SMOOTH_L1_BETA = 1.0  # the authors' SmoothL1Loss (sigma 1); torchvision's box loss uses 1/9


def ohem_row_loss(
    class_logits: Tensor,
    deltas: Tensor,
    labels: Tensor,
    target_deltas: Tensor,
    *,
    with_box: bool = True,
    beta: float = SMOOTH_L1_BETA,
) -> Tensor:
    """Each RoI's loss, the hardness. -> [R] (computed from whatever is given; no reduction).

    Args:
        class_logits: [R, C] class logits.
        deltas: [R, 4] box regression of the pedestrian class.
        labels: [R] int64: 1 pedestrian, 0 background, -1 ignored (its loss is set to -inf).
        target_deltas: [R, 4] targets (used on positives).
        with_box: add the smooth L1 box loss on positives (paper).
        beta: its smooth-L1 beta (the authors' 1).
    """
    loss = F.cross_entropy(class_logits, labels.clamp(min=0), reduction="none")  # [R]
    if with_box:
        box = F.smooth_l1_loss(deltas, target_deltas, beta=beta, reduction="none").sum(dim=1)
        loss = loss + torch.where(labels > 0, box, torch.zeros_like(box))
    return torch.where(labels >= 0, loss, torch.full_like(loss, float("-inf")))


def ohem_select(
    loss: Tensor, boxes: Tensor, labels: Tensor, *, num: int, nms_thresh: float = 0.7
) -> Tensor:
    """The hard RoIs of one image. -> [R] bool mask.

    Args:
        loss: [R] each RoI's loss (no gradient).
        boxes: [R, 4] the RoIs (proposals), xyxy.
        labels: [R] int64; rows with label -1 are never selected. NMS runs per label
            (the authors'): a RoI only suppresses RoIs of its own label.
        num: B, how many to keep (fewer if fewer survive NMS); ties in the loss keep
            index order.
        nms_thresh: IoU above which a less hard RoI is a duplicate; >= 1 turns NMS off.
    """
    eligible = torch.nonzero((labels >= 0) & torch.isfinite(loss)).flatten()
    mask = torch.zeros(loss.shape[0], dtype=torch.bool, device=loss.device)
    if eligible.numel() == 0 or num <= 0:
        return mask
    scores = loss[eligible].detach().float()
    if nms_thresh < 1.0:
        kept = batched_nms(boxes[eligible].float(), scores, labels[eligible], nms_thresh)
        keep = kept[torch.sort(scores[kept], descending=True, stable=True).indices]
    else:
        keep = torch.sort(scores, descending=True, stable=True).indices
    mask[eligible[keep[:num]]] = True
    return mask


# ----------------------------------------------------------------------------- the registered sampler


class OhemSampler(RandomSampler):
    """Sampler ``ohem``: per image, the ``num`` hardest RoIs of the pool after NMS.

    The pool is every proposal that may be trained on (``pool`` 0, the authors'),
    or a uniform random subset of ``pool`` of them (cheaper; not the authors').
    ``num`` is B per image (64, the authors'); null takes the model's
    ``box_batch_size_per_image``, so that the box head trains on as many rows as
    with the random sampler.
    """

    def select(self, ctx: SamplerContext) -> list[Tensor]:
        opts = self.options
        num = opts.num if opts.num is not None else ctx.fg_bg_sampler.batch_size_per_image
        pool_size = 4 * num if opts.pool is None else opts.pool  # null: the pre-0.2 default
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
            beta=opts.beta,
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
