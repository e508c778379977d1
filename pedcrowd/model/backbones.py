"""Feature extractors with an FPN on top, and where their ImageNet weights live.

Every backbone returns an ordered dict of feature maps, finest first, with
``out_channels`` channels each; :data:`NUM_LEVELS` says how many (one anchor
size per level in :class:`~pedcrowd.model.config.ModelConfig`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from pedcrowd.errors import PedcrowdError
from pedcrowd.model.pretrained import fetch_state_dict

# feature levels each backbone returns (resnet: P2-P5 + max-pool P6; mobilenet: 2 stages + pool)
NUM_LEVELS = {"resnet50_fpn": 5, "resnet18_fpn": 5, "mobilenet_v3_fpn": 3, "tiny_fpn": 3}
# feature maps the RoI pooling reads (the max-pooled extra level is for the RPN only)
ROI_FEATURE_NAMES = {
    "resnet50_fpn": ["0", "1", "2", "3"],
    "resnet18_fpn": ["0", "1", "2", "3"],
    "mobilenet_v3_fpn": ["0", "1"],
    "tiny_fpn": ["0", "1", "2"],
}


class TinyFPNBackbone(nn.Module):
    """A small from-scratch CNN + FPN for the CPU demo and the tests.

    Four stages at strides 4, 8, 16, 32 with 16, 32, 64, 128 channels (two 3x3
    convolutions each, the first strided) and a 64-channel FPN on the last three
    (strides 8, 16, 32): a stride-4 level would cost 4x the other levels together
    in the FPN, RPN head and RoIAlign, for people the demo (>= 33 px tall at
    256 x 512) does not need. GroupNorm, not
    BatchNorm: training runs 1-8 images per process, and GroupNorm does not
    depend on the batch, so results are the same whatever the batch split
    across DDP processes and identical between train and eval statistics.
    """

    def __init__(
        self, channels: tuple[int, ...] = (16, 32, 64, 128), out_channels: int = 64
    ) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.stem = _conv_gn_relu(3, channels[0], stride=2)
        stages, in_ch = [], channels[0]
        for ch in channels:
            stages.append(
                nn.Sequential(_conv_gn_relu(in_ch, ch, stride=2), _conv_gn_relu(ch, ch, stride=1))
            )
            in_ch = ch
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(channels[1:]), out_channels)
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in set(self.fpn.modules()):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """[N, 3, H, W] -> levels "0".."2", [N, out_channels, H / 2^(k+3), W / 2^(k+3)]."""
        x = self.stages[0](self.stem(x))
        feats = OrderedDict()
        for k, stage in enumerate(self.stages[1:]):
            x = stage(x)
            feats[str(k)] = x
        return self.fpn(feats)


def backbone_levels(name: str) -> int:
    """The number of feature levels of backbone ``name``; PedcrowdError naming
    ``model.backbone`` and the choices if there is no such backbone."""
    levels = NUM_LEVELS.get(name)
    if levels is None:
        raise PedcrowdError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(NUM_LEVELS)}")
    return levels


def _conv_gn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, out_ch // 4), out_ch),
        nn.ReLU(inplace=True),
    )


def _torchvision_weights(backbone: str):
    """The torchvision ImageNet weights enum entry of a backbone's body."""
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights

    return {
        "resnet50_fpn": ResNet50_Weights.IMAGENET1K_V1,
        "resnet18_fpn": ResNet18_Weights.IMAGENET1K_V1,
        "mobilenet_v3_fpn": MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    }[backbone]


def imagenet_weights_path(backbone: str) -> Path:
    """Where torchvision would cache the backbone's ImageNet weights (``torch.hub.get_dir()/checkpoints``)."""
    backbone_levels(backbone)
    if backbone == "tiny_fpn":
        raise PedcrowdError(
            "model.weights: tiny_fpn has no ImageNet weights (it trains from scratch); "
            "use weights: none, a checkpoint PATH, or another backbone"
        )
    url = _torchvision_weights(backbone).url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of the backbone's body: the torch hub cache's file, else
    downloaded and hash-checked by torchvision (:func:`pedcrowd.model.pretrained.fetch_state_dict`).

    Raises:
        PedcrowdError: not cached and no download possible or allowed (the message
            names the URL and where to put the file), or a file that fails the check.
    """
    imagenet_weights_path(backbone)  # tiny_fpn: the explanation
    return fetch_state_dict(_torchvision_weights(backbone), f"model.weights: imagenet ({backbone})")


def build_backbone(name: str, weights: str, trainable_layers: int, *, load: bool = True) -> nn.Module:
    """The feature extractor + FPN called ``name`` (see :data:`NUM_LEVELS`).

    Args:
        name: resnet50_fpn | resnet18_fpn | mobilenet_v3_fpn | tiny_fpn.
        weights: ``none``, ``imagenet`` (the body starts from torchvision's ImageNet
            weights), ``coco`` or a checkpoint path (both loaded later, by the caller).
        trainable_layers: body stages left trainable when starting from pretrained
            weights; with ``none`` all train (a random frozen stage would never learn).
        load: False builds the layers ``weights`` implies (frozen BatchNorm when
            pretrained) without loading them: a checkpoint's tensors come next.

    Returns:
        a module with ``out_channels`` mapping [N, 3, H, W] to an ordered dict of feature maps.
    """
    backbone_levels(name)
    imagenet, pretrained = weights == "imagenet", weights != "none"
    if name == "tiny_fpn":
        if imagenet:
            imagenet_weights_path(name)  # raises the explanation
        return TinyFPNBackbone()

    from torchvision.models import mobilenet_v3_large, resnet18, resnet50
    from torchvision.models.detection.backbone_utils import (
        _mobilenet_extractor,
        _resnet_fpn_extractor,
    )
    from torchvision.ops import FrozenBatchNorm2d

    # Detector batches are 1-8 images per process: pretrained BatchNorm statistics (ImageNet
    # or a checkpoint's) are frozen, torchvision's choice; from scratch there is nothing to
    # freeze, so plain BN. Both have the same state dict keys but num_batches_tracked.
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    body = {
        "resnet50_fpn": resnet50,
        "resnet18_fpn": resnet18,
        "mobilenet_v3_fpn": mobilenet_v3_large,
    }[name](weights=None, norm_layer=norm_layer)
    if imagenet and load:
        body.load_state_dict(load_imagenet_state_dict(name))
    max_layers = 6 if name == "mobilenet_v3_fpn" else 5
    if not 0 <= trainable_layers <= max_layers:
        raise PedcrowdError(
            f"model.trainable_layers: {trainable_layers} is outside 0-{max_layers} for {name}"
        )
    layers = trainable_layers if pretrained else max_layers
    if name == "mobilenet_v3_fpn":
        return _mobilenet_extractor(body, True, layers)
    return _resnet_fpn_extractor(body, layers)
