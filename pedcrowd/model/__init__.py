"""The pedestrian detector: config, builder, ignore-aware RPN and RoI heads, the training-loss seam.

The torch parts load on first use (PEP 562 ``__getattr__``), so that
``pedcrowd.model.config`` (part of the torch-free config tree) stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pedcrowd.model.config import ModelConfig

if TYPE_CHECKING:
    from pedcrowd.model.detector import build_model, install_criteria
    from pedcrowd.model.roi_heads import PedRoIHeads
    from pedcrowd.model.rpn import PedRegionProposalNetwork
    from pedcrowd.model.weights import WeightsReport, load_weights


def __getattr__(name: str):
    # plain imports, run on first use of a torch name (not at ``import pedcrowd.model``)
    if name in ("build_model", "install_criteria"):
        from pedcrowd.model import detector

        return getattr(detector, name)
    if name in ("WeightsReport", "load_weights"):
        from pedcrowd.model import weights

        return getattr(weights, name)
    if name == "PedRoIHeads":
        from pedcrowd.model.roi_heads import PedRoIHeads

        return PedRoIHeads
    if name == "PedRegionProposalNetwork":
        from pedcrowd.model.rpn import PedRegionProposalNetwork

        return PedRegionProposalNetwork
    raise AttributeError(f"module 'pedcrowd.model' has no attribute {name!r}")


__all__ = [
    "ModelConfig",
    "PedRegionProposalNetwork",
    "PedRoIHeads",
    "WeightsReport",
    "build_model",
    "install_criteria",
    "load_weights",
]
