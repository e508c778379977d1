"""Crowd losses: NMS-Loss and Repulsion Loss, one paper per file.

``nms_loss`` and ``repulsion_loss`` are per-image functions over tensors that
any detector can call; ``build_crowd_losses`` composes them for pedcrowd's
model from the ``loss:`` config section (``LossConfig``).
"""

from __future__ import annotations

from pedcrowd.losses.config import (
    LOSS_PRESETS,
    LossConfig,
    NmsLossConfig,
    RepLossConfig,
    apply_loss_preset,
)
from pedcrowd.losses.crowd import build_crowd_losses

# Keep this line after every import that loads the submodule ``nms_loss``: loading it
# binds the package attribute to the module, and this rebinds it to the function.
from pedcrowd.losses.nms_loss import nms_loss
from pedcrowd.losses.repulsion import repulsion_loss

__all__ = [
    "LOSS_PRESETS",
    "LossConfig",
    "NmsLossConfig",
    "RepLossConfig",
    "apply_loss_preset",
    "build_crowd_losses",
    "nms_loss",
    "repulsion_loss",
]
