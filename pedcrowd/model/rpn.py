"""The ignore-aware RPN and its crowd-loss seam.

Shapes: N images, A anchors per image (all levels concatenated), G GT boxes
and M ignore boxes of an image, P its positive anchors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from pedcrowd.model.ignore import exclude_ignored_negatives
from pedcrowd.model.samples import RoiSamples

CrowdLossFn = Callable[[list[RoiSamples]], dict[str, torch.Tensor]]


def rpn_loss_name(name: str) -> str:
    """Name of a crowd-loss term computed on the RPN: ``loss_nms`` -> ``loss_rpn_nms``.

    Keeps the RPN's and the second stage's terms apart when one loss acts on both.
    """
    return "loss_rpn_" + name[len("loss_") :] if name.startswith("loss_") else "rpn_" + name


class PedRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN, with ignore regions excluded from the negatives.

    In training, anchors whose IoA with an ignore box (``target["ignore_boxes"]``,
    [M, 4] xyxy, optional) is >= 0.5 and that are not positive are never sampled.
    The positive anchors of each image are exposed as :class:`RoiSamples`
    (``proposals`` = anchors, ``pred_boxes`` = their decoded boxes, ``scores`` =
    sigmoid objectness, both with gradient) in ``last_samples``, and passed to
    ``crowd_loss_fn`` if it is set; its terms are added to the losses renamed by
    :func:`rpn_loss_name`. Inference is torchvision's code path, untouched.
    """

    crowd_loss_fn: CrowdLossFn | None = None

    def __init__(self, *args, ignore_ioa_thresh: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.crowd_loss_fn = None
        self.last_samples: list[RoiSamples] = []

    def assign_targets_with_ignore(
        self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """torchvision's anchor labelling plus the ignore rule.

        Args:
            anchors: per image [A, 4] xyxy.
            targets: per image ``boxes`` [G, 4] and optional ``ignore_boxes`` [M, 4].

        Returns:
            labels: per image [A] float, 1 positive, 0 negative, -1 not sampled.
            matched_gt_boxes: per image [A, 4], the matched GT (anything for non-positives).
            matched_gt: per image [A] int64 GT index of positives, -1 elsewhere.
        """
        # torchvision's assign_targets_to_anchors, keeping the matched GT index it discards
        labels, matched_gt_boxes, matched_gt = [], [], []
        for anchors_in_image, target in zip(anchors, targets, strict=True):
            gt_boxes = target["boxes"]
            num_anchors = anchors_in_image.shape[0]
            if gt_boxes.numel() == 0:  # background or ignore-only image
                matched_idxs = torch.full(
                    (num_anchors,), -1, dtype=torch.int64, device=anchors_in_image.device
                )
                boxes_in_image = torch.zeros_like(anchors_in_image)
            else:
                matched_idxs = self.proposal_matcher(
                    self.box_similarity(gt_boxes, anchors_in_image)
                )  # [A]
                boxes_in_image = gt_boxes[matched_idxs.clamp(min=0)]  # [A,4]
            labels_in_image = (matched_idxs >= 0).to(torch.float32)  # BELOW_LOW_THRESHOLD (-1) -> 0
            labels_in_image[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels_in_image = exclude_ignored_negatives(
                labels_in_image,
                anchors_in_image,
                target.get("ignore_boxes"),
                self.ignore_ioa_thresh,
            )
            labels.append(labels_in_image)
            matched_gt_boxes.append(boxes_in_image)
            matched_gt.append(
                torch.where(labels_in_image > 0, matched_idxs, torch.full_like(matched_idxs, -1))
            )
        return labels, matched_gt_boxes, matched_gt

    def compute_loss(
        self,
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """torchvision's RPN losses (same arithmetic), zero, not NaN, when nothing can be sampled.

        That happens when every image is ignore-only and its ignore regions cover every
        non-positive anchor; torchvision divides by the number of sampled anchors.
        """
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos_inds = torch.where(torch.cat(sampled_pos))[0]
        sampled_inds = torch.cat([pos_inds, torch.where(torch.cat(sampled_neg))[0]])
        if sampled_inds.numel() == 0:  # known after torch.where: no extra sync
            zero = objectness.sum() * 0.0 + pred_bbox_deltas.sum() * 0.0  # keeps the graph
            return zero, zero.clone()
        objectness = objectness.flatten()
        box_loss = (
            F.smooth_l1_loss(
                pred_bbox_deltas[pos_inds],
                torch.cat(regression_targets)[pos_inds],
                beta=1 / 9,
                reduction="sum",
            )
            / sampled_inds.numel()
        )
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness[sampled_inds], torch.cat(labels)[sampled_inds]
        )
        return objectness_loss, box_loss

    def forward(
        self,
        images: ImageList,
        features: dict[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        if not self.training:
            return super().forward(images, features, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")

        # Same steps as RegionProposalNetwork.forward, with our labelling.
        feature_maps = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_maps)
        anchors = self.anchor_generator(images, feature_maps)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(
            objectness, pred_bbox_deltas
        )  # [N*A,1], [N*A,4]
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(
            num_images, -1, 4
        )
        boxes, _ = self.filter_proposals(
            proposals, objectness, images.image_sizes, num_anchors_per_level
        )

        labels, matched_gt_boxes, matched_gt = self.assign_targets_with_ignore(anchors, targets)
        regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
        loss_objectness, loss_rpn_box_reg = self.compute_loss(
            objectness, pred_bbox_deltas, labels, regression_targets
        )
        losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}

        self.last_samples = self.positive_samples(
            anchors,
            objectness.view(num_images, -1),
            pred_bbox_deltas.view(num_images, -1, 4),
            matched_gt,
            targets,
        )
        if self.crowd_loss_fn is not None:
            for name, value in self.crowd_loss_fn(self.last_samples).items():
                losses[rpn_loss_name(name)] = value
        return boxes, losses

    def positive_samples(
        self,
        anchors: list[torch.Tensor],
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        matched_gt: list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]],
    ) -> list[RoiSamples]:
        """Every positive anchor of each image (not only the sampled ones), as :class:`RoiSamples`.

        Args:
            anchors: per image [A, 4].
            objectness: [N, A] logits (with gradient).
            pred_bbox_deltas: [N, A, 4] (with gradient).
            matched_gt: per image [A], GT index or -1.
        """
        samples = []
        for i, anchors_in_image in enumerate(anchors):
            positive = torch.where(matched_gt[i] >= 0)[0]  # [P]
            pos_anchors = anchors_in_image[positive]
            samples.append(
                RoiSamples(
                    proposals=pos_anchors,
                    matched_gt=matched_gt[i][positive],
                    pred_boxes=self.box_coder.decode_single(
                        pred_bbox_deltas[i, positive], pos_anchors
                    ),
                    scores=objectness[i, positive].sigmoid(),
                    gt_boxes=targets[i]["boxes"],
                )
            )
        return samples
