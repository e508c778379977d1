"""Second-stage post-processing: hard NMS, soft-NMS and variance voting (Softer-NMS).

Soft-NMS: Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of
Code" (ICCV 2017). Variance voting: He et al., "Bounding Box Regression with
Uncertainty for Accurate Object Detection" (CVPR 2019), official code
yihui-he/KL-Loss (``detectron/utils/py_cpu_nms.py:soft``,
``detectron/utils/cython_nms.pyx:soft_nms``).

Shapes: N candidate boxes of one image (after the score threshold), D kept
detections (D <= ``max_det``). ``boxes`` are ``xyxy`` in the network's input
pixels; ``variances`` are the KL head's sigma^2 = exp(alpha) per box edge
(x1, y1, x2, y2), in the box coder's normalised units (the official code
votes with them, not with pixel variances).

The greedy procedure, as the official code runs it: repeatedly take the
highest-scoring remaining box (ties: the lowest index), with variance voting
replace its coordinates by the weighted mean of the remaining boxes around it
(itself included; ``w_j = p_j / sigma_j^2``, ``p_j = exp(-(1 - IoU)^2 / sigma_t)``),
then lower the scores of the remaining boxes that overlap it (IoU > 0, always
with the original, unvoted coordinates) and drop those below ``score_floor``:

* ``hard``: score -> 0 where IoU > N_t (plain NMS),
* ``soft-linear``: score *= 1 - IoU where IoU > N_t,
* ``soft-gaussian``: score *= exp(-IoU^2 / sigma).

Neighbourhood of the vote: IoU > 0.01 (``official``: the code's ``STD_TH``,
forced to 0.01 for its ``stdiou`` method) or IoU > N_t (``nt``, the seed
write-up's rule). Differences from the official code, on purpose: IoU without
its legacy ``+ 1`` pixel, and each edge votes with its own variance (the
official XYXY path pairs variance columns (l, r, d, u) with coordinates
(x1, y1, x2, y2)).

Selected scores never increase along the selection order, so the first
``max_det`` selections are exactly the ``max_det`` best final detections: the
soft-NMS loop runs at most ``max_det`` steps of O(N) tensor operations, never
one step per candidate. Variance voting needs no loop at all (:func:`vote`
rebuilds afterwards which boxes were still there at each selection).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import nms

from pedcrowd.model.config import PostprocessConfig
from pedcrowd.precision import at_least_float32, full_precision

OFFICIAL_VOTE_IOU = 0.01  # KL-Loss STD_TH for the stdiou method
_LOG2E = 1.4426950408889634  # log2(e)


def vote_iou_threshold(cfg: PostprocessConfig, nms_thresh: float) -> float:
    """The IoU above which a box joins a vote: 0.01 (official) or N_t (``nt``)."""
    return OFFICIAL_VOTE_IOU if cfg.vote_neighbours == "official" else float(nms_thresh)


def greedy_suppress(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    *,
    method: str,
    nms_thresh: float,
    sigma: float = 0.5,
    score_floor: float = 0.001,
    max_det: int = 100,
    early_exit: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (or hard NMS) in the official greedy order, at most ``max_det`` steps.

    Each step is a handful of O(N) tensor operations (argmax, one IoU row,
    the decay, the floor); on the CPU the loop ends as soon as no box is left,
    on a GPU it runs on masked, without a host sync per step.

    Args:
        boxes: [N, 4] xyxy. scores: [N].
        method: ``hard``, ``soft-linear`` or ``soft-gaussian``.
        nms_thresh: N_t (hard and linear; the Gaussian kernel has none).
        sigma: the Gaussian kernel's sigma.
        score_floor: boxes whose decayed score falls below this are dropped.
        max_det: at most this many detections (the first selections).
        early_exit: stop as soon as no box is left (one host sync per step); None:
            on the CPU only. Without it the loop runs ``max_det`` masked steps.

    Returns:
        keep [D] int64 indices into ``boxes`` in selection order and their
        scores [D] after decay.
    """
    if method not in ("hard", "soft-linear", "soft-gaussian"):
        raise ValueError(f"unknown suppression method {method!r}")
    n = boxes.shape[0]
    device = boxes.device
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    dead = float("-inf")
    current = scores.clone()  # decayed scores, -inf once selected or dropped
    steps = min(max_det, n)
    keep = torch.zeros(steps, dtype=torch.int64, device=device)
    kept_scores = torch.zeros(steps, dtype=scores.dtype, device=device)
    if early_exit is None:
        early_exit = device.type == "cpu"
    for t in range(steps):
        i = torch.argmax(current)  # first maximum on ties
        if early_exit and current[i].item() == dead:  # nothing left
            keep, kept_scores = keep[:t], kept_scores[:t]
            break
        keep[t], kept_scores[t] = i, current[i]
        current[i] = dead
        iw = (torch.minimum(x2, x2[i]) - torch.maximum(x1, x1[i])).clamp_(min=0)
        ih = (torch.minimum(y2, y2[i]) - torch.maximum(y1, y1[i])).clamp_(min=0)
        inter = iw.mul_(ih)
        iou = inter / (areas - inter + areas[i])  # [N]
        touched = iou > 0  # only overlapping boxes decay, and only they may drop
        if method == "hard":
            current.masked_fill_(iou > nms_thresh, dead)
            continue
        if method == "soft-linear":
            # never exactly 0 (IoU 1): -inf * 0 would be NaN; 1e-30 is below any floor
            factor = torch.where(iou > nms_thresh, (1 - iou).clamp_(min=1e-30), 1.0)
        else:
            factor = torch.exp(iou.mul_(iou).mul_(-1.0 / sigma))
        current.mul_(factor)  # IoU 0: factor 1; dead boxes stay -inf
        current.masked_fill_((current < score_floor) & touched, dead)
    valid = kept_scores > dead  # a GPU run past the last box selected dead ones
    return keep[valid], kept_scores[valid]


