"""Greedy detection-to-GT matching of the official evaluators, vectorised over all images.

The official code (CityPersons ``evaluateImg``, Caltech ``bbGt evalRes``) walks
the detections of each image in score order; each takes the unmatched regular
GT with the highest IoU >= 0.5 (ties: the later GT), else is absorbed by an
ignored GT with IoA >= 0.5 (then it is itself ignored), else is a false
positive. Only the first step is order dependent, and only among detections
that share a candidate GT, so it is done in rounds: a detection's current best
candidate is final as soon as no earlier unresolved detection of the image can
still take that GT. The earliest unresolved detection of every image is always
final, so the rounds terminate; in practice there are a handful.

Shapes: N detections (all images, image-major, score-sorted within an image),
M GT boxes (all images), P (detection, GT) pairs of the same image that overlap
enough to matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLD = 0.5  # the official min(0.5, 1 - 1e-10)


@dataclass
class OverlapPairs:
    """Overlaps of every same-image (detection, GT) pair that reaches the threshold.

    Attributes:
        det: [P] detection index; gt: [P] GT index.
        iou: [P] IoU (regular GT); ioa: [P] intersection / detection area (ignored GT).
    """

    det: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    ioa: np.ndarray


def same_image_pairs(det_img: np.ndarray, gt_img: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """All (det, gt) index pairs of the same image.

    Args:
        det_img: [N] image index of each detection, non-decreasing.
        gt_img: [M] image index of each GT, non-decreasing.
    """
    ng = np.bincount(gt_img, minlength=n_images)
    gt_start = np.concatenate([[0], np.cumsum(ng)[:-1]]).astype(np.int64)
    return expand_ranges(gt_start[det_img], ng[det_img], np.arange(len(gt_img)))


def expand_ranges(lo: np.ndarray, count: np.ndarray, gt_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (d, gt_index[lo[d] + k]) for k < count[d] (int64 arrays).

    Two sequential ``repeat`` passes instead of gathers by ``d``, in int32
    while every index fits (about 8x faster than gathering int64 at 3.7M pairs).
    """
    total = int(count.sum())
    it = np.int32 if max(total, len(lo), len(gt_index)) < 2**31 - 1 else np.int64
    count = count.astype(it, copy=False)
    first = np.cumsum(count, dtype=np.int64) - count
    pd = np.repeat(np.arange(len(lo), dtype=it), count)
    pos = np.repeat((lo - first).astype(it), count) + np.arange(total, dtype=it)
    return pd.astype(np.int64), np.asarray(gt_index, dtype=np.int64)[pos]


_KEY_SCALE = 1e6  # image index * scale + x: a sortable key while |x| < scale / 4


