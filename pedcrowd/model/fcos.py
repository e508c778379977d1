"""``model.arch: fcos``: torchvision's FCOS as a one-class pedestrian detector.

torchvision's :class:`~torchvision.models.detection.FCOS` on pedcrowd's
backbones, with pedcrowd's input transform (:class:`PedTransform`, which
rescales ignore boxes) and its own loss, chosen by ``model.assigner``:

- ``fcos``: FCOS's own assignment, as torchvision does it (a location is a
  positive of the smallest GT whose box holds its point, within
  ``fcos_center_sampling_radius`` strides of the GT centre and in the
  level's scale range ``[4s, 8s]`` of ``max(l, t, r, b)``), and torchvision's
  loss (sigmoid focal loss, GIoU, centre-ness BCE, each divided by the number
  of positives; :mod:`pedcrowd.losses.fcos`). With no ignore boxes the losses
  equal torchvision's.
- ``dw``: Dual Weighting (:mod:`pedcrowd.losses.dw`).

Ignore regions (one rule for both assigners): a location that is not a
positive of any GT and whose *point* lies inside an ignore box is neither
positive nor negative (it takes no classification loss). The point rule, not
the IoA >= 0.5 rule of the two-stage detector (:mod:`pedcrowd.model.ignore`):
a background location has no box of its own to measure an IoA with, and the
point is what FCOS itself tests against GT boxes. Locations assigned to a GT
stay positive even inside an ignore box (``model.ignore_positives`` is the
two-stage detector's option; FCOS keeps them).

One class logit (no background class); the detections carry label 1 like
Faster R-CNN's. A location's anchor is a square of one stride centred on its
point (torchvision's ``(8,), (16,), ...`` convention), so regression outputs
are ``l, t, r, b`` in strides. Inference is torchvision's
(score ``sqrt(sigmoid(cls) * sigmoid(ctr))``, ``box_score_thresh``,
``box_nms_thresh``, ``box_detections_per_img``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.fcos import FCOSHead, FCOSRegressionHead

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.dw import dw_loss
from pedcrowd.losses.fcos import fcos_loss, fcos_match
from pedcrowd.model.backbones import backbone_levels, build_backbone
from pedcrowd.model.config import ModelConfig
from pedcrowd.model.pretrained import load_coco_into
from pedcrowd.model.transform import IMAGE_MEAN, IMAGE_STD, PedTransform
from pedcrowd.model.weights import load_weights
from pedcrowd.precision import Float32AnchorGenerator, at_least_float32, full_precision

# feature strides of each backbone's levels, finest first (mobilenet_v3_fpn returns two
# levels at stride 32, which FCOS's per-level scale ranges cannot tell apart)
FCOS_STRIDES = {
    "tiny_fpn": (8, 16, 32),
    "resnet50_fpn": (4, 8, 16, 32, 64),
    "resnet18_fpn": (4, 8, 16, 32, 64),
}


def build_fcos(cfg: ModelConfig, *, load: bool = True) -> PedFCOS:
    """The FCOS detector described by ``cfg`` (``cfg.arch == "fcos"``), weights loaded
    (``load=False``: see :func:`pedcrowd.model.detector.build_model`).

    Raises:
        PedcrowdError: a backbone FCOS cannot use, bad head settings, unreadable weights.
    """
    backbone_levels(cfg.backbone)  # an unknown name: the one error of every architecture
    strides = FCOS_STRIDES.get(cfg.backbone)
    if strides is None:
        raise PedcrowdError(
            f"model.backbone: {cfg.backbone!r} does not fit model.arch fcos; choose one of "
            f"{', '.join(FCOS_STRIDES)}"
        )
    for key, value, ok, want in (
        ("fcos_num_convs", cfg.fcos_num_convs, cfg.fcos_num_convs >= 0, ">= 0"),
        ("fcos_center_sampling_radius", cfg.fcos_center_sampling_radius,
         cfg.fcos_center_sampling_radius > 0, "> 0"),
        ("fcos_topk_candidates", cfg.fcos_topk_candidates, cfg.fcos_topk_candidates >= 1, ">= 1"),
        ("dw_prior_sigma", cfg.dw_prior_sigma, cfg.dw_prior_sigma > 0, "> 0"),
    ):
        if not ok:
            raise PedcrowdError(f"model.{key}: {value} must be {want}")
    weights = str(cfg.weights)
    backbone = build_backbone(cfg.backbone, weights, cfg.trainable_layers, load=load)
    anchor_generator = Float32AnchorGenerator(
        sizes=tuple((s,) for s in strides), aspect_ratios=((1.0,),) * len(strides)
    )
    head = FCOSHead(backbone.out_channels, 1, 1, cfg.fcos_num_convs)
    refine = cfg.assigner == "dw" and cfg.dw_refine
    head.regression_head = PedFCOSRegressionHead(
        backbone.out_channels, cfg.fcos_num_convs, refine=refine
    )
    if cfg.assigner == "dw":  # the official DW head's initialisation
        nn.init.constant_(head.classification_head.cls_logits.bias, -math.log((1 - 0.02) / 0.02))
        nn.init.constant_(head.regression_head.bbox_reg.bias, 4.0)
    model = PedFCOS(
        backbone,
        num_classes=1,
        anchor_generator=anchor_generator,
        head=head,
        center_sampling_radius=cfg.fcos_center_sampling_radius,
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.box_detections_per_img,
        topk_candidates=cfg.fcos_topk_candidates,
    )
    model.transform = PedTransform(
        cfg.min_size, cfg.max_size, IMAGE_MEAN, IMAGE_STD, train_scale=cfg.train_scale
    )
    model.assigner = cfg.assigner or "fcos"
    model.dw_prior_sigma = cfg.dw_prior_sigma
    model.dw_neg_overlap = cfg.dw_neg_overlap
    if load and weights == "coco":
        load_coco_into(model, cfg)
    elif load and weights not in ("none", "imagenet", "coco"):
        load_weights(model, weights)
    return model


class PedFCOSRegressionHead(FCOSRegressionHead):
    """torchvision's regression + centre-ness head, with DW's box refinement as an option.

    Refinement (``refine=True``, DW's ``reg_refine``): a 3x3 conv on the
    regression features predicts one (dy, dx) offset per box side; each side's
    coordinate of the coarse box map is re-read (bilinearly, as the official
    depthwise deformable 1x1 convolution with unit weights) at a point moved from the
    location to near that side (``x1`` at ``(0, -l)`` plus its offset, ``y1``
    at ``(-t, 0)``, ``x2`` at ``(0, r)``, ``y2`` at ``(b, 0)``); the refined box
    gives the new ``l, t, r, b``. All in feature-map cells (one cell = one
    stride = one anchor size).
    """

    def __init__(self, in_channels: int, num_convs: int, refine: bool = False) -> None:
        super().__init__(in_channels, 1, num_convs)
        self.refine = refine
        if refine:
            self.reg_offset = nn.Conv2d(in_channels, 8, kernel_size=3, padding=1)
            nn.init.normal_(self.reg_offset.weight, std=0.01)
            nn.init.zeros_(self.reg_offset.bias)

    def forward(self, x: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Levels [N, C, H, W] -> (``l, t, r, b`` [N, sum HW, 4] in strides, logits [N, sum HW, 1])."""
        regs, ctrs = [], []
        for features in x:
            feat = self.conv(features)
            reg = F.relu(self.bbox_reg(feat))  # [N, 4, H, W]
            if self.refine:
                reg = refine_distances(reg, self.reg_offset(feat))
            ctr = self.bbox_ctrness(feat)  # [N, 1, H, W]
            regs.append(reg.flatten(2).transpose(1, 2))
            ctrs.append(ctr.flatten(2).transpose(1, 2))
        return torch.cat(regs, dim=1), torch.cat(ctrs, dim=1)


def refine_distances(reg: Tensor, offset: Tensor) -> Tensor:
    """DW's box refinement of one level.

    The official code reads the box map with a depthwise deformable 1x1
    convolution of unit weights; that is bilinear sampling of each channel at
    its own points with zeros outside the map, done here by one ``grid_sample``
    (equal to ``torchvision.ops.deform_conv2d`` to float rounding, 6x faster on
    the CPU; a test checks the equality).

    Args:
        reg: [N, 4, H, W] ``l, t, r, b`` in cells, >= 0.
        offset: [N, 8, H, W] learnt (dy, dx) per side: x1, y1, x2, y2.

    Returns:
        [N, 4, H, W] refined ``l, t, r, b`` (>= 0).
    """
    n, _, h, w = reg.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=reg.dtype, device=reg.device),
        torch.arange(w, dtype=reg.dtype, device=reg.device),
        indexing="ij",
    )
    left, top, right, bottom = reg.unbind(1)
    boxes = torch.stack([gx - left, gy - top, gx + right, gy + bottom], 1)  # [N, 4, H, W]
    zero = torch.zeros_like(left)
    move = torch.stack([zero, -left, -top, zero, zero, right, bottom, zero], 1)  # (dy, dx) x 4
    sampled = sample_per_channel(boxes, (offset + move).view(n, 4, 2, h, w))
    x1, y1, x2, y2 = sampled.unbind(1)
    return F.relu(torch.stack([gx - x1, gy - y1, x2 - gx, y2 - gy], 1))


