"""What a detector stage exposes to the training losses: one batch of samples.

This is the seam between the detector and every training term
(:mod:`pedcrowd.losses`). The RPN and the RoI head each build one
:class:`StageSamples` per training step, for the whole batch, and hand it to
their :class:`pedcrowd.losses.criterion.StageCriterion`; nothing is kept on
the modules after the step, and nothing here runs at inference.

Shapes: N = rows of the batch (RPN: every anchor of every image; RoI head: the
proposals the box head ran on), G = GT boxes of the batch (ignore boxes
excluded), I = images. Boxes are ``xyxy`` in the network's input coordinates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder

from pedcrowd.precision import at_least_float32


@dataclass(eq=False)
class StageSamples:
    """One stage's training rows, batch-wide, and what the heads made of them.

    Attributes:
        stage: ``"rpn"`` or ``"roi"``.
        boxes: [N, 4] anchors (RPN) or proposals with the GTs appended (RoI), no gradient.
        image_index: [N] int64 image of each row.
        labels: [N] int64: 1 pedestrian, 0 background, -1 never trained on (ignored, or
            between the matcher's thresholds).
        matched_gt: [N] int64 index into ``gt_boxes`` on label-1 rows, -1 elsewhere.
        class_logits: [N, 2] (background, pedestrian) logits of the RoI head or [N, 1]
            the RPN's objectness logit; with gradient.
        deltas: [N, 4] the pedestrian-class box regression (box coder deltas), with gradient.
        target_deltas: [N, 4] the box coder's encoding of the matched GT (label-1 rows;
            anything elsewhere).
        gt_boxes: [G, 4] the batch's GT boxes, image after image.
        gt_image_index: [G] image of each GT box.
        ignore_boxes: per image [M, 4] ignore regions.
        image_sizes: per image (height, width) of the network input.
        sampled: [N] bool, the rows the sampler chose for the classification and box losses.
        weights: [N] per-row weight of the classification loss, or None for all ones
            (then the standard terms compute exactly torchvision's arithmetic).
        box_weights: [N] per-row weight of the box loss, or None for all ones (PISA
            weights the classification only, as the official code).
        box_coder: decodes ``deltas`` against ``boxes``.
        box_beta: smooth-L1 beta of the ``smooth_l1`` box term set by a sampler (PISA's
            official 1.0), or None for torchvision's 1/9.
        extras: further per-row head outputs, e.g. ``"box_log_var"`` [N, 4].
    """

    stage: str
    boxes: Tensor
    image_index: Tensor
    labels: Tensor
    matched_gt: Tensor
    class_logits: Tensor
    deltas: Tensor
    target_deltas: Tensor
    gt_boxes: Tensor
    gt_image_index: Tensor
    ignore_boxes: list[Tensor]
    image_sizes: list[tuple[int, int]]
    sampled: Tensor
    box_coder: BoxCoder
    weights: Tensor | None = None
    box_weights: Tensor | None = None
    box_beta: float | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)

    @property
    def positive(self) -> Tensor:
        """[N] bool, label-1 rows."""
        return self.labels == 1

    def ped_logit(self) -> Tensor:
        """[N] logit of the pedestrian probability (with gradient).

        RoI head: ``z_ped - z_bg``, since the 2-class softmax equals the sigmoid of
        it; RPN: the objectness logit.
        """
        if self.class_logits.shape[1] == 1:
            return self.class_logits[:, 0]
        return self.class_logits[:, 1] - self.class_logits[:, 0]

    def scores(self) -> Tensor:
        """[N] pedestrian probability (softmax for the RoI head, sigmoid for the RPN)."""
        if self.class_logits.shape[1] == 1:
            return self.class_logits[:, 0].sigmoid()
        return torch.softmax(self.class_logits, dim=-1)[:, 1]

    @cached_property
    def pred_boxes(self) -> Tensor:
        """[N, 4] boxes decoded from ``deltas`` (with gradient)."""
        return self.box_coder.decode_single(self.deltas, self.boxes.to(self.deltas.dtype))

    def float32(self) -> StageSamples:
        """The same batch with every half-precision tensor (logits, deltas, boxes, weights,
        extras) cast to float32, differentiably: what the criteria compute on under
        autocast (:mod:`pedcrowd.precision`). ``self`` when nothing is half."""
        fields = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"
        }
        cast = {k: at_least_float32(v) for k, v in fields.items() if isinstance(v, Tensor)}
        cast["ignore_boxes"] = [at_least_float32(b) for b in self.ignore_boxes]
        extras = {k: at_least_float32(v) for k, v in self.extras.items()}
        changed = any(cast[k] is not fields[k] for k in cast if k != "ignore_boxes") or any(
            a is not b for a, b in zip(cast["ignore_boxes"], self.ignore_boxes, strict=True)
        ) or any(extras[k] is not v for k, v in self.extras.items())
        if not changed:
            return self
        return dataclasses.replace(self, **cast, extras=extras)

    def subset(self, rows: Tensor) -> StageSamples:
        """The same batch restricted to ``rows`` (an index or bool mask over N)."""
        return StageSamples(
            stage=self.stage,
            boxes=self.boxes[rows],
            image_index=self.image_index[rows],
            labels=self.labels[rows],
            matched_gt=self.matched_gt[rows],
            class_logits=self.class_logits[rows],
            deltas=self.deltas[rows],
            target_deltas=self.target_deltas[rows],
            gt_boxes=self.gt_boxes,
            gt_image_index=self.gt_image_index,
            ignore_boxes=self.ignore_boxes,
            image_sizes=self.image_sizes,
            sampled=self.sampled[rows],
            box_coder=self.box_coder,
            weights=None if self.weights is None else self.weights[rows],
            box_weights=None if self.box_weights is None else self.box_weights[rows],
            box_beta=self.box_beta,
            extras={k: v[rows] for k, v in self.extras.items()},
        )
