"""The second stage: torchvision's ``RoIHeads`` with ignore regions and the crowd-loss seam.

Shapes: N images, R sampled proposals of an image (R_all over the batch),
K = 2 classes (background, pedestrian), G GT boxes and M ignore boxes of an
image. ``deltas`` are the box coder's (dx, dy, dw, dh) regression outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import boxes as box_ops

from pedcrowd.errors import PedcrowdError
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.model.ignore import exclude_ignored_negatives
from pedcrowd.model.kl_head import EdgeBoxCoder, build_std_predictor
from pedcrowd.model.postprocess import suppress
from pedcrowd.model.rpn import CrowdLossFn
from pedcrowd.model.samples import RoiSamples

PEDESTRIAN = 1  # class index of the pedestrian (0 is background)


class PedRoIHeads(RoIHeads):
    """``RoIHeads`` whose training step ignores ignore regions and feeds the crowd losses.

    Training: proposals whose IoA with an ignore box (``target["ignore_boxes"]``)
    is >= 0.5 are not sampled as negatives; one :class:`RoiSamples` per image is
    built from the sampled proposals and kept in ``last_samples``; if
    ``crowd_loss_fn`` is set, its terms are added to the loss dict.

    Inference (:meth:`postprocess_detections`) follows ``self.postprocess``
    (a :class:`PostprocessConfig`; set it with :meth:`set_postprocess`); its
    default, hard NMS, is torchvision's ``RoIHeads`` inference op for op.
    ``box_std_head`` adds the KL-Loss head (:mod:`pedcrowd.model.kl_head`):
    ``box_std_predictor`` and the edge box coder; detections then carry
    ``box_std`` [D, 4], the predicted standard deviation of each edge in pixels.
    """

    crowd_loss_fn: CrowdLossFn | None = None

    def __init__(
        self, *args, ignore_ioa_thresh: float = 0.5, box_std_head: bool = False, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.crowd_loss_fn = None
        self.last_samples: list[RoiSamples] = []
        self.postprocess = PostprocessConfig()
        self.box_std_predictor: torch.nn.Linear | None = None
        if box_std_head:
            self.box_coder = EdgeBoxCoder()
            self.box_std_predictor = build_std_predictor(self.box_predictor.bbox_pred.in_features)

    def set_postprocess(self, cfg: PostprocessConfig) -> None:
        """Use ``cfg`` at inference from now on.

        Raises:
            PedcrowdError: variance voting asked of a model without the KL head.
        """
        if cfg.var_voting and self.box_std_predictor is None:
            raise PedcrowdError(
                "postprocess.var_voting: this model has no KL box head (box variances); "
                "train one with --box-loss kl, or turn variance voting off"
            )
        self.postprocess = cfg

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
            return self.detect(features, proposals, image_shapes), {}

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

    # ------------------------------------------------------------------ inference

    def detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Per image ``boxes`` [D, 4], ``labels`` [D], ``scores`` [D] (+ ``box_std`` [D, 4]).

        The same modules in the same order as ``RoIHeads.forward`` at inference.
        """
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        log_var = (
            self.box_std_predictor(box_features) if self.box_std_predictor is not None else None
        )
        boxes, scores, labels, stds = self.postprocess_detections(
            class_logits, box_regression, proposals, image_shapes, box_log_var=log_var
        )
        result = []
        for i in range(len(boxes)):
            out = {"boxes": boxes[i], "labels": labels[i], "scores": scores[i]}
            if stds[i] is not None:
                out["box_std"] = stds[i]
            result.append(out)
        return result

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        box_log_var: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
        """Scored boxes -> detections, as ``self.postprocess`` says.

        torchvision's steps (decode, clip, drop the background column, score
        threshold, remove empty boxes), then hard NMS with ``batched_nms`` exactly
        as torchvision (the default), or :func:`pedcrowd.model.postprocess.suppress`.

        Args:
            class_logits: [R_all, K]. box_regression: [R_all, K * 4].
            proposals: per image [R, 4]. image_shapes: per image (h, w).
            box_log_var: [R_all, 4] the KL head's alpha of the pedestrian box, or None.

        Returns:
            Per image boxes [D, 4], scores [D], labels [D] and box_std [D, 4]
            (pixels of the network input; None without the KL head).
        """
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        cfg = self.postprocess

        boxes_per_image = [boxes_in_image.shape[0] for boxes_in_image in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        pred_boxes_list = pred_boxes.split(boxes_per_image, 0)
        pred_scores_list = pred_scores.split(boxes_per_image, 0)
        if box_log_var is not None:
            # one foreground class: candidate row i below is proposal i
            std_list = self.box_coder.std_pixels(box_log_var, torch.cat(proposals)).split(
                boxes_per_image, 0
            )
            var_list = torch.exp(box_log_var).split(boxes_per_image, 0)
        else:
            std_list = var_list = [None] * len(proposals)

        all_boxes, all_scores, all_labels, all_stds = [], [], [], []
        for boxes, scores, image_shape, stds, variances in zip(
            pred_boxes_list, pred_scores_list, image_shapes, std_list, var_list, strict=True
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=device)
            labels = labels.view(1, -1).expand_as(scores)
            # remove predictions with the background label
            boxes = boxes[:, 1:]
            scores = scores[:, 1:]
            labels = labels[:, 1:]
            boxes = boxes.reshape(-1, 4)
            scores = scores.reshape(-1)
            labels = labels.reshape(-1)
            # remove low scoring boxes, then empty ones
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
            small = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[small], scores[small], labels[small]
            rows = inds[small]
            if cfg.nms == "hard" and not cfg.var_voting:
                keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)
                keep = keep[: self.detections_per_img]
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            else:
                keep, scores, boxes = suppress(
                    boxes, scores, cfg, nms_thresh=self.nms_thresh,
                    max_det=self.detections_per_img,
                    variances=variances[rows] if variances is not None else None,
                )
                labels = labels[keep]
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_labels.append(labels)
            all_stds.append(stds[rows[keep]] if stds is not None else None)
        return all_boxes, all_scores, all_labels, all_stds
