"""Per-setup matching results and the log-average miss rate (MR^-2) computed from them.

:class:`SetupMatches` keeps, for one setup, every non-ignored detection in the
official global order (score descending, stable: ties by image order, then
file order) with its TP flag and image, plus the non-ignored GT count of every
image. MR^-2 and the miss-rate/FPPI curve follow from it; with
``image_counts`` MR^-2 is recomputed for a bootstrap resample (image i drawn
``image_counts[i]`` times) without matching again, by :mod:`pedcrowd.eval.bootstrap`.
:func:`average_precision` is the trapezoid AP of the same outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pedcrowd.eval.bootstrap import bootstrap_mr

# CityPersons eval_MR_multisetup.py hard-codes the references rounded to 4
# decimals; dbEval.m uses the exact 10.^(-2:.25:0).
FPPI_REFS_CITYPERSONS = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
FPPI_REFS_CALTECH = 10.0 ** (np.arange(9) * 0.25 - 2.0)

# How each protocol reads the miss rate off its curve (SetupMatches.refs and
# .sentinel_final say why). They live here, below the matching that builds
# SetupMatches; the protocol registry (pedcrowd.eval.protocols) shows them per protocol.
FPPI_REFS: dict[str, np.ndarray] = {
    "citypersons": FPPI_REFS_CITYPERSONS,
    "caltech": FPPI_REFS_CALTECH,
    "crowdhuman": np.nextafter(FPPI_REFS_CITYPERSONS, -np.inf),
}
SENTINEL_FINAL = frozenset({"citypersons"})


@dataclass
class SetupMatches:
    """Matching outcome of one setup, ready for MR^-2 and bootstrap resampling.

    Attributes:
        name: setup name.
        protocol: ``citypersons`` (Python sentinel quirk, 4-decimal refs), ``caltech``
            or ``crowdhuman`` (CrowdDet: first point with FPPI >= ref, 4-decimal refs).
        scores: [T] scores of the non-ignored detections, official global order.
        is_tp: [T] bool, true positive (else false positive).
        det_image: [T] index (0..n_images-1) of each detection's image.
        gt_per_image: [n_images] number of non-ignored GT in each image.
    """

    name: str
    protocol: str
    scores: np.ndarray
    is_tp: np.ndarray
    det_image: np.ndarray
    gt_per_image: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.gt_per_image)

    @property
    def refs(self) -> np.ndarray:
        """[9] the protocol's FPPI references, as limits of "the last point with FPPI <= ref".

        CrowdDet (``crowdhuman``) reads the miss rate at the *first* point with
        FPPI >= ref (the last point if none). FPPI only grows at false
        positives, which add no TP, so that is the TP count of the last point
        with FPPI < ref, i.e. FPPI <= the float just below ref: the same lookup
        with the references moved down one ulp (it differs from CityPersons
        where ref x N_images is an integer).
        """
        return FPPI_REFS[self.protocol]

    @property
    def sentinel_final(self) -> bool:
        """When no point has FPPI <= ref, CityPersons' Python reads the *final*
        recall (quirk 1); Caltech's ROC starts at recall 0."""
        return self.protocol in SENTINEL_FINAL

    def _fppi_recall(self) -> tuple[np.ndarray, np.ndarray]:
        n_gt, n_img = float(self.gt_per_image.sum()), float(self.n_images)
        tp = np.cumsum(self.is_tp, dtype=np.float64)
        fp = np.cumsum(~self.is_tp, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return fp / n_img, tp / n_gt

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(fppi [T], miss_rate [T]) after each non-ignored detection in score order.

        Empty arrays when there are no detections; miss rate NaN when there is no GT.
        """
        fppi, recall = self._fppi_recall()
        return fppi, 1.0 - recall

    def recall_at_fppi(self) -> np.ndarray:
        """[9] recall at the protocol's FPPI references."""
        fppi, recall = self._fppi_recall()
        if len(fppi) == 0:  # no non-ignored detection: every recall stays 0
            return np.zeros(9)
        idx = np.searchsorted(fppi, self.refs, side="right") - 1
        if self.sentinel_final:
            # eval_MR_multisetup.py: the last point with fppi <= ref; if there is
            # none the index is -1 and Python returns the FINAL recall (quirk).
            return recall[idx]
        # bbGt.m compRoc: xs = [-inf; fppi], ys = [0; recall].
        return np.where(idx >= 0, recall[np.maximum(idx, 0)], 0.0)

    def mr(self, image_counts: np.ndarray | None = None) -> float | None:
        """Log-average miss rate over the 9 references; None when there is no non-ignored GT.

        Args:
            image_counts: [n_images] how often each image is drawn (a bootstrap
                resample), or None for the data set itself.

        No clamp: a zero miss rate at any reference gives log 0 = -inf and MR 0,
        as in both official codes.
        """
        if image_counts is not None:
            counts = np.asarray(image_counts)
            if counts.shape != (self.n_images,):
                raise ValueError(f"image_counts must have shape ({self.n_images},), got {counts.shape}")
            value = float(bootstrap_mr(self, counts[None, :].astype(np.int64))[0])
            return None if np.isnan(value) else value
        if self.gt_per_image.sum() == 0:
            return None
        with np.errstate(divide="ignore"):
            return float(np.exp(np.mean(np.log(1.0 - self.recall_at_fppi()))))


def average_precision(matches: SetupMatches, image_counts: np.ndarray | None = None) -> float | None:
    """AP of a matching outcome as CrowdDet's ``eval_AP`` computes it: trapezoids over
    consecutive (recall, precision) points, no envelope, no anchor at recall 0.

    CrowdHuman's AP; ``pedcrowd analyze`` also reads it off the other protocols'
    matching (an AP50, not COCO AP).

    None when there is no valid GT; 0 with fewer than two detections. With
    ``image_counts`` (bootstrap), image i counts ``image_counts[i]`` times.
    """
    is_tp, n_gt = matches.is_tp, float(matches.gt_per_image.sum())
    if image_counts is not None:
        counts = np.asarray(image_counts).astype(np.int64)
        is_tp = np.repeat(is_tp, counts[matches.det_image])
        n_gt = float(counts @ matches.gt_per_image)
    if n_gt == 0:
        return None
    tp = np.cumsum(is_tp, dtype=np.float64)
    fp = np.cumsum(~is_tp, dtype=np.float64)
    recall, precision = tp / n_gt, tp / (tp + fp)
    if len(recall) < 2:
        return 0.0
    area = (recall[1:] - recall[:-1]) * ((precision[:-1] + precision[1:]) / 2)
    return float(np.cumsum(area)[-1])  # cumsum: the same left-to-right sum as the official loop