def x_overlap_ranges(
    det_boxes: np.ndarray,
    det_img: np.ndarray,
    gt_boxes: np.ndarray,
    gt_img: np.ndarray,
    n_images: int,
    min_ioa: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per detection, the GT that may overlap it in x, as a range of a sorted GT order.

    GT are sorted by (image, x1); a GT can only overlap a detection if
    ``det.x1 - max_w(image) < gt.x1 < det.x2``, a contiguous range found by
    binary search. With ``min_ioa`` = f, only GT that may cover more than f
    of the detection's area: their x-overlap must exceed f * det.w, so
    ``det.x1 + f * det.w - max_w < gt.x1 < det.x2 - f * det.w`` (half the
    window at f = 0.5). None for huge or non-finite coordinates (no sortable key).

    Returns:
        (lo [N], count [N], order [M]): detection d may overlap the GT
        ``order[lo[d] : lo[d] + count[d]]`` (see :func:`expand_ranges`).
    """
    coords = np.concatenate([det_boxes[:, [0, 2]].ravel(), gt_boxes[:, [0, 2]].ravel()])
    if len(coords) == 0 or not np.isfinite(coords).all() or np.abs(coords).max() > _KEY_SCALE / 8:
        return None
    order = np.lexsort((gt_boxes[:, 0], gt_img))
    key = gt_img[order] * _KEY_SCALE + gt_boxes[order, 0]
    max_w = np.zeros(n_images)
    np.maximum.at(max_w, gt_img, gt_boxes[:, 2])
    base = det_img * _KEY_SCALE
    x, shrink = det_boxes[:, 0], min_ioa * np.maximum(det_boxes[:, 2], 0)
    # One pixel of margin on both sides keeps the range conservative under rounding.
    lo = np.searchsorted(key, base + x + shrink - max_w[det_img] - 1.0, side="left")
    hi = np.searchsorted(key, base + x + det_boxes[:, 2] - shrink + 1.0, side="right")
    return lo, np.maximum(hi - lo, 0), order


def x_overlap_pairs(
    det_boxes: np.ndarray, det_img: np.ndarray, gt_boxes: np.ndarray, gt_img: np.ndarray, n_images: int
) -> tuple[np.ndarray, np.ndarray]:
    """Same-image (det, gt) pairs that may overlap in x; a superset of the overlapping pairs.

    From :func:`x_overlap_ranges`; all same-image pairs where it has no ranges.
    """
    ranges = x_overlap_ranges(det_boxes, det_img, gt_boxes, gt_img, n_images)
    if ranges is None:
        return same_image_pairs(det_img, gt_img, n_images)
    return expand_ranges(*ranges)


def overlap_pairs(
    det_boxes: np.ndarray, det_img: np.ndarray, gt_boxes: np.ndarray, gt_img: np.ndarray, n_images: int
) -> OverlapPairs:
    """IoU and IoA, with the official arithmetic (xywh, no +1), of pairs where either is >= 0.5.

    Args:
        det_boxes: [N, 4] xywh; gt_boxes: [M, 4] xywh; det_img, gt_img as in :func:`same_image_pairs`.
    """
    pd, pg = x_overlap_pairs(det_boxes, det_img, gt_boxes, gt_img, n_images)
    dx1, dy1, dw, dh = (np.ascontiguousarray(det_boxes[:, k]) for k in range(4))
    gx1, gy1, gw, gh = (np.ascontiguousarray(gt_boxes[:, k]) for k in range(4))
    # Same operations, in the same order, as the official double loop, so
    # that equal overlaps compare equal (tie rules) and values match bit for bit.
    # Widths first: most pairs are disjoint in x, and dropping them early
    # saves most of the work.
    iw = np.minimum((dx1 + dw)[pd], (gx1 + gw)[pg]) - np.maximum(dx1[pd], gx1[pg])
    hit = iw > 0
    pd, pg, iw = pd[hit], pg[hit], iw[hit]
    ih = np.minimum((dy1 + dh)[pd], (gy1 + gh)[pg]) - np.maximum(dy1[pd], gy1[pg])
    hit = ih > 0
    pd, pg, inter = pd[hit], pg[hit], iw[hit] * ih[hit]
    d_area = (dw * dh)[pd]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (d_area + (gw * gh)[pg] - inter)
        ioa = inter / d_area
    keep = (iou >= THRESHOLD) | (ioa >= THRESHOLD)
    return OverlapPairs(pd[keep], pg[keep], iou[keep], ioa[keep])


def _lexsort_within(group: np.ndarray, key: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """``np.lexsort((tie, key, group))``, faster when ``group`` is already non-decreasing.

    Pairs come detection-major from the overlap search, and most detections
    have one pair: only the runs of two or more are sorted (500k detections:
    15 ms instead of 75 ms).
    """
    n = len(group)
    if n < 2 or not (group[1:] >= group[:-1]).all():
        return np.lexsort((tie, key, group))
    run = np.cumsum(np.r_[True, group[1:] != group[:-1]]) - 1
    idx = np.flatnonzero(np.bincount(run)[run] > 1)
    order = np.arange(n)
    order[idx] = idx[np.lexsort((tie[idx], key[idx], group[idx]))]
    return order


def greedy_match(
    pairs: OverlapPairs,
    det_valid: np.ndarray,
    gt_ignore: np.ndarray,
    gt_id_zero: np.ndarray | None = None,
    *,
    strict: bool = False,
    ties: str = "last",
    return_gt: bool = False,
):
    """Match detections to GT as the official evaluators do.

    Args:
        pairs: overlaps from :func:`overlap_pairs`.
        det_valid: [N] bool, detections that take part (cap and height filter passed).
        gt_ignore: [M] bool, ignored GT for this setup.
        gt_id_zero: [M] bool, regular GT whose annotation id is 0. The official
            CityPersons code records a match as the GT's id and reads 0 as
            "unmatched", so such a GT takes its detection but the detection
            counts as a false positive (docs/evaluation.md section "Quirks kept on purpose").
        strict: overlaps must exceed the threshold (``> 0.5``, CrowdDet)
            instead of reaching it (``>= 0.5``, CityPersons and Caltech).
        ties: which GT an IoU tie goes to: ``last`` (the later GT, the official
            ``ov < best: continue``) or ``first`` (CrowdDet's ``overlap > maxiou``).
        return_gt: also return the GT index each true positive took.

    Returns:
        tp [N] bool (matched to a regular GT), ignored [N] bool (matched to an
        ignored GT); valid detections with neither are false positives. With
        ``return_gt``, a third array [N] int64: the GT each true positive took, else -1.
    """
    if ties not in ("last", "first"):
        raise ValueError(f"ties must be 'last' or 'first', got {ties!r}")
    n = len(det_valid)
    ok = det_valid[pairs.det]
    ign = gt_ignore[pairs.gt]
    ignored_hit = np.zeros(n, dtype=bool)
    reaches = np.greater if strict else np.greater_equal
    ignored_hit[pairs.det[ok & ign & reaches(pairs.ioa, THRESHOLD)]] = True

    reg = ok & ~ign & reaches(pairs.iou, THRESHOLD)
    pd, pg, ov = pairs.det[reg], pairs.gt[reg], pairs.iou[reg]
    # Within a detection, its pairs sorted by (IoU, GT order): the last active
    # pair is its choice (ties go to the later GT, as `ov < best: continue` does;
    # with ties="first" the GT order is reversed so the earlier GT comes last).
    order = _lexsort_within(pd, ov, pg if ties == "last" else -pg)
    pd, pg = pd[order], pg[order]
    tp = np.zeros(n, dtype=bool)
    taken = np.full(n, -1, dtype=np.int64)  # the GT each true positive took
    det_done = np.zeros(n, dtype=bool)
    gt_used = np.zeros(len(gt_ignore), dtype=bool)
    active = np.ones(len(pd), dtype=bool)
    while active.any():
        idx = np.flatnonzero(active)
        d, g = pd[idx], pg[idx]
        last = np.r_[d[1:] != d[:-1], True]
        choice_det, choice_gt = d[last], g[last]
        # idx is ordered by detection, so the first occurrence of a GT is the
        # earliest unresolved detection that can still take it.
        ug, first = np.unique(g, return_index=True)
        earliest = np.empty(len(gt_ignore), dtype=np.int64)
        earliest[ug] = d[first]
        final = earliest[choice_gt] == choice_det
        tp[choice_det[final]] = True
        taken[choice_det[final]] = choice_gt[final]
        det_done[choice_det[final]] = True
        gt_used[choice_gt[final]] = True
        active[idx] = ~(det_done[d] | gt_used[g])
    ignored = ignored_hit & ~tp
    if gt_id_zero is not None and gt_id_zero.any():
        tp[tp] = ~gt_id_zero[taken[tp]]
        taken[~tp] = -1
    return (tp, ignored, taken) if return_gt else (tp, ignored)


@dataclass
class MatchDetails:
    """Every detection's matching outcome for one setup, for error analysis (``pedcrowd analyze``).

    Detections are in the evaluator's order (image-major, score descending
    within an image); GT in record order.

    Attributes:
        image_ids: [I] record id of each image index.
        det_img: [D] image index; det_src: [D] position of the detection in its
            image's input arrays; det_scores: [D]; det_boxes: [D, 4] ``xywh`` as
            matched (Caltech: resized, CrowdHuman: clipped).
        valid: [D] bool, takes part (cap and height filter passed);
        tp, ignored: [D] bool; taken: [D] the GT index a true positive took, else -1.
        gt_img: [M]; gt_boxes: [M, 4] ``xywh`` as matched; gt_ignore: [M] bool.
        strict: overlaps must exceed (True) or reach (False) :data:`THRESHOLD`.
        matches: the setup's :class:`pedcrowd.eval.mr.SetupMatches` (MR^-2, curve).
    """

    image_ids: np.ndarray
    det_img: np.ndarray
    det_src: np.ndarray
    det_scores: np.ndarray
    det_boxes: np.ndarray
    valid: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    taken: np.ndarray
    gt_img: np.ndarray
    gt_boxes: np.ndarray
    gt_ignore: np.ndarray
    strict: bool
    matches: object


def source_positions(det_img: np.ndarray, order: np.ndarray) -> np.ndarray:
    """[D] each sorted detection's position in its image's input arrays.

    Args:
        det_img: [D] image index of the sorted detections (non-decreasing).
        order: [D] the sort: sorted position -> position in the image-major concatenation.
    """
    if len(order) == 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.bincount(det_img)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order - starts[det_img]
