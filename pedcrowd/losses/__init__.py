"""Training losses: every term of both stages, one technique per file, and their registry.

``nms_loss`` and ``repulsion_loss`` are per-image functions over tensors that
any detector can call. ``pedcrowd.losses.config`` holds the ``loss:`` config
section and the registry of terms (torch-free, so the config tree loads
fast); ``build_criteria`` composes the registered terms into the criteria the
detector's stages run. The torch parts are loaded on first use.
"""

from __future__ import annotations

from typing import Any

from pedcrowd.losses.config import (
    LOSS_PRESETS,
    TERMS,
    LossConfig,
    NmsLossConfig,
    RepLossConfig,
    TermSpec,
    apply_loss_preset,
)

_LAZY = {
    "build_criteria": "pedcrowd.losses.criterion",
    "StageCriterion": "pedcrowd.losses.criterion",
    "nms_loss": "pedcrowd.losses.nms",
    "repulsion_loss": "pedcrowd.losses.repulsion",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOSS_PRESETS",
    "TERMS",
    "LossConfig",
    "NmsLossConfig",
    "RepLossConfig",
    "StageCriterion",
    "TermSpec",
    "apply_loss_preset",
    "build_criteria",
    "nms_loss",
    "repulsion_loss",
]
