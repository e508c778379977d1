"""Composes the crowd losses into the callables the detector runs in training.

The model calls ``fn(samples)`` with one :class:`RoiSamples` per image (the
RoI head's, or the RPN's when NMS-Loss acts on the RPN) and adds the returned
``{"loss_...": weighted scalar}`` entries to its loss dict, so every term is
logged separately. Composition is a plain dict of loss functions plus a dict
of weights (DETR style): adding a loss touches its file, one entry in
``_TERMS`` and one config field. A zero weight skips the computation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from pedcrowd.losses.config import LossConfig
from pedcrowd.losses.nms_loss import batched_nms_loss
from pedcrowd.losses.repulsion import batched_repulsion_loss
from pedcrowd.model.rpn import CrowdLossFn
from pedcrowd.model.samples import RoiSamples

# Images are batched into one call of the loss core (a few dozen tensor ops for the
# whole batch instead of per image) up to this many positives; the IoU matrices of a
# batch grow with its square, so larger groups (RPN positives) are split.
MAX_BATCHED_POSITIVES = 2048


@dataclass
class Positives:
    """The positives of a group of images, concatenated (GT indices made global)."""

    pred_boxes: Tensor  # [N, 4]
    scores: Tensor  # [N]
    proposals: Tensor  # [N, 4]
    gt_index: Tensor  # [N] into gt_boxes
    gt_boxes: Tensor  # [G, 4]
    image_index: Tensor  # [N] in [0, num_images)
    gt_image_index: Tensor  # [G]
    num_images: int


def gather_positives(samples: list[RoiSamples]) -> Positives:
    """Concatenates the positives (``matched_gt >= 0``) of ``samples``, one per image."""
    device = samples[0].pred_boxes.device
    parts: dict[str, list[Tensor]] = {
        k: [] for k in ("pred", "score", "prop", "gt", "img", "gt_img")
    }
    gt_offset = 0
    for i, s in enumerate(samples):
        pos = s.positive
        num_pos, num_gt = int(pos.sum()), s.gt_boxes.shape[0]
        parts["pred"].append(s.pred_boxes[pos])
        parts["score"].append(s.scores[pos])
        parts["prop"].append(s.proposals[pos])
        parts["gt"].append(s.matched_gt[pos] + gt_offset)
        parts["img"].append(torch.full((num_pos,), i, dtype=torch.long, device=device))
        parts["gt_img"].append(torch.full((num_gt,), i, dtype=torch.long, device=device))
        gt_offset += num_gt
    return Positives(
        pred_boxes=torch.cat(parts["pred"]),
        scores=torch.cat(parts["score"]),
        proposals=torch.cat(parts["prop"]),
        gt_index=torch.cat(parts["gt"]),
        gt_boxes=torch.cat([s.gt_boxes.to(samples[0].pred_boxes.dtype) for s in samples]),
        image_index=torch.cat(parts["img"]),
        gt_image_index=torch.cat(parts["gt_img"]),
        num_images=len(samples),
    )


def image_groups(samples: list[RoiSamples], max_positives: int) -> list[list[RoiSamples]]:
    """Consecutive images grouped so that a group holds at most ``max_positives``
    positives (or is a single image)."""
    groups: list[list[RoiSamples]] = []
    total = max_positives + 1
    for s in samples:
        count = int(s.positive.sum())
        if total + count > max_positives:
            groups.append([])
            total = 0
        groups[-1].append(s)
        total += count
    return groups


def nms_terms(samples: list[RoiSamples], **options: object) -> dict[str, Tensor]:
    """NMS-Loss averaged over the images (each image normalised by its own pair counts).

    Args:
        samples: one per image; only the positives (``matched_gt >= 0``) take part.
        options: keyword options of :func:`pedcrowd.losses.nms_loss`.
    """
    pulls, pushes = [], []
    for group in image_groups(samples, MAX_BATCHED_POSITIVES):
        p = gather_positives(group)
        pull, push = batched_nms_loss(
            p.pred_boxes, p.scores, p.gt_index, p.gt_boxes,
            p.image_index, p.gt_image_index, p.num_images, **options,
        )  # fmt: skip
        pulls.append(pull)
        pushes.append(push)
    return {"nms_pull": torch.cat(pulls).mean(), "nms_push": torch.cat(pushes).mean()}


def rep_terms(samples: list[RoiSamples], **options: object) -> dict[str, Tensor]:
    """Repulsion Loss averaged over the images.

    Args:
        samples: one per image; only the positives take part.
        options: keyword options of :func:`pedcrowd.losses.repulsion_loss`.
    """
    rep_gts, rep_boxes = [], []
    for group in image_groups(samples, MAX_BATCHED_POSITIVES):
        p = gather_positives(group)
        rep_gt, rep_box = batched_repulsion_loss(
            p.pred_boxes, p.proposals, p.gt_index, p.gt_boxes,
            p.image_index, p.gt_image_index, p.num_images, **options,
        )  # fmt: skip
        rep_gts.append(rep_gt)
        rep_boxes.append(rep_box)
    return {"rep_gt": torch.cat(rep_gts).mean(), "rep_box": torch.cat(rep_boxes).mean()}


# name -> (function computing a group of terms, the term names it returns)
_TERMS: dict[str, tuple[Callable[..., dict[str, Tensor]], tuple[str, ...]]] = {
    "nms": (nms_terms, ("nms_pull", "nms_push")),
    "rep": (rep_terms, ("rep_gt", "rep_box")),
}


def weighted_crowd_losses(
    samples: list[RoiSamples],
    loss_fns: dict[str, Callable[[list[RoiSamples]], dict[str, Tensor]]],
    weights: dict[str, float],
) -> dict[str, Tensor]:
    """Runs each loss function and returns ``{"loss_" + term: weight * value}``.

    Args:
        samples: one :class:`RoiSamples` per image.
        loss_fns: name -> function returning a dict of unweighted terms.
        weights: term -> weight; terms with weight 0 are dropped (and a function
            whose terms all weigh 0 should not be in ``loss_fns``).
    """
    losses: dict[str, Tensor] = {}
    for fn in loss_fns.values():
        for term, value in fn(samples).items():
            if weights.get(term, 0.0) != 0.0:
                losses["loss_" + term] = weights[term] * value
    return losses


def _stage_fn(cfg: LossConfig, groups: tuple[str, ...]) -> CrowdLossFn | None:
    weights = {
        "nms_pull": cfg.nms.lambda_pull,
        "nms_push": cfg.nms.lambda_push,
        "rep_gt": cfg.rep.alpha,
        "rep_box": cfg.rep.beta,
    }
    options = {
        "nms": {
            "nms_thresh": cfg.nms.nms_thresh,
            "add_gt": cfg.nms.add_gt,
            "pull_relax": cfg.nms.pull_relax,
            "push_relax": cfg.nms.push_relax,
            "detach_pull_score": cfg.nms.detach_pull_score,
        },
        "rep": {"sigma_gt": cfg.rep.sigma_gt, "sigma_box": cfg.rep.sigma_box},
    }
    loss_fns = {
        name: partial(_TERMS[name][0], **options[name])
        for name in groups
        if any(weights[term] != 0.0 for term in _TERMS[name][1])
    }
    if not loss_fns:
        return None
    return partial(weighted_crowd_losses, loss_fns=loss_fns, weights=weights)


def build_crowd_losses(cfg: LossConfig) -> tuple[CrowdLossFn | None, CrowdLossFn | None]:
    """The crowd-loss callables of the RoI head and of the RPN (None where nothing applies).

    NMS-Loss goes where ``cfg.nms.stage`` says (``roi``: the box head's decoded
    positives, the NMS that decides the output; ``rpn``: the RPN's positive
    proposals, as NMS-Ped does; ``both``); Repulsion Loss acts on the box head.
    Both return ``loss_<term>`` keys (``loss_nms_pull``); the RPN renames its own
    to ``loss_rpn_nms_pull`` (``pedcrowd.model.rpn.rpn_loss_name``).

    Args:
        cfg: the ``loss:`` config section.

    Returns:
        ``(roi_fn, rpn_fn)``, each ``fn(samples: list[RoiSamples]) -> dict[str, Tensor]``.
    """
    roi_groups = ("nms", "rep") if cfg.nms.stage in ("roi", "both") else ("rep",)
    rpn_groups = ("nms",) if cfg.nms.stage in ("rpn", "both") else ()
    return _stage_fn(cfg, roi_groups), _stage_fn(cfg, rpn_groups)
