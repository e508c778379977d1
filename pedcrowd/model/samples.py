"""What the second stage exposes to the crowd losses, per image, in training.

This is the seam between the detector and the crowd losses (NMS-Loss,
RepLoss): :class:`pedcrowd.model.roi_heads.PedRoIHeads` fills one
:class:`RoiSamples` per image after sampling proposals and running the box
head; the loss functions in :mod:`pedcrowd.losses` read them. Nothing here
runs at inference.

Shapes: R = sampled proposals of the image, G = its GT boxes (ignore boxes
excluded). Boxes are ``xyxy`` in the network's input coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RoiSamples:
    """One image's sampled proposals and what the box head made of them.

    Attributes:
        proposals: [R, 4] the sampled proposals (no gradient).
        matched_gt: [R] int64 index into ``gt_boxes`` for positives, -1 for
            negatives (background).
        pred_boxes: [R, 4] pedestrian-class boxes decoded from the box
            regression of each proposal (with gradient).
        scores: [R] pedestrian probability (softmax over the class logits,
            with gradient).
        gt_boxes: [G, 4] the image's GT boxes (no gradient).
    """

    proposals: torch.Tensor
    matched_gt: torch.Tensor
    pred_boxes: torch.Tensor
    scores: torch.Tensor
    gt_boxes: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """[R] bool mask of the positives."""
        return self.matched_gt >= 0
