"""The ignore-aware RPN and its training-loss seam.

Shapes: N images, A anchors per image (all levels concatenated), G GT boxes
and M ignore boxes of an image.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from pedcrowd.losses.config import LossConfig
from pedcrowd.losses.criterion import StageCriterion
from pedcrowd.losses.samples import StageSamples
from pedcrowd.model.ignore import exclude_ignored
from pedcrowd.precision import Float32BoxCoder


class PedRegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN, with ignore regions and a :class:`StageCriterion` for its losses.

    In training, anchors whose IoA with an ignore box (``target["ignore_boxes"]``,
    [M, 4] xyxy, optional) is >= 0.5 are never sampled as negatives (nor as
    positives with ``drop_ignored_positives``). Every anchor of the batch, with its
    labels, logits and deltas (with gradient), goes to the criterion as one
    :class:`StageSamples` (``sampled`` = torchvision's random sample); its terms are
    the RPN's losses. Inference is torchvision's code path, untouched.
    """

    def __init__(
        self,
        *args,
        ignore_ioa_thresh: float = 0.5,
        drop_ignored_positives: bool = True,
        criterion: StageCriterion | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.box_coder = Float32BoxCoder.like(self.box_coder)  # proposals in float32 under autocast
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.drop_ignored_positives = drop_ignored_positives
        # None: torchvision's losses (build_model passes the criteria of its loss section)
        self.criterion = criterion if criterion is not None else StageCriterion("rpn", LossConfig())

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
            labels_in_image = exclude_ignored(
                labels_in_image,
                anchors_in_image,
                target.get("ignore_boxes"),
                self.ignore_ioa_thresh,
                self.drop_ignored_positives,
            )
            labels.append(labels_in_image)
            matched_gt_boxes.append(boxes_in_image)
            matched_gt.append(
                torch.where(labels_in_image > 0, matched_idxs, torch.full_like(matched_idxs, -1))
            )
        return labels, matched_gt_boxes, matched_gt

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
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)  # torchvision's draw, same RNG use
        device, dtype = pred_bbox_deltas.device, pred_bbox_deltas.dtype
        gt_counts = [t["boxes"].shape[0] for t in targets]
        offsets = [0]
        for n in gt_counts[:-1]:
            offsets.append(offsets[-1] + n)
        s = StageSamples(
            stage="rpn",
            boxes=torch.cat(anchors),  # [N*A,4]
            image_index=torch.arange(num_images, device=device).repeat_interleave(
                anchors[0].shape[0]
            ),
            labels=torch.cat(labels).to(torch.long),  # 1 / 0 / -1
            matched_gt=torch.cat(
                [torch.where(m >= 0, m + off, m) for m, off in zip(matched_gt, offsets, strict=True)]
            ),
            class_logits=objectness,  # [N*A,1]
            deltas=pred_bbox_deltas,  # [N*A,4]
            target_deltas=torch.cat(regression_targets),
            gt_boxes=torch.cat([t["boxes"].to(dtype) for t in targets]),
            gt_image_index=torch.cat(
                [torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(gt_counts)]
            ),
            ignore_boxes=[
                t.get("ignore_boxes", torch.zeros((0, 4), dtype=dtype, device=device)) for t in targets
            ],
            image_sizes=list(images.image_sizes),
            sampled=(torch.cat(sampled_pos) | torch.cat(sampled_neg)).bool(),  # torchvision: uint8
            box_coder=self.box_coder,
        )
        return boxes, self.criterion(s)
