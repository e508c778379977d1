"""The pedestrian detector: config, builder, ignore-aware RPN and RoI heads, the training-loss seam.

The torch parts load on first use (PEP 562 ``__getattr__``), so that
``pedcrowd.model.config`` (part of the torch-free config tree) stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pedcrowd.model.config import ModelConfig

if TYPE_CHECKING:
    from pedcrowd.model.detector import WeightsReport, build_model, install_criteria, load_weights
    from pedcrowd.model.roi_heads import PedRoIHeads
    from pedcrowd.model.rpn import PedRegionProposalNetwork
    from pedcrowd.model.samples import StageSamples

_LAZY = {
    "PedRegionProposalNetwork": "pedcrowd.model.rpn",
    "PedRoIHeads": "pedcrowd.model.roi_heads",
    "StageSamples": "pedcrowd.model.samples",
    "WeightsReport": "pedcrowd.model.detector",
    "build_model": "pedcrowd.model.detector",
    "install_criteria": "pedcrowd.model.detector",
    "load_weights": "pedcrowd.model.detector",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pedcrowd.model' has no attribute {name!r}")


__all__ = [
    "ModelConfig",
    "PedRegionProposalNetwork",
    "PedRoIHeads",
    "StageSamples",
    "WeightsReport",
    "build_model",
    "install_criteria",
    "load_weights",
]
