"""torchvision's own Faster R-CNN built from a pedcrowd detector's modules and weights:
the reference side of the training-step benchmarks (``scripts/bench_train.py``,
``scripts/gpu_check.py``), so that both time the same network."""

from __future__ import annotations

import copy

import torch


def build_plain_torchvision(ped_model: torch.nn.Module, cfg) -> torch.nn.Module:
    """A stock torchvision ``FasterRCNN`` with the same modules and weights as ``ped_model``."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    m = cfg.model
    pool = ped_model.roi_heads.box_roi_pool
    plain = FasterRCNN(
        copy.deepcopy(ped_model.backbone),
        num_classes=None,
        min_size=m.min_size, max_size=m.max_size,
        image_mean=ped_model.transform.image_mean, image_std=ped_model.transform.image_std,
        rpn_anchor_generator=AnchorGenerator(
            ped_model.rpn.anchor_generator.sizes, ped_model.rpn.anchor_generator.aspect_ratios
        ),
        rpn_head=copy.deepcopy(ped_model.rpn.head),
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
        rpn_nms_thresh=m.rpn_nms_thresh,
        rpn_fg_iou_thresh=m.rpn_fg_iou_thresh, rpn_bg_iou_thresh=m.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
        rpn_positive_fraction=m.rpn_positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(pool.featmap_names, pool.output_size, pool.sampling_ratio),
        box_head=copy.deepcopy(ped_model.roi_heads.box_head),
        box_predictor=copy.deepcopy(ped_model.roi_heads.box_predictor),
        box_score_thresh=m.box_score_thresh, box_nms_thresh=m.box_nms_thresh,
        box_detections_per_img=m.box_detections_per_img,
        box_fg_iou_thresh=m.box_fg_iou_thresh, box_bg_iou_thresh=m.box_bg_iou_thresh,
        box_batch_size_per_image=m.box_batch_size_per_image,
        box_positive_fraction=m.box_positive_fraction,
    )
    plain.load_state_dict(ped_model.state_dict())  # same names: same weights
    return plain
