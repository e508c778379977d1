"""Per-setup matching results and the log-average miss rate (MR^-2) computed from them.

:class:`SetupMatches` keeps, for one setup, every non-ignored detection in the
official global order (score descending, stable: ties by image order, then
file order) with its TP flag and image, plus the non-ignored GT count of every
image. MR^-2 and the miss-rate/FPPI curve follow from it; with
``image_counts`` they are recomputed for a bootstrap resample (image i drawn
``image_counts[i]`` times) without matching again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# CityPersons eval_MR_multisetup.py hard-codes the references rounded to 4
# decimals; dbEval.m uses the exact 10.^(-2:.25:0).
FPPI_REFS_CITYPERSONS = np.array([0.0100, 0.0178, 0.0316, 0.0562, 0.1000, 0.1778, 0.3162, 0.5623, 1.0000])
FPPI_REFS_CALTECH = 10.0 ** (np.arange(9) * 0.25 - 2.0)


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

    def _fppi_recall(self, image_counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        is_tp = self.is_tp
        n_gt, n_img = float(self.gt_per_image.sum()), float(self.n_images)
        if image_counts is not None:
            counts = np.asarray(image_counts)
            if counts.shape != (self.n_images,):
                raise ValueError(f"image_counts must have shape ({self.n_images},), got {counts.shape}")
            counts = counts.astype(np.int64)
            # A drawn image's copies are consecutive in the image order, so each
            # detection repeats in place: the curve is exactly that of the
            # resampled data set (for scores distinct across images).
            is_tp = np.repeat(is_tp, counts[self.det_image])
            n_gt, n_img = float(counts @ self.gt_per_image), float(counts.sum())
        tp = np.cumsum(is_tp, dtype=np.float64)
        fp = np.cumsum(~is_tp, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return fp / n_img, tp / n_gt

    def curve(self, image_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(fppi [T], miss_rate [T]) after each non-ignored detection in score order.

        Empty arrays when there are no detections; miss rate NaN when there is no GT.
        """
        fppi, recall = self._fppi_recall(image_counts)
        return fppi, 1.0 - recall

    def recall_at_fppi(self, image_counts: np.ndarray | None = None) -> np.ndarray:
        """[9] recall at the protocol's FPPI references."""
        fppi, recall = self._fppi_recall(image_counts)
        if len(fppi) == 0:  # no non-ignored detection: every recall stays 0
            return np.zeros(9)
        if self.protocol == "crowdhuman":
            # CrowdDet eval_MR: the FIRST point with fppi >= ref, the last point
            # if none; differs from CityPersons where ref * n_images is an integer.
            idx = np.minimum(np.searchsorted(fppi, FPPI_REFS_CITYPERSONS, side="left"), len(fppi) - 1)
            return recall[idx]
        if self.protocol == "citypersons":
            # eval_MR_multisetup.py: the last point with fppi <= ref; if there is
            # none the index is -1 and Python returns the FINAL recall (quirk).
            idx = np.searchsorted(fppi, FPPI_REFS_CITYPERSONS, side="right") - 1
            return recall[idx]
        # bbGt.m compRoc: xs = [-inf; fppi], ys = [0; recall].
        idx = np.searchsorted(fppi, FPPI_REFS_CALTECH, side="right") - 1
        return np.where(idx >= 0, recall[np.maximum(idx, 0)], 0.0)

    def mr(self, image_counts: np.ndarray | None = None) -> float | None:
        """Log-average miss rate over the 9 references; None when there is no non-ignored GT.

        No clamp: a zero miss rate at any reference gives log 0 = -inf and MR 0,
        as in both official codes.
        """
        counts = np.ones(self.n_images) if image_counts is None else np.asarray(image_counts)
        if float(counts @ self.gt_per_image) == 0:
            return None
        with np.errstate(divide="ignore"):
            return float(np.exp(np.mean(np.log(1.0 - self.recall_at_fppi(image_counts)))))
