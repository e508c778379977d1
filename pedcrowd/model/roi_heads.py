"""The second stage: torchvision's ``RoIHeads`` with ignore regions and the training-loss seam.

Shapes: N images, P proposals of an image (the RPN's, GT boxes appended), R rows
the box head runs on in training (R_all over the batch), K = 2 classes
(background, pedestrian), G GT boxes and M ignore boxes of an image. ``deltas``
are the box coder's regression outputs ((dx, dy, dw, dh); edge offsets with the KL head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.config import LossConfig
from pedcrowd.losses.criterion import StageCriterion
from pedcrowd.losses.samples import StageSamples
from pedcrowd.losses.standard import SamplerContext
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.model.ignore import exclude_ignored
from pedcrowd.model.kl_head import EdgeBoxCoder, KLBoxPredictor
from pedcrowd.model.postprocess import suppress
from pedcrowd.precision import (
    Float32BoxCoder,
    at_least_float32,
    full_precision,
    same_autocast,
)

PEDESTRIAN = 1  # class index of the pedestrian (0 is background)


class PedRoIHeads(RoIHeads):
    """``RoIHeads`` whose training step honours ignore regions and runs a :class:`StageCriterion`.

    Training: every proposal is assigned (torchvision's matcher); proposals whose
    IoA with an ignore box (``target["ignore_boxes"]``) is >= 0.5 are never trained
    on (negatives always, positives with ``drop_ignored_positives``); the
    criterion's sampler picks the training rows; the box head runs on them and, when
    a term reads every positive proposal (NMS-Loss ``candidates: all``), on the
    other positives too; the criterion turns the resulting :class:`StageSamples`
    into the loss dict.

    Inference (:meth:`detect`, :meth:`postprocess_detections`) follows
    ``self.postprocess`` (a :class:`PostprocessConfig`, set with
    :meth:`set_postprocess`); its default, hard NMS, is torchvision's ``RoIHeads``
    inference op for op. ``box_std_head`` makes the box predictor a
    :class:`KLBoxPredictor` (its third output ``box_log_var`` reaches the losses
    as ``StageSamples.extras``) and the box coder the edge coder; detections then
    carry ``box_std`` [D, 4], each edge's predicted standard deviation in pixels.
    """

    def __init__(
        self,
        *args,
        ignore_ioa_thresh: float = 0.5,
        drop_ignored_positives: bool = True,
        criterion: StageCriterion | None = None,
        box_std_head: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.drop_ignored_positives = drop_ignored_positives
        # None: torchvision's losses (build_model passes the criteria of its loss section)
        self.criterion = criterion if criterion is not None else StageCriterion("roi", LossConfig())
        self.postprocess = PostprocessConfig()
        self.box_coder = Float32BoxCoder.like(self.box_coder)
        if box_std_head:  # the KL layer is drawn after every other weight: those stay the same
            self.box_predictor = KLBoxPredictor(self.box_predictor)
            self.box_coder = EdgeBoxCoder()

    @property
    def has_box_std(self) -> bool:
        """Whether the box predictor has the KL head (per-edge log-variances)."""
        return isinstance(self.box_predictor, KLBoxPredictor)

    def set_postprocess(self, cfg: PostprocessConfig) -> None:
        """Use ``cfg`` at inference from now on.

        Raises:
            PedcrowdError: variance voting asked of a model without the KL head.
        """
        if cfg.var_voting and not self.has_box_std:
            raise PedcrowdError(
                "postprocess.var_voting: this model has no KL box head (box variances); "
                "train one with --box-loss kl, or turn variance voting off"
            )
        self.postprocess = cfg

    def assign_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's assignment with the ignore rule, for every proposal.

        Args:
            proposals: per image [P', 4] RPN proposals.
            targets: per image ``boxes`` [G, 4], ``labels`` [G], optional ``ignore_boxes`` [M, 4].

        Returns:
            proposals: per image [P, 4], the GT boxes appended (torchvision's rule).
            matched_idxs: per image [P] GT index (0 for non-positives: torchvision's clamp).
            labels: per image [P] int64, 1 pedestrian, 0 background, -1 never trained on.
        """
        self.check_targets(targets)
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        labels = [
            exclude_ignored(
                lab, props, t.get("ignore_boxes"), self.ignore_ioa_thresh, self.drop_ignored_positives
            )
            for lab, props, t in zip(labels, proposals, targets, strict=True)
        ]
        return proposals, matched_idxs, labels

    def run_box_head(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Box head on ``proposals``: [R_all, K] logits, [R_all, 4] pedestrian deltas, extras.

        A box predictor may return a third output, a dict of further per-row
        tensors (e.g. ``box_log_var``), passed on as :attr:`StageSamples.extras`.
        """
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        out = self.box_predictor(box_features)
        class_logits, box_regression = out[0], out[1]  # [R_all,K], [R_all,K*4]
        extras = out[2] if len(out) > 2 else {}
        deltas = box_regression.reshape(-1, class_logits.shape[1], 4)[:, PEDESTRIAN]  # [R_all,4]
        return class_logits, deltas, extras

    def stage_samples(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        matched_idxs: list[Tensor],
        labels: list[Tensor],
        rows: list[Tensor],
        sampled: list[Tensor],
        targets: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
    ) -> StageSamples:
        """Runs the box head on ``rows`` (per image indices into its proposals) and
        gathers everything the criterion reads.

        Args:
            sampled: per image [R] bool, which of ``rows`` the sampler chose.
        """
        dtype, device = proposals[0].dtype, proposals[0].device
        props = [p[r] for p, r in zip(proposals, rows, strict=True)]
        class_logits, deltas, extras = self.run_box_head(features, props, image_shapes)
        gt_counts = [t["boxes"].shape[0] for t in targets]
        offsets = torch.tensor([0, *gt_counts[:-1]], device=device).cumsum(0)
        row_labels = [lab[r] for lab, r in zip(labels, rows, strict=True)]
        matched = [
            torch.where(lab > 0, m[r] + off, torch.full_like(lab, -1))
            for lab, m, r, off in zip(row_labels, matched_idxs, rows, offsets, strict=True)
        ]
        matched_boxes = []
        for t, m, r in zip(targets, matched_idxs, rows, strict=True):
            gt = t["boxes"].to(dtype)
            gt = gt if gt.numel() else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_boxes.append(gt[m[r]])
        boxes = torch.cat(props)
        return StageSamples(
            stage="roi",
            boxes=boxes,
            image_index=torch.cat(
                [torch.full((len(r),), i, dtype=torch.long, device=device) for i, r in enumerate(rows)]
            ),
            labels=torch.cat(row_labels),
            matched_gt=torch.cat(matched),
            class_logits=class_logits,
            deltas=deltas,
            target_deltas=self.box_coder.encode_single(torch.cat(matched_boxes), boxes),
            gt_boxes=torch.cat([t["boxes"].to(dtype) for t in targets]),
            gt_image_index=torch.cat(
                [torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(gt_counts)]
            ),
            ignore_boxes=[
                t.get("ignore_boxes", torch.zeros((0, 4), dtype=dtype, device=device)) for t in targets
            ],
            image_sizes=list(image_shapes),
            sampled=torch.cat(sampled),
            box_coder=self.box_coder,
            extras=extras,
        )

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if not self.training:
            return self.detect(features, proposals, image_shapes), {}
        assert targets is not None
        proposals, matched_idxs, labels = self.assign_proposals(proposals, targets)

        network_precision = same_autocast(proposals[0].device.type)

        def score(rows: list[Tensor]) -> StageSamples:  # the box head without gradient (OHEM)
            with torch.no_grad(), network_precision:
                none = [torch.ones(len(r), dtype=torch.bool, device=r.device) for r in rows]
                return self.stage_samples(
                    features, proposals, matched_idxs, labels, rows, none, targets, image_shapes
                ).float32()

        with full_precision(proposals[0].device.type):  # the samplers' NMS and ranks in float32
            chosen = self.criterion.sampler.select(
                SamplerContext(proposals, labels, self.fg_bg_sampler, score)
            )  # per image [S] indices
        rows, sampled = chosen, [torch.ones(len(c), dtype=torch.bool, device=c.device) for c in chosen]
        if self.criterion.needs_all_positives:  # every positive proposal, sampled ones first
            rows, sampled = [], []
            for c, lab in zip(chosen, labels, strict=True):
                extra = torch.ones(lab.shape[0], dtype=torch.bool, device=lab.device)
                extra[c] = False
                extra = torch.where(extra & (lab > 0))[0]
                rows.append(torch.cat([c, extra]))
                sampled.append(torch.cat([torch.ones_like(c, dtype=torch.bool),
                                          torch.zeros_like(extra, dtype=torch.bool)]))
        s = self.stage_samples(
            features, proposals, matched_idxs, labels, rows, sampled, targets, image_shapes
        )
        return [], self.criterion(s)

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
        out = self.box_predictor(box_features)
        class_logits, box_regression = out[0], out[1]  # [R_all,K], [R_all,K*4]
        log_var = out[2]["box_log_var"] if len(out) > 2 else None  # [R_all,4]
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
        with full_precision(class_logits.device.type):  # thresholds, NMS, voting in float32
            return self._postprocess_float32(
                at_least_float32(class_logits), at_least_float32(box_regression), proposals,
                image_shapes, None if box_log_var is None else at_least_float32(box_log_var),
            )

    def _postprocess_float32(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        box_log_var: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
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