def vote(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    keep: torch.Tensor,
    variances: torch.Tensor,
    *,
    method: str,
    nms_thresh: float,
    sigma: float = 0.5,
    score_floor: float = 0.001,
    sigma_t: float = 0.01,
    vote_iou: float = OFFICIAL_VOTE_IOU,
) -> torch.Tensor:
    """Variance voting for the selections ``keep`` of any suppression, without a loop.

    The official code votes inside the greedy loop, over the boxes still
    there when a box is selected. Here that set is rebuilt afterwards: box j
    leaves at selection t when j itself is selected at t, or when t decays it
    below the floor (hard: IoU > N_t); j votes in selection k iff it has not
    left at any t < k and IoU > ``vote_iou``: one max-reduction over the
    [D, N] matrix finds the first selection each box leaves at (soft-NMS's
    decayed scores are a cumulative sum of log factors down the selections),
    then one [D, N] x [N, 8] product gives the weighted sums and the weights.
    Vote weights below exp(-80) (a float32 denormal is slow) become exp(-80);
    next to a box's own weight 1 they are nothing either way. About 25
    elementwise passes over [D, N] in all.

    Args:
        boxes: [N, 4]; scores: [N] before suppression; variances: [N, 4].
        keep: [D] selections in the order they were made (score descending).
        method, nms_thresh, sigma, score_floor: as the suppression that made ``keep``.

    Returns:
        voted boxes [D, 4].
    """
    d = keep.shape[0]
    if d == 0:
        return boxes.new_zeros((0, 4))
    positions = torch.arange(d, device=boxes.device)
    cols = boxes.t().contiguous()  # [4, N]: contiguous operands keep the [D, N] passes vectorised
    kc = cols[:, keep]  # [4, D]
    # x and y overlaps in one pass each: [2, D, N]
    lo = torch.maximum(kc[:2, :, None], cols[:2, None, :])
    wh = torch.minimum(kc[2:, :, None], cols[2:, None, :]).sub_(lo).clamp_(min=0)
    inter = wh[0].mul_(wh[1])  # [D,N]
    areas = (cols[2] - cols[0]) * (cols[3] - cols[1])  # [N]
    iou = inter.div_(torch.add(areas[keep, None], areas).sub_(inter))  # [D,N]
    rank = torch.arange(d, 0, -1, device=boxes.device, dtype=iou.dtype)[:, None]  # [D,1] D - k
    # Masks are 0/1 floats (bool masks cost a dtype conversion per use).
    if method == "hard":
        leaves = torch.threshold(iou, nms_thresh, 0.0).ceil_()  # [D,N] 1: selection t suppresses j
    else:
        step = lambda x: x.sign_().clamp_(min=0)  # noqa: E731  (in place; exact: 1 iff x > 0)
        if method == "soft-linear":
            log_f = torch.log1p(-iou.clamp(max=1 - 1e-7)).mul_(step(iou - nms_thresh))
        else:
            log_f = iou * iou * (-1.0 / sigma)
        if score_floor > 0:
            log_score = torch.log(scores) + log_f.cumsum_(0)  # [D,N] j's score after selection t
            # 1: dropped by t (below the floor; only touched boxes, IoU > 0, drop)
            leaves = step(log_score.sub_(math.log(score_floor)).neg_()).mul_(iou.sign())
        else:
            leaves = torch.zeros_like(iou)  # no floor: nothing drops
    # j is still there at selection k iff k <= the first selection at which it
    # leaves, i.e. rank_k >= the largest rank_t among the selections t it leaves
    # at (a max down dim 0 is vectorised; a cumsum or a min over integer rows is
    # 5-20x slower). A selected box leaves at its own selection.
    leaves.mul_(rank)
    leaves[positions, keep] = rank[:, 0]
    member = (rank + 1 - leaves.amax(0)).clamp_(0, 1)  # [D,N] 1: still there (integers)
    # Non-neighbours (IoU <= vote_iou) get a sentinel IoU whose weight is exactly 0
    # ((1e30 - 1)^2 overflows to inf); the floor IoU keeps the smallest weight at
    # exp(-80) (a float32 denormal is slow). exp(x) is computed as exp2(x log2 e):
    # torch's CPU exp2 is 4x faster than its exp.
    floor_iou = 1.0 - math.sqrt(80.0 * sigma_t)
    near = torch.threshold_(iou, vote_iou, 1e30).clamp_(min=floor_iou)
    p = near.sub_(1).square_().mul_(-_LOG2E / sigma_t).exp2_().mul_(member)
    p[positions, keep] = 1.0  # a box always votes for itself, with weight 1
    inv = variances.reciprocal()  # [N,4]
    # Numerators and denominators in one product, [8, N] x [N, D] (the transposed
    # form of [D, N] x [N, 8], which is 3x faster on the CPU).
    sums = torch.mm(torch.cat([boxes * inv, inv], 1).t(), p.t()).t()  # [D,8]
    return sums[:, :4] / sums[:, 4:]


