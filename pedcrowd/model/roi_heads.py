"""The second stage: torchvision's ``RoIHeads`` with ignore regions and the crowd-loss seam.

Shapes: N images, R sampled proposals of an image (R_all over the batch),
K = 2 classes (background, pedestrian), G GT boxes and M ignore boxes of an
image. ``deltas`` are the box coder's (dx, dy, dw, dh) regression outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from pedcrowd.model.ignore import exclude_ignored_negatives
from pedcrowd.model.rpn import CrowdLossFn
from pedcrowd.model.samples import RoiSamples

PEDESTRIAN = 1  # class index of the pedestrian (0 is background)


class PedRoIHeads(RoIHeads):
    """``RoIHeads`` whose training step ignores ignore regions and feeds the crowd losses.

    Training: proposals whose IoA with an ignore box (``target["ignore_boxes"]``)
    is >= 0.5 are not sampled as negatives; one :class:`RoiSamples` per image is
    built from the sampled proposals and kept in ``last_samples``; if
    ``crowd_loss_fn`` is set, its terms are added to the loss dict.
    Inference is ``RoIHeads.forward`` itself, so outputs do not depend on the seam.
    """

    crowd_loss_fn: CrowdLossFn | None = None

    def __init__(self, *args, ignore_ioa_thresh: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.crowd_loss_fn = None
        self.last_samples: list[RoiSamples] = []

    def select_training_samples(
        self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's sampling with the ignore rule applied before the sampler.

        Args:
            proposals: per image [P, 4] RPN proposals.
            targets: per image ``boxes`` [G, 4], ``labels`` [G], optional ``ignore_boxes`` [M, 4].

        Returns:
            proposals: per image [R, 4] sampled proposals (GT boxes appended before sampling).
            matched_idxs: per image [R] GT index, clamped to 0 for negatives (torchvision's convention).
            labels: per image [R] int64, 1 pedestrian, 0 background.
            regression_targets: per image [R, 4] deltas of the matched GT.
        """
        self.check_targets(targets)
        assert targets is not None
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]

        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        labels = [
            exclude_ignored_negatives(lab, props, t.get("ignore_boxes"), self.ignore_ioa_thresh)
            for lab, props, t in zip(labels, proposals, targets, strict=True)
        ]
        sampled_inds = self.subsample(labels)

        matched_gt_boxes = []
        for i, inds in enumerate(sampled_inds):
            proposals[i] = proposals[i][inds]
            labels[i] = labels[i][inds]
            matched_idxs[i] = matched_idxs[i][inds]
            boxes = (
                gt_boxes[i]
                if gt_boxes[i].numel()
                else torch.zeros((1, 4), dtype=dtype, device=device)
            )
            matched_gt_boxes.append(boxes[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)

        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)  # [R_all,K], [R_all,K*4]
        if class_logits.shape[0] == 0:
            # nothing sampled in the whole batch (ignore-only images whose ignore regions
            # cover every proposal): fastrcnn_loss would average over nothing, NaN
            loss_classifier = class_logits.sum() * 0.0
            loss_box_reg = box_regression.sum() * 0.0
        else:
            loss_classifier, loss_box_reg = fastrcnn_loss(
                class_logits, box_regression, labels, regression_targets
            )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        self.last_samples = self.build_samples(
            class_logits, box_regression, proposals, matched_idxs, labels, targets
        )
        if self.crowd_loss_fn is not None:
            losses.update(self.crowd_loss_fn(self.last_samples))
        return [], losses

    def build_samples(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
        labels: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
    ) -> list[RoiSamples]:
        """One :class:`RoiSamples` per image from the box head's outputs (batched decode, one split).

        Args:
            class_logits: [R_all, K].
            box_regression: [R_all, K * 4].
            proposals, matched_idxs, labels: per image [R, 4], [R], [R] from the sampler.
        """
        deltas = box_regression.reshape(-1, class_logits.shape[1], 4)[:, PEDESTRIAN]  # [R_all,4]
        pred_boxes = self.box_coder.decode_single(deltas, torch.cat(proposals))  # [R_all,4]
        scores = F.softmax(class_logits, dim=-1)[:, PEDESTRIAN]  # [R_all]
        per_image = [p.shape[0] for p in proposals]
        samples = []
        for props, idxs, labs, boxes, score, target in zip(
            proposals,
            matched_idxs,
            labels,
            pred_boxes.split(per_image),
            scores.split(per_image),
            targets,
            strict=True,
        ):
            samples.append(
                RoiSamples(
                    proposals=props,
                    matched_gt=torch.where(labs > 0, idxs, torch.full_like(idxs, -1)),
                    pred_boxes=boxes,
                    scores=score,
                    gt_boxes=target["boxes"],
                )
            )
        return samples
