"""Bootstrap MR^-2 over images, without matching again (docs/evaluation.md section "CityPersons: matching and the miss rate").

Matching is per image, so a resample only changes how often each image counts.
Take the non-ignored detections of a setup in the official global order (stable
sort on -score, :class:`pedcrowd.eval.mr.SetupMatches`); an image drawn c times
puts c copies of each of its detections side by side (they tie on score), and
brings c times its GT count and c times itself to the image count. The curve is
the cumulative TP / FP counts with these weights; the copies of one detection
are c consecutive points, which matters only for the "no point with FPPI <= ref"
case (quirk 1). Only the head of the ranking up to FPPI 1 is accumulated per
resample, which makes 1000 resamples of a 500-image set take about 0.1 s per run
and setup. :func:`bootstrap_mr` is checked against expanding each resample into
real image copies and running the official accumulation (tests/test_compare.py).

Shapes: B = resamples, N = images, D = non-ignored detections of one setup.
"""

from __future__ import annotations

import typing

import numpy as np


class RankedMatches(typing.Protocol):
    """What the resampling reads of a setup's matching outcome
    (:class:`pedcrowd.eval.mr.SetupMatches`, which calls :func:`bootstrap_mr` for
    ``mr(image_counts)`` and so sits above this module)."""

    is_tp: np.ndarray  # [D] bool, official global order
    det_image: np.ndarray  # [D] image index of each detection
    gt_per_image: np.ndarray  # [N] non-ignored GT per image

    @property
    def n_images(self) -> int: ...

    @property
    def refs(self) -> np.ndarray: ...  # [9] FPPI references, "last point with FPPI <= ref"

    @property
    def sentinel_final(self) -> bool: ...


def resample_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each image is drawn in each bootstrap resample of size N.

    Returns:
        [B, N] int32 counts, each row summing to N.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))  # [B, N]
    flat = draws + (np.arange(n_resamples) * n_images)[:, None]  # row-offset so one bincount does all
    return np.bincount(flat.ravel(), minlength=n_resamples * n_images).reshape(
        n_resamples, n_images
    ).astype(np.int32)


def _max_fp_per_ref(refs: np.ndarray, n_images: np.ndarray, max_fp: int) -> np.ndarray:
    """[b, 9] the largest FP count m with m / n_images[row] <= ref, with the official float division."""
    out = np.empty((len(n_images), len(refs)), dtype=np.int64)
    for total in np.unique(n_images):
        fppi = np.arange(max_fp + 1) / float(total) if total else np.full(max_fp + 1, np.inf)
        out[n_images == total] = np.searchsorted(fppi, refs, side="right") - 1
    return out


def bootstrap_mr(m: RankedMatches, counts: np.ndarray, chunk_elems: int = 4_000_000) -> np.ndarray:
    """MR^-2 of one run x setup on every resample.

    Args:
        m: the matching outcome of the setup (``is_tp``, ``det_image``,
            ``gt_per_image``; the protocol gives the FPPI references and the sentinel).
        counts: [B, N] image multiplicities (all ones = the plain MR^-2); the
            image count of a resample is its row sum.
        chunk_elems: resamples are processed in chunks of about this many
            [B, D] elements to bound memory.

    Returns:
        [B] float64 MR^-2; NaN where the resample has no non-ignored GT.
    """
    counts = np.asarray(counts)
    n_res, n_images = counts.shape
    if n_images != m.n_images:
        raise ValueError(f"image counts must have {m.n_images} columns, got {n_images}")
    image = np.asarray(m.det_image, dtype=np.int64)
    tp = np.asarray(m.is_tp, dtype=bool)
    n_gt = counts @ np.asarray(m.gt_per_image, dtype=np.int64)  # [B]
    tp_per_image = np.bincount(image[tp], minlength=n_images)
    total_tp = counts @ tp_per_image  # [B] the final recall's numerator
    fp_img = image[~tp]  # [F]
    tp_img = image[tp]  # [T]
    # TP detections before each FP detection, in the accumulation order.
    tp_before_fp = np.cumsum(tp)[~tp]  # [F]
    max_fp = int(counts.max(initial=0)) * len(fp_img)
    m_ref = _max_fp_per_ref(m.refs, counts.sum(axis=1), max_fp)  # [B, 9]
    recalls = np.empty((n_res, len(m.refs)))
    step = max(1, chunk_elems // max(1, len(image)))
    for a in range(0, n_res, step):
        c = counts[a : a + step]  # [b, N]
        recalls[a : a + step] = _recall_at_refs(
            c, fp_img, tp_img, tp_before_fp, total_tp[a : a + step], m_ref[a : a + step],
            m.sentinel_final,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = recalls / n_gt[:, None]
        # No clamp (section 6.8): a miss rate of 0 gives log -inf and MR 0.
        mr = np.exp(np.mean(np.log(1.0 - recall), axis=1))
    mr[n_gt == 0] = np.nan
    return mr


def _recall_at_refs(
    c: np.ndarray,
    fp_img: np.ndarray,
    tp_img: np.ndarray,
    tp_before_fp: np.ndarray,
    total_tp: np.ndarray,
    m_ref: np.ndarray,
    sentinel_final: bool,
) -> np.ndarray:
    """[b, 9] TP count at the last point with FP <= m_ref[row, r], for the resamples ``c`` [b, N]."""
    b = len(c)
    rows = np.arange(b)
    out = np.empty(m_ref.shape)
    if len(fp_img) == 0:  # no false positive at all: every ref sees the final recall
        out[:] = total_tp[:, None]
        return out
    # Only the head of the ranking matters: once every resample is past its
    # largest FP limit (FPPI 1), later detections change nothing but the final
    # recall, which total_tp already holds. The head is usually a few % of D.
    top = m_ref.max(axis=1)  # [b]
    k = min(len(fp_img), max(256, 4 * (int(top.max()) + 1)))
    while True:
        cum_fp = np.cumsum(c[:, fp_img[:k]], axis=1)  # [b, k]
        if k == len(fp_img) or (cum_fp[:, -1] > top).all():
            break
        k = min(len(fp_img), 2 * k)
    n_tp = int(tp_before_fp[k - 1])
    cum_tp0 = np.zeros((b, n_tp + 1), dtype=np.int64)  # column t: weight of the first t TPs
    np.cumsum(c[:, tp_img[:n_tp]], axis=1, out=cum_tp0[:, 1:])
    tp_at_fp = cum_tp0[:, tp_before_fp[:k]]  # [b, k] TP weight before each FP det
    fp_prev = np.concatenate([np.zeros((b, 1), cum_fp.dtype), cum_fp[:, :-1]], axis=1)
    sentinel = total_tp if sentinel_final else np.zeros_like(total_tp)
    for r in range(m_ref.shape[1]):
        limit = m_ref[:, r]  # [b]
        # The last point with FP <= limit lies just before the first FP det
        # that pushes the count past it (cum_fp is monotone along a row).
        j = (cum_fp <= limit[:, None]).sum(axis=1)  # [b]
        past_end = j == len(fp_img)
        jj = np.minimum(j, k - 1)
        got = np.where(past_end, total_tp, tp_at_fp[rows, jj])
        # No point has FPPI <= ref when nothing drawn precedes that FP det and even its
        # first copy (FP = 1) is past the limit (docs/evaluation.md section "Quirks kept on purpose").
        none_before = (tp_at_fp[rows, jj] == 0) & (fp_prev[rows, jj] == 0) & ~past_end & (limit < 1)
        out[:, r] = np.where(none_before, sentinel, got)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The percentile interval of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)