def suppress(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    cfg: PostprocessConfig,
    *,
    nms_thresh: float,
    max_det: int,
    variances: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's suppression as ``cfg`` says, then variance voting if asked.

    Hard NMS is torchvision's ``nms`` (the RoI heads call ``batched_nms``
    themselves when nothing else is asked, to stay bit-identical).

    Args:
        boxes: [N, 4] clipped, non-empty candidates above the score threshold.
        scores: [N]. variances: [N, 4] (needed when ``cfg.var_voting``).

    Returns:
        keep [D] indices into the candidates, scores [D], boxes [D, 4], in float32 also
        under autocast (half-precision inputs are cast; the IoUs, exponentials, sort and
        the voting product run with autocast off: :mod:`pedcrowd.precision`).
    """
    with full_precision(boxes.device.type):
        return _suppress(
            at_least_float32(boxes), at_least_float32(scores), cfg, nms_thresh=nms_thresh,
            max_det=max_det, variances=None if variances is None else at_least_float32(variances),
        )


def _suppress(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    cfg: PostprocessConfig,
    *,
    nms_thresh: float,
    max_det: int,
    variances: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if cfg.var_voting and variances is None:
        raise ValueError("variance voting needs the variances of the KL head")
    if cfg.nms == "hard":
        keep = nms(boxes, scores, nms_thresh)[:max_det]
        kept_scores = scores[keep]
    else:
        keep, kept_scores = greedy_suppress(
            boxes, scores, method=cfg.nms, nms_thresh=nms_thresh, sigma=cfg.soft_sigma,
            score_floor=cfg.score_floor, max_det=max_det,
        )
    if not cfg.var_voting:
        return keep, kept_scores, boxes[keep]
    voted = vote(
        boxes, scores, keep, variances, method=cfg.nms, nms_thresh=nms_thresh,
        sigma=cfg.soft_sigma, score_floor=cfg.score_floor, sigma_t=cfg.sigma_t,
        vote_iou=vote_iou_threshold(cfg, nms_thresh),
    )
    return keep, kept_scores, voted
