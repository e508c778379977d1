"""Paired image/box transforms for training, deterministic under a seed.

Every transform takes an image tensor and a target dict and returns both,
changed consistently. Shapes: the image is a float32 tensor [3, H, W] in
[0, 1]; the target holds ``boxes`` [K, 4] and ``vis_boxes`` [K, 4] (row k of
one belongs to row k of the other), ``labels`` [K] and ``ignore_boxes``
[M, 4], all boxes ``xyxy`` absolute pixels. Other target keys pass through.

Randomness comes only from the ``numpy.random.Generator`` passed in. The
datasets derive it from ``(seed, epoch, index)`` with :func:`sample_rng`, so
an image gets the same augmentation whatever the number of data-loader
workers or the order in which they fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Target = dict[str, object]
CropPolicy = Literal["keep", "clip", "ignore"]

CROP_POLICIES = ("keep", "clip", "ignore")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample in one epoch, independent of worker layout."""
    return np.random.default_rng([seed, epoch, index])


def _box_keys(target: Target) -> list[str]:
    return [k for k in ("boxes", "vis_boxes", "ignore_boxes") if k in target]


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror the image left-right; x1' = W - x2 and x2' = W - x1 for every box set.

    Args:
        image: [3, H, W].
        target: dict with box sets [*, 4] xyxy.
    """
    width = image.shape[-1]
    out = dict(target)
    for key in _box_keys(target):
        b = target[key]
        out[key] = torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)
    return image.flip(-1), out


def resize(
    image: torch.Tensor, target: Target, size: tuple[int, int]
) -> tuple[torch.Tensor, Target]:
    """Resize the image to ``size`` = (H', W') and scale every box set with it.

    Boxes scale by W'/W in x and H'/H in y (the exact factors after rounding
    the size to whole pixels, so boxes stay aligned with the pixels).
    """
    height, width = image.shape[-2:]
    new_h, new_w = size
    sx, sy = new_w / width, new_h / height
    # antialias only matters when shrinking; it keeps small people from aliasing away.
    resized = F.interpolate(
        image[None],
        size=(new_h, new_w),
        mode="bilinear",
        align_corners=False,
        antialias=new_h < height or new_w < width,
    )[0].clamp_(0.0, 1.0)
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    out = dict(target)
    for key in _box_keys(target):
        out[key] = target[key] * scale
    return resized, out


def crop(
    image: torch.Tensor,
    target: Target,
    region: tuple[int, int, int, int],
    policy: CropPolicy = "clip",
    ignore_threshold: float = 0.5,
) -> tuple[torch.Tensor, Target]:
    """Cut the image to ``region`` = (x0, y0, x1, y1) and move the boxes with it.

    Objects entirely outside the region (or with no area inside it) are
    dropped under every policy. For objects cut by the border:

    * ``keep``: kept with their full extent, partly outside the new image;
    * ``clip``: clipped to the region;
    * ``ignore``: an object that loses more than ``ignore_threshold`` of its
      area becomes an ignore box (its clipped part); the others are clipped.

    Visible boxes follow their object (clipped whenever the object is).
    Ignore boxes are always clipped; empty ones are dropped.
    """
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    offset = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    limit = torch.tensor([w, h, w, h], dtype=torch.float32)

    def clip(b: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(b - offset, torch.zeros(4)), limit)

    out = dict(target)
    boxes = target["boxes"]
    shifted = boxes - offset
    clipped = clip(boxes)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # [K]
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])  # [K]
    alive = inside > 0
    to_ignore = torch.zeros_like(alive)
    if policy == "ignore":
        to_ignore = alive & (inside < (1.0 - ignore_threshold) * area)
    elif policy not in CROP_POLICIES:
        raise ValueError(f"crop policy must be one of {CROP_POLICIES}, got {policy!r}")
    keep = alive & ~to_ignore
    new_boxes = shifted if policy == "keep" else clipped
    out["boxes"] = new_boxes[keep]
    if "vis_boxes" in target:
        vis = target["vis_boxes"]
        out["vis_boxes"] = (vis - offset if policy == "keep" else clip(vis))[keep]
    if "labels" in target:
        out["labels"] = target["labels"][keep]
    ignore = clip(target.get("ignore_boxes", torch.zeros((0, 4))))
    ignore = torch.cat([ignore, clipped[to_ignore]])
    nonempty = (ignore[:, 2] > ignore[:, 0]) & (ignore[:, 3] > ignore[:, 1])
    out["ignore_boxes"] = ignore[nonempty]
    return image[:, y0:y1, x0:x1], out


def color_jitter(
    image: torch.Tensor, brightness: float, contrast: float, saturation: float
) -> torch.Tensor:
    """Apply the given factors (1 = unchanged) in a fixed order: brightness, contrast, saturation.

    Contrast blends with the mean grey level of the image, saturation with
    each pixel's grey level (ITU-R 601 luma), both as torchvision does.
    """
    image = (image * brightness).clamp(0.0, 1.0)
    grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]  # [H, W]
    image = ((image - grey.mean()) * contrast + grey.mean()).clamp(0.0, 1.0)
    grey = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return ((image - grey) * saturation + grey).clamp(0.0, 1.0)


@dataclass
class TrainTransform:
    """The training augmentation: scale jitter, random crop, flip, colour jitter.

    Attributes:
        flip_prob: probability of a horizontal flip.
        scale_range: (lo, hi) image scale factor drawn uniformly; (1, 1) = off.
        crop_size: (H, W) of the random crop; None = no crop. A side longer
            than the image is cut to the image.
        crop_policy: what happens to boxes cut by the crop (see :func:`crop`).
        crop_ignore_threshold: for ``ignore``: lost area fraction above which
            a cut object becomes an ignore box.
        brightness, contrast, saturation: jitter strengths; each factor is
            drawn from [1 - s, 1 + s]; 0 = off.
    """

    flip_prob: float = 0.5
    scale_range: tuple[float, float] = (1.0, 1.0)
    crop_size: tuple[int, int] | None = None
    crop_policy: CropPolicy = "clip"
    crop_ignore_threshold: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_policy not in CROP_POLICIES:
            raise ValueError(
                f"crop_policy must be one of {CROP_POLICIES}, got {self.crop_policy!r}"
            )

    def __call__(
        self, image: torch.Tensor, target: Target, rng: np.random.Generator
    ) -> tuple[torch.Tensor, Target]:
        # Every random number is drawn, used or not, so that changing one option
        # (say flip_prob) does not change the crops and scales of the others.
        scale = rng.uniform(*self.scale_range)
        crop_u = rng.random(2)
        flip = rng.random() < self.flip_prob
        factors = 1.0 + rng.uniform(-1.0, 1.0, size=3) * np.array(
            [self.brightness, self.contrast, self.saturation]
        )

        height, width = image.shape[-2:]
        if scale != 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image, target = resize(image, target, size)
        if self.crop_size is not None:
            height, width = image.shape[-2:]
            ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
            y0 = int(crop_u[0] * (height - ch + 1))
            x0 = int(crop_u[1] * (width - cw + 1))
            image, target = crop(
                image,
                target,
                (x0, y0, x0 + cw, y0 + ch),
                self.crop_policy,
                self.crop_ignore_threshold,
            )
        if flip:
            image, target = hflip(image, target)
        if self.brightness or self.contrast or self.saturation:
            image = color_jitter(image, *(float(f) for f in factors))
        return image, target
