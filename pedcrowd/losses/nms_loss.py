"""NMS-Loss: Learning with Non-Maximum Suppression for Crowded Pedestrian Detection.

Luo et al., ICMR 2021. The loss simulates greedy NMS on the training
predictions of one image and penalises exactly the two mistakes NMS makes:

* pull (FP rule): a prediction that survives NMS although its person already has
  a kept box ``b_max`` is pulled towards ``b_max``:
  ``-ln(1 - N_t + IoU(sg[b_max], b_m)) * s_m``.
* push (FN rule): a prediction of another person that NMS wrongly removes is
  pushed away from its suppressor ``b_m``: ``-ln(1 - IoU(sg[b_m], b_i)) * sg[s_i]``,
  only when the two predictions overlap more than their ground truths do (crowd
  rule).

The semantics (tie order, normalisation, clamps, the official edge rule) are
those of ``docs/techniques.md`` section "NMS-Loss";
``pedcrowd/reference/greedy_nms_loss.py`` is the plain greedy loop this vectorised form must equal.

Fast exact form (no Python loop over boxes): the greedy keep set is
``torchvision.ops.nms``'s, given strictly decreasing pseudo-scores in our tie
order; a removed box's suppressor is the first kept box ranked before it with
IoU > N_t; a kept box is a duplicate (FP) iff an earlier kept box has its GT,
the first such box being ``b_max``. All of it is masked operations on the
(kept x all) IoU matrix. In the rare case where torchvision's IoU and ours
round differently at exactly IoU = N_t, a box could be dropped from both rules.

Shapes: N = positive predictions of the image, G = its GT boxes, n = N (+ G with
``add_gt``) boxes taking part, K = boxes kept by NMS. Boxes are ``xyxy`` absolute
pixels; IoU is continuous (no +1 pixel, torchvision's convention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image, nms

from pedcrowd.box_torch import box_ioa, box_iou, paired_iou
from pedcrowd.losses import positives

if TYPE_CHECKING:
    from pedcrowd.losses.config import NmsLossConfig
    from pedcrowd.losses.samples import StageSamples

PULL_IOU_MIN = 1e-6  # pull: IoU clamped below (official eps), so -ln(IoU) stays finite
PUSH_IOU_MAX = 1.0 - 1e-6  # push: IoU clamped above; the official code is infinite at IoU = 1
NORM_EPS = 1e-6  # official: L = sum / (count + 1e-6)


def pull_term(iou: Tensor, nms_thresh: float, relax: bool) -> Tensor:
    """Pull loss per pair before the score weight. [P] -> [P].

    ``relax`` (official default) gives ``-ln(1 - N_t + IoU)``, bounded by
    ``-ln(1 - N_t)`` since a surviving duplicate has IoU <= N_t; otherwise the
    paper's ``-ln(IoU)``.
    """
    iou = iou.clamp(min=PULL_IOU_MIN)
    return -torch.log(1.0 - nms_thresh + iou) if relax else -torch.log(iou)


def push_term(iou: Tensor, nms_thresh: float, relax: bool) -> Tensor:
    """Push loss per pair before the score weight. [P] -> [P].

    ``-ln(1 - IoU)`` with IoU clamped to <= 1 - 1e-6 (so at most ~13.8 instead of
    the official code's infinity), or ``-ln(1 + N_t - IoU)`` with ``relax``.
    """
    iou = iou.clamp(max=PUSH_IOU_MAX)
    return -torch.log(1.0 + nms_thresh - iou) if relax else -torch.log(1.0 - iou)


def nms_loss(
    pred_boxes: Tensor,
    scores: Tensor,
    gt_index: Tensor,
    gt_boxes: Tensor,
    *,
    nms_thresh: float = 0.5,
    add_gt: bool = True,
    pull_relax: bool = True,
    push_relax: bool = False,
    detach_pull_score: bool = True,
    pull_grad: str = "dup",
) -> tuple[Tensor, Tensor]:
    """NMS-Loss of one image: the per-image normalised pull and push terms.

    Args:
        pred_boxes: [N, 4] xyxy decoded boxes of the positive predictions (with gradient).
        scores: [N] their pedestrian scores (with gradient).
        gt_index: [N] int64 index into ``gt_boxes`` of each prediction (from its
            proposal's assignment, not from the regressed box).
        gt_boxes: [G, 4] xyxy GT boxes of the image.
        nms_thresh: N_t, the test-time NMS IoU threshold.
        add_gt: append every GT as a prediction with score 1.0 (after the
            predictions in tie order), so the GT becomes its person's ``b_max``.
        pull_relax: ``-ln(1 - N_t + IoU)`` (official) instead of ``-ln(IoU)``.
        push_relax: ``-ln(1 + N_t - IoU)`` instead of ``-ln(1 - IoU)`` (official).
        detach_pull_score: stop the gradient of the FP's score in the pull term
            (CityPersons official); False lets pull also lower the FP's score (Caltech).
        pull_grad: which box of a pull pair the pull IoU moves: ``"dup"`` the
            duplicate ``b_m`` (CityPersons official, the paper), ``"max"`` its
            ``b_max`` (the official Caltech ``NMSLoss`` detaches the duplicate's row;
            with ``add_gt`` b_max is often the fixed GT, then no box gradient at all).

    Returns:
        ``(pull, push)``: scalars, ``sum / (count + 1e-6)`` each, unweighted.
        Zero (still connected to the graph) when N <= 1, the official edge rule.
    """
    num_pred, num_gt = pred_boxes.shape[0], gt_boxes.shape[0]
    pull, push = batched_nms_loss(
        pred_boxes,
        scores,
        gt_index,
        gt_boxes,
        pred_boxes.new_zeros(num_pred, dtype=torch.long),
        pred_boxes.new_zeros(num_gt, dtype=torch.long),
        1,
        nms_thresh=nms_thresh,
        add_gt=add_gt,
        pull_relax=pull_relax,
        push_relax=push_relax,
        detach_pull_score=detach_pull_score,
        pull_grad=pull_grad,
    )
    return pull[0], push[0]


def batched_nms_loss(
    pred_boxes: Tensor,
    scores: Tensor,
    gt_index: Tensor,
    gt_boxes: Tensor,
    image_index: Tensor,
    gt_image_index: Tensor,
    num_images: int,
    *,
    nms_thresh: float = 0.5,
    add_gt: bool = True,
    pull_relax: bool = True,
    push_relax: bool = False,
    detach_pull_score: bool = True,
    pull_grad: str = "dup",
) -> tuple[Tensor, Tensor]:
    """:func:`nms_loss` of several images at once (the same values, fewer tensor ops).

    Images never interact: NMS runs per image and pairs are formed within an image.

    Args:
        pred_boxes, scores: [N, 4], [N] the positives of all images, concatenated.
        gt_index: [N] index into the concatenated ``gt_boxes`` [G, 4].
        image_index: [N] image of each prediction, in [0, num_images).
        gt_image_index: [G] image of each GT box.
        num_images: I.
        nms_thresh, add_gt, pull_relax, push_relax, detach_pull_score, pull_grad: as
            :func:`nms_loss`.

    Returns:
        ``(pull, push)``: [I] each, the per-image terms of :func:`nms_loss`.
    """
    if pred_boxes.dtype in (torch.float16, torch.bfloat16):  # IoUs and logs need float32 (AMP)
        pred_boxes, scores = pred_boxes.float(), scores.float()
    device, dtype = pred_boxes.device, pred_boxes.dtype
    zero = pred_boxes.sum() * 0.0 + scores.sum() * 0.0
    zeros = pred_boxes.new_zeros(num_images) + zero  # [I], connected to the graph

    # Official edge rule: an image with at most one positive contributes zero.
    valid_image = torch.bincount(image_index, minlength=num_images) > 1  # [I]
    take = valid_image[image_index]  # [N]
    boxes, box_scores = pred_boxes[take], scores[take]
    box_gt, box_image = gt_index[take], image_index[take]
    gt_boxes = gt_boxes.to(dtype)
    if add_gt:
        gt_take = valid_image[gt_image_index]  # [G]
        gt_ids = torch.arange(gt_boxes.shape[0], device=device)[gt_take]
        boxes = torch.cat([boxes, gt_boxes[gt_ids]])  # [n,4]
        box_scores = torch.cat([box_scores, box_scores.new_ones(gt_ids.numel())])  # [n]
        box_gt = torch.cat([box_gt, gt_ids])  # [n]
        box_image = torch.cat([box_image, gt_image_index[gt_ids]])  # [n]
    if boxes.shape[0] == 0:
        return zeros, zeros

    # Greedy order: by image, then stable descending score (ties in index order,
    # predictions before GTs since they come first in the concatenation).
    order = torch.sort(box_scores.detach(), descending=True, stable=True).indices  # [n]
    order = order[torch.sort(box_image[order], stable=True).indices]  # [n]
    boxes, box_scores = boxes[order], box_scores[order]
    box_gt, box_image = box_gt[order], box_image[order]
    n = boxes.shape[0]
    rank = torch.arange(n, device=device)  # [n] position in the greedy order

    with torch.no_grad():
        # torchvision's nms with strictly decreasing pseudo-scores returns the greedy
        # keep set for this explicit order (it promises no order among equal scores).
        # One call per image (a loop over images, not boxes) keeps its IoUs those of
        # the untranslated boxes, unlike batched_nms's coordinate offsets.
        rank_score = torch.arange(n, 0, -1, device=device, dtype=dtype)  # [n]
        ends = torch.bincount(box_image, minlength=num_images).cumsum(0).tolist()
        keep = (
            torch.cat(
                [
                    nms(boxes[begin:end], rank_score[begin:end], nms_thresh) + begin
                    for begin, end in zip([0, *ends[:-1]], ends, strict=True)
                    if end > begin
                ]
            )
            .sort()
            .values
        )  # [K] positions, ascending
        kept = torch.zeros(n, dtype=torch.bool, device=device)
        kept[keep] = True
        # Only kept boxes suppress, so only their rows of the IoU matrix are needed.
        iou = box_iou(boxes[keep], boxes)  # [K,n]

        # A removed box's suppressor: the first kept box of its image ranked before it
        # with IoU > N_t.
        overlaps = (
            (iou > nms_thresh)
            & (keep[:, None] < rank[None, :])
            & (box_image[keep][:, None] == box_image[None, :])
        )  # [K,n]
        suppressed = ~kept & overlaps.any(0)  # [n]; every removed box has one
        first_row = overlaps.to(torch.uint8).argmax(0)  # [n] first True row per column
        suppressor = keep[first_row]  # [n] position of the suppressor (valid where suppressed)

        # FN rule + crowd rule: different person, and the predictions overlap more than
        # their ground truths do.
        gt_iou = box_iou(gt_boxes, gt_boxes)  # [G,G]
        push_mask = (
            suppressed
            & (box_gt != box_gt[suppressor])
            & (iou[first_row, rank] > gt_iou[box_gt[suppressor], box_gt])
        )  # [n]
        push_i = rank[push_mask]  # [P] removed boxes
        push_m = suppressor[push_mask]  # [P] their suppressors

        # FP rule: a kept box whose person already has a kept box; b_max is the
        # first (highest-ranked) kept box of that person. GT ids are unique across images.
        first_kept = torch.full((gt_boxes.shape[0],), n, dtype=torch.long, device=device)
        first_kept.scatter_reduce_(0, box_gt[keep], keep, reduce="amin")  # [G]
        pull_mask = kept & (first_kept[box_gt] != rank)  # [n]
        pull_m = rank[pull_mask]  # [Q] unsuppressed duplicates
        pull_max = first_kept[box_gt[pull_m]]  # [Q] their b_max

    # Gradient flows only into one box of each pair: the lower-ranked one, except for
    # pull_grad="max".
    if pull_grad == "dup":
        pull_iou = paired_iou(boxes[pull_max].detach(), boxes[pull_m])  # [Q]
    elif pull_grad == "max":
        pull_iou = paired_iou(boxes[pull_max], boxes[pull_m].detach())  # [Q]
    else:
        raise ValueError(f"pull_grad must be 'dup' or 'max', got {pull_grad!r}")
    pull_score = box_scores[pull_m]
    if detach_pull_score:
        pull_score = pull_score.detach()
    pull_pair = pull_term(pull_iou, nms_thresh, pull_relax) * pull_score  # [Q]
    pull_image = box_image[pull_m]  # [Q]
    pull_count = torch.bincount(pull_image, minlength=num_images).to(dtype)  # [I]
    pull = zeros.index_add(0, pull_image, pull_pair) / (pull_count + NORM_EPS)  # [I]

    push_iou = paired_iou(boxes[push_m].detach(), boxes[push_i])  # [P]
    push_pair = push_term(push_iou, nms_thresh, push_relax) * box_scores[push_i].detach()  # [P]
    # Official: each suppressor contributes the mean over its push pairs; the sum of
    # those means is divided by the number of pairs.
    pairs_per_suppressor = torch.bincount(push_m, minlength=n).to(dtype)  # [n]
    push_image = box_image[push_i]  # [P]
    push_count = torch.bincount(push_image, minlength=num_images).to(dtype)  # [I]
    push_sum = zeros.index_add(0, push_image, push_pair / pairs_per_suppressor[push_m])  # [I]
    return pull, push_sum / (push_count + NORM_EPS)


# ----------------------------------------------------------------------------- the training term


def nms_terms(s: StageSamples, options: NmsLossConfig, state: dict) -> dict[str, Tensor]:
    """The registered term ``nms``: NMS-Loss averaged over the images of a stage's batch.

    RoI head: the positive proposals (every one with ``candidates: all``, the
    sampled ones with ``sampled``) with their second-stage boxes and scores.
    RPN: the official candidate set, :func:`rpn_candidates`.

    Returns:
        ``{"nms_pull": ..., "nms_push": ...}`` unweighted; each image normalised by
        its own pair counts, then the mean over the images.
    """
    p = rpn_candidates(s, options) if s.stage == "rpn" else roi_candidates(s, options)
    pulls, pushes = [], []
    for g in positives.image_groups(p):  # looked up per call: tests bound the group size
        pull, push = batched_nms_loss(
            g.pred_boxes, g.scores, g.gt_index, g.gt_boxes, g.image_index,
            g.gt_image_index, g.num_images,
            nms_thresh=options.nms_thresh, add_gt=options.add_gt,
            pull_relax=options.pull_relax, push_relax=options.push_relax,
            detach_pull_score=options.detach_pull_score, pull_grad=options.pull_grad,
        )  # fmt: skip
        pulls.append(pull)
        pushes.append(push)
    return {"nms_pull": torch.cat(pulls).mean(), "nms_push": torch.cat(pushes).mean()}


def roi_candidates(s: StageSamples, options: NmsLossConfig):
    """The RoI head's positives NMS-Loss sees (``options.candidates``)."""
    return positives.positives_of(s, s.positive if options.candidates == "all" else s.positive & s.sampled)


def rpn_candidates(s: StageSamples, options: NmsLossConfig):
    """The official RPN candidate set (``RPN_NMS_Head`` of the NMS-Loss code).

    Per image: anchors with objectness probability > ``rpn_min_score``; the
    ``rpn_pre_top_n`` best; decoded with gradient and clipped to the image; those
    at least ``rpn_min_height`` px tall; the ``rpn_top_n`` best of them. They are
    assigned by the IoU of their *anchor* with the GT (mmdetection's
    ``MaxIoUAssigner``: positive at IoU >= ``rpn_iou_thresh``, each GT also takes
    the candidates at its own maximum IoU when that is >= the threshold, a
    candidate lying (IoA > 0.5) in an ignore region is dropped); positives take part.

    Differences from the official code, all for pedcrowd's multi-level FPN or its
    conventions: the top-n runs over all levels at once (NMS-Ped has one level,
    where this is the same); heights and IoUs are continuous (no +1 pixel); the
    score is the sigmoid objectness (the official RPN has a 2-class softmax).
    """
    scores = s.scores()  # [N] with gradient
    per_image = torch.bincount(s.image_index, minlength=s.num_images).tolist()
    gt_counts = torch.bincount(s.gt_image_index, minlength=s.num_images).tolist()
    parts: dict[str, list[Tensor]] = {k: [] for k in ("box", "score", "anchor", "gt", "img")}
    begin = 0
    for i, count in enumerate(per_image):
        sc = scores[begin : begin + count].detach()  # [A]
        local = torch.where(sc > options.rpn_min_score)[0]
        local = local[sc[local].topk(min(options.rpn_pre_top_n, local.numel())).indices]
        rows = local + begin  # best first
        begin += count
        boxes = clip_boxes_to_image(
            s.box_coder.decode_single(s.deltas[rows], s.boxes[rows].to(s.deltas.dtype)),
            s.image_sizes[i],
        )  # [C,4]
        tall = (boxes[:, 3] - boxes[:, 1]) >= options.rpn_min_height
        rows, boxes = rows[tall][: options.rpn_top_n], boxes[tall][: options.rpn_top_n]
        g0 = sum(gt_counts[:i])
        gt_boxes = s.gt_boxes[g0 : g0 + gt_counts[i]]
        gt = assign_by_anchor_iou(
            s.boxes[rows], gt_boxes, s.ignore_boxes[i], options.rpn_iou_thresh
        )  # [C] local GT index or -1
        pos = gt >= 0
        parts["box"].append(boxes[pos])
        parts["score"].append(scores[rows[pos]])
        parts["anchor"].append(s.boxes[rows[pos]])
        parts["gt"].append(gt[pos] + g0)
        parts["img"].append(torch.full_like(gt[pos], i))  # [P] int64 (no host read of P)
    return positives.Positives(
        pred_boxes=torch.cat(parts["box"]),
        scores=torch.cat(parts["score"]),
        proposals=torch.cat(parts["anchor"]),
        gt_index=torch.cat(parts["gt"]),
        gt_boxes=s.gt_boxes,
        image_index=torch.cat(parts["img"]),
        gt_image_index=s.gt_image_index,
        num_images=s.num_images,
    )


IGNORE_IOA_THRESH = 0.5  # official ignore_iof_thr: IoA strictly above it is ignored


def assign_by_anchor_iou(
    anchors: Tensor, gt_boxes: Tensor, ignore_boxes: Tensor, iou_thresh: float
) -> Tensor:
    """mmdetection's ``MaxIoUAssigner(pos=neg=min_pos=iou_thresh, ignore_iof_thr=0.5)``.

    Args:
        anchors: [C, 4] the candidates' anchors.
        gt_boxes: [G, 4].
        ignore_boxes: [M, 4].

    Returns:
        [C] int64 GT index of positives, -1 for negatives and ignored candidates.
    """
    num = anchors.shape[0]
    assigned = torch.full((num,), -1, dtype=torch.long, device=anchors.device)
    if num == 0 or gt_boxes.shape[0] == 0:
        return assigned
    iou = box_iou(gt_boxes.to(anchors), anchors)  # [G,C]
    if ignore_boxes.numel():
        ignored = (box_ioa(anchors, ignore_boxes.to(anchors)) > IGNORE_IOA_THRESH).any(1)  # [C]
        iou[:, ignored] = -1.0
    best, best_gt = iou.max(0)  # [C]
    assigned = torch.where(best >= iou_thresh, best_gt, assigned)
    # each GT also takes the candidates at its maximum IoU (the last GT wins a tie)
    gt_best = iou.max(1).values  # [G]
    at_max = (iou == gt_best[:, None]) & (gt_best[:, None] >= iou_thresh)  # [G,C]
    order = torch.arange(1, gt_boxes.shape[0] + 1, device=anchors.device)[:, None]  # [G,1]
    last = (at_max.long() * order).max(0).values  # [C] 1-based, 0 for none
    return torch.where(last > 0, last - 1, assigned)
