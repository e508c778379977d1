"""Training losses: every term of both stages, one technique per file, and their registry.

This package's own namespace is the ``loss:`` config section
(:mod:`pedcrowd.losses.config`), torch-free so that the config tree loads fast.
The torch parts are imported from their modules: the per-image functions any
detector can call (:func:`pedcrowd.losses.nms_loss.nms_loss`,
:func:`pedcrowd.losses.repulsion.repulsion_loss`), the registry of terms
(:data:`pedcrowd.losses.registry.TERMS`) and the criteria the detector's stages
run (:func:`pedcrowd.losses.criterion.build_criteria`).
"""

from __future__ import annotations

from pedcrowd.losses.config import (
    LOSS_PRESETS,
    TERM_CHOICES,
    LossConfig,
    NmsLossConfig,
    RepLossConfig,
    apply_loss_preset,
)

__all__ = [
    "LOSS_PRESETS",
    "TERM_CHOICES",
    "LossConfig",
    "NmsLossConfig",
    "RepLossConfig",
    "apply_loss_preset",
]
