"""Mixed precision that keeps the geometry in float32.

Under autocast (CUDA float16/bfloat16, CPU bfloat16) the convolutions and
linear layers run in half precision, and torchvision lets that precision leak
into the geometry: the anchor generator takes the feature maps' dtype, and the
box coder decodes in the deltas' dtype. bfloat16 has an 8-bit mantissa, so a
coordinate between 1024 and 2048 moves in steps of 8 pixels, and an IoU near
N_t = 0.5 lands on either side of it: which pairs NMS-Loss penalises, which RoIs
OHEM keeps, which detections soft-NMS removes would then change with the
precision. pedcrowd therefore runs the network in half precision and
everything after it in float32:

* anchors are made in float32 (:class:`Float32AnchorGenerator`);
* boxes are decoded in float32 (:class:`Float32BoxCoder`; the KL head's edge
  coder does the same);
* every training criterion and sampler reads its stage's samples cast to
  float32, with autocast off (:func:`full_precision`,
  :meth:`pedcrowd.losses.samples.StageSamples.float32`); the network's outputs
  keep their half-precision rounding, the arithmetic on them is float32;
* post-processing (score threshold, hard NMS, soft-NMS, variance voting) reads
  float32 logits, boxes and variances.

Without autocast every one of these is the identity on float32 tensors.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` as float32 when it is a half-precision float (float64 stays float64)."""
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        return t.float()
    return t


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is off on ``device_type`` (``"cuda"``, ``"cpu"``)."""
    return torch.autocast(device_type, enabled=False)


def same_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Captures the autocast state now; entering the result later restores it (e.g. the
    OHEM scoring pass of the box head, run from inside a float32 region)."""
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's :class:`AnchorGenerator`, always in float32.

    torchvision makes anchors in the feature maps' dtype (bfloat16 under CPU
    autocast); the generator reads nothing of the maps but their shape, dtype and
    device, so it gets zero-stride float32 stand-ins of the same shape.
    """

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        shapes = [
            torch.zeros((), dtype=torch.float32, device=f.device).expand(f.shape)
            for f in feature_maps
        ]
        return super().forward(image_list, shapes)


class Float32BoxCoder(BoxCoder):
    """torchvision's :class:`BoxCoder`, decoding in float32 (it decodes in the codes' dtype)."""

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        return super().decode_single(at_least_float32(rel_codes), at_least_float32(boxes))

    @classmethod
    def like(cls, coder: BoxCoder) -> Float32BoxCoder:
        return cls(coder.weights, coder.bbox_xform_clip)
