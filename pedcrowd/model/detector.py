"""``build_model``: the one-class (pedestrian) torchvision Faster R-CNN of pedcrowd.

``model.arch: fcos`` builds the one-stage FCOS of :mod:`pedcrowd.model.fcos` instead.

torchvision's ``FasterRCNN`` with three parts swapped for pedcrowd's: the input
transform (scales ignore boxes too), the RPN and the RoI heads (ignore-aware
sampling and the crowd-loss seam). Parameter names are torchvision's, so its
detector state dicts load directly.
"""

from __future__ import annotations

import logging

import torch
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, RPNHead, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.config import LossConfig
from pedcrowd.losses.criterion import StageCriterion, build_criteria
from pedcrowd.model.backbones import ROI_FEATURE_NAMES, backbone_levels, build_backbone
from pedcrowd.model.config import ModelConfig
from pedcrowd.model.fcos import build_fcos
from pedcrowd.model.pretrained import load_coco_into
from pedcrowd.model.roi_heads import PedRoIHeads
from pedcrowd.model.rpn import PedRegionProposalNetwork
from pedcrowd.model.transform import IMAGE_MEAN, IMAGE_STD, PedTransform
from pedcrowd.model.weights import load_weights
from pedcrowd.precision import Float32AnchorGenerator

log = logging.getLogger(__name__)

NUM_CLASSES = 2  # background + pedestrian
ROI_OUTPUT_SIZE = 7


def build_model(
    cfg: ModelConfig, *, loss: LossConfig | None = None, load: bool = True
) -> torch.nn.Module:
    """The detector described by ``cfg``, with ``cfg.weights`` loaded and the training
    criteria of the ``loss:`` section ``loss`` (None: torchvision's own losses), built
    once here.

    ``cfg.arch == "fcos"``: :func:`pedcrowd.model.fcos.build_fcos`; otherwise:

    Returns a torchvision ``FasterRCNN`` (2 classes) whose ``rpn`` is a
    :class:`PedRegionProposalNetwork`, ``roi_heads`` a :class:`PedRoIHeads` and
    ``transform`` a :class:`PedTransform`. Training targets: ``boxes`` [K, 4]
    xyxy, ``labels`` [K] (all 1), optional ``ignore_boxes`` [M, 4] xyxy.

    ``load=False``: the layers ``cfg.weights`` implies (a pretrained start trains with
    frozen BatchNorm), nothing loaded, for a checkpoint's tensors to replace.

    Raises:
        PedcrowdError: unknown backbone, anchor sizes that do not fit its levels,
            missing or unreadable weights.
    """
    if cfg.arch == "fcos":  # its loss is model.assigner's
        _check_no_two_stage_losses(loss, cfg)
        return build_fcos(cfg, load=load)
    if cfg.assigner not in (None, "fcos"):  # fcos: what configs of pedcrowd <= 0.1 saved
        raise PedcrowdError(
            f"model.assigner: {cfg.assigner!r} is for model.arch fcos (Faster R-CNN has its own "
            "RPN and RoI matchers); set model.arch: fcos or model.assigner: null"
        )
    levels = backbone_levels(cfg.backbone)
    if len(cfg.anchor_sizes) != levels:
        raise PedcrowdError(
            f"model.anchor_sizes: {cfg.backbone} has {levels} feature levels, got {len(cfg.anchor_sizes)} sizes "
            f"{list(cfg.anchor_sizes)}; give one size per level, finest first"
        )
    weights = str(cfg.weights)
    backbone = build_backbone(cfg.backbone, weights, cfg.trainable_layers, load=load)
    rpn_criterion, roi_criterion = _criteria(loss, cfg)

    anchor_generator = Float32AnchorGenerator(
        sizes=tuple((int(s),) for s in cfg.anchor_sizes),
        aspect_ratios=(tuple(float(r) for r in cfg.aspect_ratios),) * levels,
    )
    rpn_head = RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0])
    box_roi_pool = MultiScaleRoIAlign(
        ROI_FEATURE_NAMES[cfg.backbone], output_size=ROI_OUTPUT_SIZE, sampling_ratio=2
    )
    box_head = TwoMLPHead(backbone.out_channels * ROI_OUTPUT_SIZE**2, cfg.representation_size)
    box_predictor = FastRCNNPredictor(cfg.representation_size, NUM_CLASSES)

    # FasterRCNN wires the backbone; the three parts it builds from these modules are then
    # replaced by pedcrowd's subclasses around the very same head modules.
    model = FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchor_generator,
        rpn_head=rpn_head,
        box_roi_pool=box_roi_pool,
        box_head=box_head,
        box_predictor=box_predictor,
    )
    model.transform = PedTransform(
        cfg.min_size, cfg.max_size, IMAGE_MEAN, IMAGE_STD, train_scale=cfg.train_scale
    )
    model.rpn = PedRegionProposalNetwork(
        anchor_generator,
        rpn_head,
        fg_iou_thresh=cfg.rpn_fg_iou_thresh,
        bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        batch_size_per_image=cfg.rpn_batch_size_per_image,
        positive_fraction=cfg.rpn_positive_fraction,
        pre_nms_top_n={
            "training": cfg.rpn_pre_nms_top_n_train,
            "testing": cfg.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": cfg.rpn_post_nms_top_n_train,
            "testing": cfg.rpn_post_nms_top_n_test,
        },
        nms_thresh=cfg.rpn_nms_thresh,
        drop_ignored_positives=cfg.ignore_positives == "drop",
        criterion=rpn_criterion,
    )
    model.roi_heads = PedRoIHeads(
        box_roi_pool,
        box_head,
        box_predictor,
        fg_iou_thresh=cfg.box_fg_iou_thresh,
        bg_iou_thresh=cfg.box_bg_iou_thresh,
        batch_size_per_image=cfg.box_batch_size_per_image,
        positive_fraction=cfg.box_positive_fraction,
        bbox_reg_weights=None,
        score_thresh=cfg.box_score_thresh,
        nms_thresh=cfg.box_nms_thresh,
        detections_per_img=cfg.box_detections_per_img,
        drop_ignored_positives=cfg.ignore_positives == "drop",
        box_std_head=cfg.box_std_head,
        criterion=roi_criterion,
    )
    if not load:
        return model
    if weights == "coco":
        load_coco_into(model, cfg)
    elif weights not in ("none", "imagenet"):
        report = load_weights(model, weights)
        log.info("loaded %s: %d tensors", weights, len(report.loaded))
    return model


