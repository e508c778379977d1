"""The ignore-region rule at both stages, on hand-built anchors, proposals and ignore boxes.

Each case is compared with torchvision's own labelling, which calls the anchors
and proposals inside ignore regions background.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead

from pedcrowd.box_torch import box_ioa as intersection_over_area
from pedcrowd.model.ignore import exclude_ignored_negatives
from pedcrowd.model.roi_heads import PedRoIHeads
from pedcrowd.model.rpn import PedRegionProposalNetwork

GT = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
IGNORE = torch.tensor([[100.0, 0.0, 140.0, 40.0]])
# anchors / proposals, with the label each must get (1 pos, 0 neg, -1 not sampled)
BOXES = torch.tensor(
    [
        [0.0, 0.0, 10.0, 20.0],  # 0: the GT itself -> positive
        [105.0, 5.0, 115.0, 25.0],  # 1: fully inside the ignore box -> not sampled
        [90.0, 0.0, 110.0, 20.0],  # 2: IoA exactly 0.5 -> not sampled
        [92.0, 0.0, 110.0, 20.0],  # 3: IoA 10/18 = 0.556 -> not sampled
        [88.0, 0.0, 108.0, 20.0],  # 4: IoA 8/20 = 0.4 -> negative
        [200.0, 0.0, 210.0, 20.0],  # 5: far from everything -> negative
    ]
)
PED_LABELS = [1, -1, -1, -1, 0, 0]
TORCHVISION_LABELS = [1, 0, 0, 0, 0, 0]


def test_intersection_over_area_hand_values():
    regions = torch.tensor([[5.0, 0.0, 20.0, 10.0], [0.0, 0.0, 2.0, 5.0], [50.0, 50.0, 60.0, 60.0]])
    ioa = intersection_over_area(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), regions)
    # overlaps: 5x10 of 100, 2x5 of 100, none
    torch.testing.assert_close(ioa, torch.tensor([[0.5, 0.1, 0.0]]))
    # over the box's own area, not the region's: a small box inside a big region is 1
    big = torch.tensor([[-100.0, -100.0, 100.0, 100.0]])
    assert intersection_over_area(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), big).item() == 1.0


def test_exclude_ignored_negatives_keeps_positives_and_dtype():
    labels = torch.tensor([1, 0, 0, 0, 0, 0])
    out = exclude_ignored_negatives(labels, BOXES, IGNORE)
    assert out.tolist() == PED_LABELS and out.dtype == torch.int64
    # a positive inside an ignore region stays positive
    assert exclude_ignored_negatives(torch.tensor([1]), BOXES[1:2], IGNORE).tolist() == [1]
    # no ignore boxes: unchanged
    assert exclude_ignored_negatives(labels, BOXES, torch.zeros(0, 4)).tolist() == labels.tolist()
    assert exclude_ignored_negatives(labels, BOXES, None).tolist() == labels.tolist()


def _rpn(cls, batch_size: int = 256):
    anchor_generator = AnchorGenerator(((16,),), ((2.44,),))
    return cls(
        anchor_generator,
        RPNHead(8, 1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=batch_size,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 100, "testing": 100},
        post_nms_top_n={"training": 100, "testing": 100},
        nms_thresh=0.7,
    )


def test_rpn_ignore_rule_vs_torchvision():
    targets = [{"boxes": GT, "labels": torch.ones(1, dtype=torch.int64), "ignore_boxes": IGNORE}]
    labels, matched_boxes, matched_gt = _rpn(PedRegionProposalNetwork).assign_targets_with_ignore(
        [BOXES], targets
    )
    assert labels[0].tolist() == PED_LABELS
    assert matched_gt[0].tolist() == [0, -1, -1, -1, -1, -1]
    torch.testing.assert_close(matched_boxes[0][0], GT[0])

    tv_labels, _ = _rpn(RegionProposalNetwork).assign_targets_to_anchors([BOXES], targets)
    assert (
        tv_labels[0].tolist() == TORCHVISION_LABELS
    )  # torchvision: ignored anchors are background

    # the sampler (batch large enough to take everything) never draws them as negatives
    rpn = _rpn(PedRegionProposalNetwork)
    pos, neg = rpn.fg_bg_sampler(labels)
    assert torch.where(pos[0])[0].tolist() == [0]
    assert torch.where(neg[0])[0].tolist() == [4, 5]
    _, tv_neg = rpn.fg_bg_sampler(tv_labels)
    assert torch.where(tv_neg[0])[0].tolist() == [1, 2, 3, 4, 5]


def test_rpn_positive_inside_ignore_kept_or_dropped():
    gt = torch.tensor([[105.0, 5.0, 115.0, 25.0]])  # a real person inside a group region
    targets = [{"boxes": gt, "labels": torch.ones(1, dtype=torch.int64), "ignore_boxes": IGNORE}]
    rpn = _rpn(PedRegionProposalNetwork)
    rpn.drop_ignored_positives = False  # ignore_positives: keep
    labels, _, matched_gt = rpn.assign_targets_with_ignore([BOXES], targets)
    # anchor 1 is that person: positive; 2 and 3 are ignored, 0, 4 and 5 background
    assert labels[0].tolist() == [0, 1, -1, -1, 0, 0]
    assert matched_gt[0].tolist() == [-1, 0, -1, -1, -1, -1]
    # the default, as the official assigner: a positive inside the ignore region is dropped
    labels, _, matched_gt = _rpn(PedRegionProposalNetwork).assign_targets_with_ignore(
        [BOXES], targets
    )
    assert labels[0].tolist() == [0, -1, -1, -1, 0, 0]
    assert matched_gt[0].tolist() == [-1] * 6


def test_rpn_ignore_only_and_empty_images():
    empty = torch.zeros(0, 4)
    no_labels = torch.zeros(0, dtype=torch.int64)
    rpn = _rpn(PedRegionProposalNetwork)
    ignore_only = [{"boxes": empty, "labels": no_labels, "ignore_boxes": IGNORE}]
    labels, _, matched_gt = rpn.assign_targets_with_ignore([BOXES], ignore_only)
    assert labels[0].tolist() == [0, -1, -1, -1, 0, 0]
    assert matched_gt[0].tolist() == [-1] * 6
    background = [{"boxes": empty, "labels": no_labels}]
    labels, _, matched_gt = rpn.assign_targets_with_ignore([BOXES], background)
    assert labels[0].tolist() == [0] * 6


def _roi_heads(cls):
    return cls(
        None,
        None,
        None,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=512,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
    )


def _ped_samples(heads, targets):
    """PedRoIHeads' assignment and default sampler: per image the sampled proposals,
    their matched GT index and labels (torchvision's select_training_samples' outputs)."""
    from pedcrowd.losses.standard import SamplerContext

    props, matched, labels = heads.assign_proposals([BOXES], targets)
    rows = heads.criterion.sampler.select(SamplerContext(props, labels, heads.fg_bg_sampler, None))
    return (
        [p[r] for p, r in zip(props, rows, strict=True)],
        [m[r] for m, r in zip(matched, rows, strict=True)],
        [lab[r] for lab, r in zip(labels, rows, strict=True)],
    )


def test_second_stage_ignore_rule_vs_torchvision():
    targets = [{"boxes": GT, "labels": torch.ones(1, dtype=torch.int64), "ignore_boxes": IGNORE}]
    torch.manual_seed(0)
    props, matched, labels = _ped_samples(_roi_heads(PedRoIHeads), targets)
    torch.manual_seed(0)
    tv_props, _, tv_labels, _ = _roi_heads(RoIHeads).select_training_samples([BOXES], targets)

    def as_set(boxes, labs):
        return {(tuple(b.tolist()), int(lab)) for b, lab in zip(boxes, labs, strict=True)}

    gt_row = (tuple(GT[0].tolist()), 1)  # the GT is appended to the proposals
    ped = as_set(props[0], labels[0])
    tv = as_set(tv_props[0], tv_labels[0])
    expected = {(tuple(BOXES[i].tolist()), lab) for i, lab in enumerate(PED_LABELS) if lab >= 0}
    assert ped == expected | {gt_row}
    ignored = {(tuple(BOXES[i].tolist()), 0) for i in (1, 2, 3)}
    assert tv == ped | ignored  # torchvision samples the ignored proposals as background
    assert len(props[0]) == 4 and len(tv_props[0]) == 7
    assert set(matched[0][labels[0] > 0].tolist()) == {0}


def test_second_stage_ignore_only_image():
    targets = [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "ignore_boxes": IGNORE,
        }
    ]
    props, _, labels = _ped_samples(_roi_heads(PedRoIHeads), targets)
    assert labels[0].tolist() == [0, 0, 0]
    assert sorted(p[0] for p in props[0].tolist()) == [0.0, 88.0, 200.0]
