"""The second stage: torchvision's ``RoIHeads`` with ignore regions and the training-loss seam.

Shapes: N images, P proposals of an image (the RPN's, GT boxes appended), R rows
the box head runs on in training (R_all over the batch), K = 2 classes
(background, pedestrian), G GT boxes and M ignore boxes of an image. ``deltas``
are the box coder's (dx, dy, dw, dh) regression outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads

from pedcrowd.losses.criterion import StageCriterion, build_criteria
from pedcrowd.losses.standard import SamplerContext
from pedcrowd.model.ignore import exclude_ignored
from pedcrowd.model.samples import StageSamples

PEDESTRIAN = 1  # class index of the pedestrian (0 is background)


class PedRoIHeads(RoIHeads):
    """``RoIHeads`` whose training step honours ignore regions and runs a :class:`StageCriterion`.

    Training: every proposal is assigned (torchvision's matcher); proposals whose
    IoA with an ignore box (``target["ignore_boxes"]``) is >= 0.5 are never trained
    on (negatives always, positives with ``drop_ignored_positives``); the
    criterion's sampler picks the training rows; the box head runs on them and, when
    a term reads every positive proposal (NMS-Loss ``candidates: all``), on the
    other positives too; the criterion turns the resulting :class:`StageSamples`
    into the loss dict. Inference is ``RoIHeads.forward`` itself, so outputs do not
    depend on the seam.
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
        self.ignore_ioa_thresh = ignore_ioa_thresh
        self.drop_ignored_positives = drop_ignored_positives
        self.criterion = criterion if criterion is not None else build_criteria()[1]

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
            return super().forward(features, proposals, image_shapes, targets)
        assert targets is not None
        proposals, matched_idxs, labels = self.assign_proposals(proposals, targets)

        def score(rows: list[Tensor]) -> StageSamples:  # the box head without gradient (OHEM)
            with torch.no_grad():
                none = [torch.ones(len(r), dtype=torch.bool, device=r.device) for r in rows]
                return self.stage_samples(
                    features, proposals, matched_idxs, labels, rows, none, targets, image_shapes
                )

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
