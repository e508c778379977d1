"""The pedestrian detector: config, builder, ignore-aware RPN and RoI heads, the crowd-loss seam."""

from pedcrowd.model.config import BACKBONES, ModelConfig
from pedcrowd.model.detector import WeightsReport, build_model, load_weights
from pedcrowd.model.roi_heads import PedRoIHeads
from pedcrowd.model.rpn import PedRegionProposalNetwork
from pedcrowd.model.samples import RoiSamples

__all__ = [
    "BACKBONES",
    "ModelConfig",
    "PedRegionProposalNetwork",
    "PedRoIHeads",
    "RoiSamples",
    "WeightsReport",
    "build_model",
    "load_weights",
]
