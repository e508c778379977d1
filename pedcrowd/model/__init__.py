"""The pedestrian detector: config, builder, ignore-aware RPN and RoI heads, the training-loss seam."""

from pedcrowd.model.config import BACKBONES, ModelConfig
from pedcrowd.model.detector import WeightsReport, build_model, install_criteria, load_weights
from pedcrowd.model.roi_heads import PedRoIHeads
from pedcrowd.model.rpn import PedRegionProposalNetwork
from pedcrowd.model.samples import StageSamples

__all__ = [
    "BACKBONES",
    "ModelConfig",
    "PedRegionProposalNetwork",
    "PedRoIHeads",
    "StageSamples",
    "WeightsReport",
    "build_model",
    "install_criteria",
    "load_weights",
]