def sample_per_channel(maps: Tensor, offsets: Tensor) -> Tensor:
    """Bilinear samples of each channel at its own offset points (zeros outside).

    Args:
        maps: [N, C, H, W].
        offsets: [N, C, 2, H, W] (dy, dx) in cells from each location.

    Returns:
        [N, C, H, W]: ``out[n, c, i, j] = maps[n, c](i + dy, j + dx)``.
    """
    n, c, h, w = maps.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=maps.dtype, device=maps.device),
        torch.arange(w, dtype=maps.dtype, device=maps.device),
        indexing="ij",
    )
    y, x = gy + offsets[:, :, 0], gx + offsets[:, :, 1]  # [N, C, H, W] pixel coordinates
    grid = torch.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], dim=-1)  # align_corners=False
    out = F.grid_sample(
        maps.reshape(n * c, 1, h, w), grid.reshape(n * c, h, w, 2),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )
    return out.view(n, c, h, w)


class PedFCOS(FCOS):
    """torchvision FCOS with pedcrowd's losses (``assigner``) and label 1 for pedestrians.

    Training targets: ``boxes`` [K, 4] xyxy, ``labels`` [K] (unused: one class),
    optional ``ignore_boxes`` [M, 4] xyxy.
    """

    assigner: str = "fcos"
    dw_prior_sigma: float = 1.11
    dw_neg_overlap: str = "min"

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int],
    ) -> dict[str, Tensor]:
        # the losses in float32 with autocast off (under autocast the head's outputs are half
        # precision; pedcrowd.precision)
        with full_precision(anchors[0].device.type):
            return self._float32_loss(
                targets, {k: v.float() for k, v in head_outputs.items()}, anchors, num_anchors_per_level
            )

    def _float32_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_anchors_per_level: list[int],
    ) -> dict[str, Tensor]:
        if self.assigner == "dw":
            return dw_loss(
                head_outputs, anchors, targets, self.box_coder,
                prior_sigma=self.dw_prior_sigma, neg_overlap=self.dw_neg_overlap,
            )
        matched = [
            fcos_match(a, t["boxes"], num_anchors_per_level, self.center_sampling_radius)
            for a, t in zip(anchors, targets, strict=True)
        ]
        return fcos_loss(head_outputs, anchors, targets, matched, self.box_coder)

    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        with full_precision(anchors[0][0].device.type):  # thresholds and NMS in float32
            dets = super().postprocess_detections(
                {k: [at_least_float32(v) for v in levels] for k, levels in head_outputs.items()},
                anchors, image_shapes,
            )
        for d in dets:
            d["labels"] = d["labels"] + 1  # the one logit is the pedestrian class
        return dets
