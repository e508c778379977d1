"""NMS-Loss as a plain greedy NMS loop: the reference of ``pedcrowd.losses.nms_loss``.

What it re-implements: the loss of "NMS-Loss: Learning with Non-Maximum
Suppression for Crowded Pedestrian Detection" (Luo et al., ICMR 2021) as the
official release computes it, by running greedy NMS over the image's positive
predictions (and, with ``add_gt``, its GT boxes at score 1) one box at a time:
a kept box whose person already has a kept box is pulled towards that box (FP
rule); a box of another person that the kept box suppresses, although the two
overlap more than their GT boxes do, is pushed away (FN rule and crowd rule).
Ties keep index order, as a stable sort does; the options are those of
``nms_loss`` (relaxed logs, which side the pull gradient moves).

Written straight from those rules with no shared code, and slow on purpose: the
vectorised ``nms_loss`` must equal it in values and gradients
(``tests/test_nms_loss.py``); ``scripts/bench_losses.py`` times one against the
other.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of two [4] xyxy boxes, continuous convention (no +1)."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = w * h
    union = area_a + area_b - inter
    if float(union.detach()) <= 0:
        return inter * 0
    return inter / union


def greedy_nms_loss(
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
    """Same signature and result as ``pedcrowd.losses.nms_loss``."""
    zero = pred_boxes.sum() * 0.0 + scores.sum() * 0.0
    if len(pred_boxes) <= 1:
        return zero, zero
    boxes = list(pred_boxes)
    box_scores = list(scores)
    box_gt = [int(g) for g in gt_index]
    if add_gt:
        for j, gt in enumerate(gt_boxes.to(pred_boxes.dtype)):
            boxes.append(gt)
            box_scores.append(scores.new_tensor(1.0))
            box_gt.append(j)

    # Stable descending: Python's sort is stable, so equal scores keep index order.
    remaining = sorted(range(len(boxes)), key=lambda i: -float(box_scores[i].detach()))
    kept_of_person: dict[int, int] = {}
    pull_losses: list[Tensor] = []
    push_means: list[Tensor] = []
    num_push = 0
    while remaining:
        m = remaining.pop(0)
        g_m = box_gt[m]
        if g_m in kept_of_person:  # FP rule
            b_max = boxes[kept_of_person[g_m]]
            if pull_grad == "dup":  # the gradient moves the duplicate
                iou = _iou(b_max.detach(), boxes[m]).clamp(min=1e-6)
            else:  # "max": the duplicate is the detached side (official Caltech)
                iou = _iou(b_max, boxes[m].detach()).clamp(min=1e-6)
            loss = -torch.log(1 - nms_thresh + iou) if pull_relax else -torch.log(iou)
            score = box_scores[m].detach() if detach_pull_score else box_scores[m]
            pull_losses.append(loss * score)
        else:
            kept_of_person[g_m] = m
        survivors, pushes = [], []
        for i in remaining:
            iou = _iou(boxes[m].detach(), boxes[i])
            if float(iou.detach()) <= nms_thresh:
                survivors.append(i)
                continue
            g_i = box_gt[i]
            gt_overlap = _iou(gt_boxes[g_m], gt_boxes[g_i])
            if g_i != g_m and float(iou.detach()) > float(gt_overlap):  # FN rule + crowd rule
                iou = iou.clamp(max=1 - 1e-6)
                loss = -torch.log(1 + nms_thresh - iou) if push_relax else -torch.log(1 - iou)
                pushes.append(loss * box_scores[i].detach())
        remaining = survivors
        if pushes:
            push_means.append(torch.stack(pushes).mean())
            num_push += len(pushes)

    pull = sum(pull_losses, zero) / (len(pull_losses) + 1e-6)
    push = sum(push_means, zero) / (num_push + 1e-6)
    return pull, push
