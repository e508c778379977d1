"""Positive predictions of a batch, grouped for the pairwise crowd losses.

NMS-Loss and RepLoss compare every positive of an image with every other one.
They run on several images at once (a few dozen tensor ops for the whole
group instead of per image), in groups of at most ``MAX_BATCHED_POSITIVES``
positives, since their IoU matrices grow with the square of a group.

Shapes: N positives of the batch, G GT boxes, I images; n, g, i of a group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from pedcrowd.losses.samples import StageSamples

MAX_BATCHED_POSITIVES = 2048


@dataclass
class Positives:
    """Positive predictions of some images (GT and image indices local to them)."""

    pred_boxes: Tensor  # [n, 4] decoded, with gradient
    scores: Tensor  # [n] pedestrian probability, with gradient
    proposals: Tensor  # [n, 4] the anchors / proposals they were regressed from
    gt_index: Tensor  # [n] into gt_boxes
    gt_boxes: Tensor  # [g, 4]
    image_index: Tensor  # [n] in [0, num_images)
    gt_image_index: Tensor  # [g]
    num_images: int


def positives_of(s: StageSamples, rows: Tensor) -> Positives:
    """The rows ``rows`` ([N] bool, positives only) of a stage's samples as :class:`Positives`."""
    return Positives(
        pred_boxes=s.pred_boxes[rows],
        scores=s.scores()[rows],
        proposals=s.boxes[rows],
        gt_index=s.matched_gt[rows],
        gt_boxes=s.gt_boxes,
        image_index=s.image_index[rows],
        gt_image_index=s.gt_image_index,
        num_images=s.num_images,
    )


def image_groups(
    p: Positives, max_positives: int = MAX_BATCHED_POSITIVES
) -> Iterator[Positives]:
    """``p`` split into runs of consecutive images holding at most ``max_positives``
    positives each (an image with more is a group of its own). Every image is in
    exactly one group, also an image without positives."""
    counts = torch.bincount(p.image_index, minlength=p.num_images).tolist()
    start, total = 0, 0
    bounds = []
    for i, c in enumerate(counts):
        if i > start and total + c > max_positives:
            bounds.append((start, i))
            start, total = i, 0
        total += c
    bounds.append((start, p.num_images))
    if len(bounds) == 1:
        yield p
        return
    for begin, end in bounds:
        rows = (p.image_index >= begin) & (p.image_index < end)  # [N]
        gts = (p.gt_image_index >= begin) & (p.gt_image_index < end)  # [G]
        new_gt = torch.cumsum(gts.long(), 0) - 1  # [G] position among the group's GTs
        yield Positives(
            pred_boxes=p.pred_boxes[rows],
            scores=p.scores[rows],
            proposals=p.proposals[rows],
            gt_index=new_gt[p.gt_index[rows]],
            gt_boxes=p.gt_boxes[gts],
            image_index=p.image_index[rows] - begin,
            gt_image_index=p.gt_image_index[gts] - begin,
            num_images=end - begin,
        )