def _criteria(loss: LossConfig | None, cfg: ModelConfig) -> tuple[StageCriterion, StageCriterion]:
    """The RPN's and the RoI head's criteria for ``loss`` on the detector ``cfg``."""
    return build_criteria(loss, {"box_nms_thresh": cfg.box_nms_thresh})


def install_criteria(model: torch.nn.Module, cfg: ModelConfig, loss: LossConfig | None = None) -> None:
    """Replace the training criteria of a built detector by those of the ``loss:`` section
    ``loss`` (None: torchvision's own losses, no crowd loss). A new model gets its
    criteria from :func:`build_model` (``loss=``); this is for trying several loss
    settings on one model."""
    if not hasattr(model, "roi_heads"):  # model.arch fcos: its loss is model.assigner's
        _check_no_two_stage_losses(loss, cfg)
        return
    model.rpn.criterion, model.roi_heads.criterion = _criteria(loss, cfg)


def _check_no_two_stage_losses(loss: LossConfig | None, cfg: ModelConfig) -> None:
    """Refuse a ``loss:`` section that changes anything of Faster R-CNN's losses (FCOS has none)."""
    if loss is None:
        return
    rpn, roi = _criteria(loss, cfg)
    default = LossConfig()
    changed = [
        f"loss.{key}={getattr(loss, key)}"
        for key in ("cls", "box", "sampler", "rpn_cls", "rpn_box",
                    "cls_weight", "box_weight", "rpn_cls_weight", "rpn_box_weight")
        if getattr(loss, key) != getattr(default, key)
    ]
    changed += [f"loss.{name}" for name in {**rpn.extras, **roi.extras}]
    if changed:
        raise PedcrowdError(
            f"loss: {', '.join(changed)} act on Faster R-CNN's RPN and RoI head; model.arch "
            f"{cfg.arch} trains with model.assigner (leave the loss section at its defaults)"
        )
