"""The ``model:`` section of the training config.

The defaults are the CPU demo detector (``tiny_fpn``) except the input size
(192 x 384 here, 256 x 512 in the demo), ``box_batch_size_per_image`` (256
here, 64 in the demo) and ``box_positive_fraction`` (0.25 here, 0.5 in the
demo): the demo's values are ``DEMO_MODEL`` in :mod:`pedcrowd.engine.config`,
and a config file's model section starts from them. The paper-sized configs
override ``backbone``, ``weights``, the input sizes and
``anchor_sizes`` (one size per feature level of the chosen backbone, see
:data:`pedcrowd.model.backbones.NUM_LEVELS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """Detector architecture and its training/inference thresholds."""

    # faster_rcnn (two-stage, the default) | fcos (torchvision FCOS, one stage: pedcrowd.model.fcos).
    # fcos uses backbone, weights, trainable_layers, min/max_size, box_score_thresh,
    # box_nms_thresh, box_detections_per_img and the fcos_*/dw_* fields; the anchor, rpn_*
    # and other box_* fields are Faster R-CNN's
    arch: Literal["faster_rcnn", "fcos"] = "faster_rcnn"
    # fcos only: fcos (FCOS's own centre-sampling assignment) | dw (Dual Weighting,
    # pedcrowd.losses.dw); null: the arch's own (fcos for arch fcos; Faster R-CNN has its
    # RPN and RoI matchers, so a Faster R-CNN config leaves it null)
    assigner: Literal["fcos", "dw"] | None = None
    # resnet50_fpn | resnet18_fpn | mobilenet_v3_fpn | tiny_fpn (CPU demo, no pretrained weights)
    backbone: str = "tiny_fpn"
    # none (random init) | imagenet (torchvision's backbone weights: the torch hub cache's file,
    # else downloaded and hash-checked; PEDCROWD_OFFLINE=1 forbids downloads) | coco
    # (torchvision's COCO detector, resnet50_fpn only: background + person rows, see
    # pedcrowd.model.pretrained) | PATH (a pedcrowd checkpoint or a torchvision detector state dict)
    weights: str = "none"
    # backbone stages left trainable when starting from imagenet or a checkpoint (resnet 0-5,
    # mobilenet 0-6; BatchNorm is then frozen); with weights none every stage trains
    # (random frozen layers learn nothing); tiny_fpn always trains everything
    trainable_layers: int = field(default=3, metadata={"range": ">= 0"})
    # torchvision's transform resizes each image so its short side is min_size, capped by max_size
    min_size: int = field(default=192, metadata={"range": ">= 1"})
    max_size: int = field(default=384, metadata={"range": ">= 1"})
    # training only: scale every (augmented, e.g. cropped) image by this factor instead of
    # resizing it to min_size (the official NMS-Loss crops, then trains at 1x on
    # CityPersons, 2x on Caltech); null: as at test
    train_scale: float | None = field(default=None, metadata={"range": "> 0"})
    # anchor size (sqrt of its area, input pixels; its height is 1.56x that) per feature
    # level, finest first: tiny_fpn has 3 levels, resnet*_fpn 5, mobilenet_v3_fpn 3
    anchor_sizes: tuple[int, ...] = field(default=(20, 40, 80), metadata={"range": ">= 1"})
    # torchvision aspect ratios are h / w: 2.44 is the pedestrian w / h = 0.41
    aspect_ratios: tuple[float, ...] = field(default=(2.44,), metadata={"range": "> 0"})
    # RPN: proposals kept per level before NMS and in total after NMS, in training and at test
    rpn_pre_nms_top_n_train: int = field(default=1000, metadata={"range": ">= 1"})
    rpn_post_nms_top_n_train: int = field(default=500, metadata={"range": ">= 1"})
    rpn_pre_nms_top_n_test: int = field(default=500, metadata={"range": ">= 1"})
    rpn_post_nms_top_n_test: int = field(default=300, metadata={"range": ">= 1"})
    rpn_nms_thresh: float = field(default=0.7, metadata={"range": "(0, 1]"})
    # anchors with IoU >= fg are positives, < bg negatives (ignore regions aside)
    rpn_fg_iou_thresh: float = field(default=0.7, metadata={"range": "[0, 1]"})
    rpn_bg_iou_thresh: float = field(default=0.3, metadata={"range": "[0, 1]"})
    # anchors sampled per image for the RPN losses and the positive share of them
    rpn_batch_size_per_image: int = field(default=256, metadata={"range": ">= 1"})
    rpn_positive_fraction: float = field(default=0.5, metadata={"range": "(0, 1]"})
    # second stage: proposals with IoU >= fg are positives, < bg negatives
    box_fg_iou_thresh: float = field(default=0.5, metadata={"range": "[0, 1]"})
    box_bg_iou_thresh: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # RoIs sampled per image for the second-stage losses and the positive share of them
    # (256, not torchvision's 512: RoIAlign's backward dominates a CPU step; still 64 positives
    # max; the CPU demo lowers it further to 64, see DEMO_MODEL in pedcrowd.engine.config)
    box_batch_size_per_image: int = field(default=256, metadata={"range": ">= 1"})
    box_positive_fraction: float = field(default=0.25, metadata={"range": "(0, 1]"})
    # inference: detections below this score are dropped before NMS
    box_score_thresh: float = field(default=0.05, metadata={"range": "[0, 1]"})
    # the test NMS IoU threshold; NMS-Loss simulates NMS with the same value
    box_nms_thresh: float = field(default=0.5, metadata={"range": "(0, 1]"})
    box_detections_per_img: int = field(default=100, metadata={"range": ">= 1"})
    # a positive anchor/proposal lying (IoA >= 0.5) inside an ignore region: drop it from
    # training (the official NMS-Loss assigner) or keep it positive (pedcrowd 0.1)
    ignore_positives: Literal["keep", "drop"] = "drop"
    # width of the two-layer MLP box head
    representation_size: int = field(default=256, metadata={"range": ">= 1"})
    # fcos: convolutions (+ GroupNorm 32) in each head branch (torchvision: 4)
    fcos_num_convs: int = field(default=4, metadata={"range": ">= 0"})
    # fcos assigner: a positive's point lies within this many strides of its GT's centre
    fcos_center_sampling_radius: float = field(default=1.5, metadata={"range": "> 0"})
    # fcos inference: top-scoring locations kept per level before NMS
    fcos_topk_candidates: int = field(default=1000, metadata={"range": ">= 1"})
    # dw: the box-refinement branch (the official default, reg_refine=True)
    dw_refine: bool = True
    # dw: the Gaussian centre prior's sigma, in strides (official 1.11)
    dw_prior_sigma: float = field(default=1.11, metadata={"range": "> 0"})
    # dw: P_neg of a location inside several GTs: min over them | last (the official code's CPU outcome)
    dw_neg_overlap: Literal["min", "last"] = "min"
    # KL-Loss head (Softer-NMS): also predict log(sigma^2) of each box edge, and regress
    # the edges (x1, y1, x2, y2) instead of centre/size, as the official KL-Loss configs
    # (XYXY); --box-loss kl turns it on; needed by postprocess.var_voting
    box_std_head: bool = False

    def __post_init__(self) -> None:
        if self.arch == "fcos" and self.assigner is None:  # the saved config names what ran
            self.assigner = "fcos"

    def validate(self) -> None:
        """The relations between fields (each field's own range is its metadata)."""
        for stage in ("rpn", "box"):
            fg, bg = getattr(self, f"{stage}_fg_iou_thresh"), getattr(self, f"{stage}_bg_iou_thresh")
            if fg < bg:
                raise ValueError(
                    f"'{stage}_fg_iou_thresh' {fg} must be >= '{stage}_bg_iou_thresh' {bg} "
                    "(a proposal cannot be both a positive and a negative)"
                )
        for name in ("anchor_sizes", "aspect_ratios"):
            if len(getattr(self, name)) == 0:
                raise ValueError(f"'{name}' must not be empty")


@dataclass
class PostprocessConfig:
    """The ``postprocess:`` section: how the second stage turns scored boxes into detections.

    Used by the evaluation during training, ``pedcrowd infer`` and every command
    that runs a model; stored in the checkpoint's config. The score and NMS
    thresholds and the detection cap stay in ``model:`` (``box_score_thresh``,
    ``box_nms_thresh``, ``box_detections_per_img``). See
    :mod:`pedcrowd.model.postprocess` for the algorithms.
    """

    # hard: torchvision's NMS (the default, bit-identical to plain torchvision);
    # soft-linear: score *= 1 - IoU above box_nms_thresh; soft-gaussian: score *= exp(-IoU^2 / soft_sigma)
    nms: Literal["hard", "soft-linear", "soft-gaussian"] = "hard"
    soft_sigma: float = field(default=0.5, metadata={"range": "> 0"})  # official TEST.SOFT_NMS.SIGMA
    # soft-NMS drops boxes decayed below this (official KL-Loss value)
    score_floor: float = field(default=0.001, metadata={"range": "[0, 1)"})
    # variance voting (Softer-NMS): needs a model trained with the KL head (--box-loss kl)
    var_voting: bool = False
    # the vote's IoU kernel exp(-(1 - IoU)^2 / sigma_t) (official STD.IOU_SIGMA)
    sigma_t: float = field(default=0.01, metadata={"range": "> 0"})
    # which boxes vote: official = IoU > 0.01 with the selected box; nt = IoU > box_nms_thresh (the seed's rule)
    vote_neighbours: Literal["official", "nt"] = "official"

    def describe(self) -> str:
        """Short label for logs and result metadata, e.g. ``soft-gaussian+var-voting``."""
        return self.nms + ("+var-voting" if self.var_voting else "")
