"""NMS-Loss at its two stages: the RoI candidate sets, the official RPN candidate set and
assignment, the simulated NMS threshold, and the paper configs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from pedcrowd.losses import LossConfig, apply_loss_preset
from pedcrowd.losses.config import set_loss_fields
from pedcrowd.losses.criterion import StageCriterion
from pedcrowd.losses.nms_loss import assign_by_anchor_iou, rpn_candidates
from pedcrowd.losses.samples import StageSamples
from pedcrowd.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]
CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _roi_stage(sampled) -> StageSamples:
    """One image, one person (GT [0,0,10,20]) with three positive RoIs: the best box,
    a duplicate at IoU 0.4 that NMS (0.5) keeps, and a far background row."""
    boxes = t([[0, 0, 10, 20], [0, 0, 10, 8], [50, 50, 60, 60]])
    deltas = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)  # pred = proposal
    logit = torch.logit(t([0.9, 0.8, 0.3]))
    return StageSamples(
        stage="roi", boxes=boxes, image_index=torch.zeros(3, dtype=torch.long),
        labels=torch.tensor([1, 1, 0]), matched_gt=torch.tensor([0, 0, -1]),
        class_logits=torch.stack([torch.zeros(3, dtype=torch.float64), logit], 1),
        deltas=deltas, target_deltas=torch.zeros(3, 4, dtype=torch.float64),
        gt_boxes=t([[0, 0, 10, 20]]), gt_image_index=torch.zeros(1, dtype=torch.long),
        ignore_boxes=[t([]).reshape(0, 4)], image_sizes=[(100, 100)],
        sampled=torch.tensor(sampled), box_coder=CODER,
    )  # fmt: skip


SMALL = ModelConfig(
    min_size=96, max_size=192, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=64,
    representation_size=64,
)  # fmt: skip
PEOPLE = [[20.0, 20.0, 40.0, 70.0], [30.0, 22.0, 50.0, 72.0], [120.0, 10.0, 150.0, 85.0]]


def _images(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 96, 192, generator=g) for _ in range(n)]


def _target(boxes) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "labels": torch.ones(len(boxes), dtype=torch.int64)}


class _Recorder:
    """A stage criterion that keeps the StageSamples it saw (test only)."""

    def __init__(self, inner, seen) -> None:
        self.inner, self.seen = inner, seen

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, s):
        self.seen["s"] = s
        return self.inner(s)


def _nms(**fields):
    base = {"nms.add_gt": False, **{f"nms.{k}": v for k, v in fields.items()}}
    return set_loss_fields(apply_loss_preset(LossConfig(), "nms"), base)


def test_candidates_all_pulls_a_duplicate_the_sampler_dropped():
    sampled = [True, False, True]  # the random sampler left the duplicate out
    losses = StageCriterion("roi", _nms(candidates="sampled"))(_roi_stage(sampled))
    assert losses["loss_nms_pull"].item() == 0.0  # a single positive: nothing to simulate
    s = _roi_stage(sampled)
    losses = StageCriterion("roi", _nms(candidates="all"))(s)
    # the duplicate (IoU 80/200 = 0.4) survives NMS 0.5: pull -ln(0.5 + 0.4) * 0.8, weight 0.1
    assert losses["loss_nms_pull"].item() == pytest.approx(0.1 * -torch.log(t(0.9)).item() * 0.8, rel=1e-5)
    losses["loss_nms_pull"].backward()
    assert s.deltas.grad[1].abs().sum() > 0 and s.deltas.grad[0].abs().sum() == 0
    # the classification and box losses still see the sampled rows only
    ce = StageCriterion("roi", _nms(candidates="all"))(_roi_stage(sampled))["loss_classifier"]
    logits = _roi_stage(sampled).class_logits[[0, 2]]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]))
    assert ce.item() == pytest.approx(expected.item())


def test_roi_head_runs_the_box_head_on_every_positive_when_asked():
    from pedcrowd.model import build_model, install_criteria

    counts = {}
    for candidates in ("sampled", "all"):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(SMALL, box_batch_size_per_image=8)).train()
        install_criteria(model, SMALL, _nms(candidates=candidates))
        seen = {}
        inner = model.roi_heads.criterion
        model.roi_heads.criterion = _Recorder(inner, seen)
        torch.manual_seed(3)
        model(_images(1), [_target(PEOPLE)])
        s = seen["s"]
        counts[candidates] = (int(s.sampled.sum()), int(s.positive.sum()), len(s.labels))
    # the same 8 sampled rows (same seed); with "all" every other positive proposal is added
    assert counts["sampled"][0] == counts["all"][0] == 8
    assert counts["sampled"][2] == 8
    assert counts["all"][1] > counts["sampled"][1] and counts["all"][2] > 8


def test_nms_thresh_follows_the_model_at_the_roi_stage(caplog):
    cfg = _nms()
    assert cfg.nms.nms_thresh is None
    roi = StageCriterion("roi", cfg, {"box_nms_thresh": 0.6})
    rpn = StageCriterion("rpn", dataclasses.replace(cfg, nms=dataclasses.replace(cfg.nms, stage="rpn")),
                         {"box_nms_thresh": 0.6})  # fmt: skip
    assert roi.extras["nms"][1].nms_thresh == 0.6  # the NMS it simulates
    assert rpn.extras["nms"][1].nms_thresh == 0.5  # the official RPN value
    with caplog.at_level(logging.WARNING):
        StageCriterion("roi", _nms(nms_thresh=0.7), {"box_nms_thresh": 0.5})
    assert "differs from model.box_nms_thresh" in caplog.text


def test_assignment_is_mmdetections_max_iou_assigner():
    gts = t([[0, 0, 10, 20], [100, 0, 110, 20]])
    anchors = t([
        [0, 0, 10, 20],    # IoU 1 with GT 0
        [0, 0, 10, 12],    # IoU 0.6 with GT 0
        [0, 0, 10, 8],     # IoU 0.4: negative
        [100, 0, 110, 11],  # IoU 0.55 with GT 1: also GT 1's best -> positive
        [200, 0, 210, 20],  # nothing
        [0, 0, 10, 20],    # a copy of anchor 0, inside an ignore region: dropped
    ])  # fmt: skip
    ignore = t([[-5, -5, 5, 25]])  # covers half of anchor 0 and 5 (IoA exactly 0.5: kept)
    assert assign_by_anchor_iou(anchors, gts, ignore, 0.5).tolist() == [0, 0, -1, 1, -1, 0]
    ignore = t([[-5, -5, 6, 25]])  # IoA 0.6 > 0.5: anchors 0, 1, 2, 5 ignored
    assert assign_by_anchor_iou(anchors, gts, ignore, 0.5).tolist() == [-1, -1, -1, 1, -1, -1]
    assert assign_by_anchor_iou(anchors, gts[:0], ignore, 0.5).tolist() == [-1] * 6
    # a GT whose best candidate is below the threshold gets none (min_pos_iou = 0.5)
    assert assign_by_anchor_iou(anchors[2:3], gts[:1], t([]).reshape(0, 4), 0.5).tolist() == [-1]


def _rpn_stage() -> StageSamples:
    """Two images of five anchors each; scores set through the objectness logits."""
    anchors = t([
        [0, 0, 10, 60], [1, 0, 11, 60], [0, 0, 10, 30], [200, 0, 210, 60], [2, 0, 12, 60],
    ])  # fmt: skip
    scores = t([0.9, 0.004, 0.8, 0.7, 0.6, 0.95, 0.9, 0.85, 0.8, 0.75])
    return StageSamples(
        stage="rpn", boxes=torch.cat([anchors, anchors]),
        image_index=torch.tensor([0] * 5 + [1] * 5),
        labels=torch.zeros(10, dtype=torch.long), matched_gt=torch.full((10,), -1),
        class_logits=torch.logit(scores)[:, None].requires_grad_(),
        deltas=torch.zeros(10, 4, dtype=torch.float64, requires_grad=True),
        target_deltas=torch.zeros(10, 4, dtype=torch.float64),
        gt_boxes=t([[0, 0, 10, 60], [0, 0, 10, 60]]), gt_image_index=torch.tensor([0, 1]),
        ignore_boxes=[t([]).reshape(0, 4)] * 2, image_sizes=[(55, 100), (100, 100)],
        sampled=torch.zeros(10, dtype=torch.bool), box_coder=CODER,
    )  # fmt: skip


def test_rpn_candidate_set_is_the_official_one():
    options = dataclasses.replace(
        _nms().nms, stage="rpn", rpn_min_score=0.005, rpn_pre_top_n=4, rpn_top_n=2,
        rpn_min_height=50.0, nms_thresh=0.5,
    )  # fmt: skip
    p = rpn_candidates(_rpn_stage(), options)
    # Image 0: anchor 1 scores under 0.005; the best 4 of the rest are 0, 2, 3, 4; clipped
    # to the 55-px-high image their heights are 55, 30, 55, 55: anchor 2 is under 50 px;
    # the best 2 left are anchors 0 and 3; only anchor 0 matches the GT (anchor 3 is far).
    # Image 1 (100 px high, no clipping): best 4 are 5..8 (anchors 0, 1, 2, 3); under 50 px:
    # anchor 2; best 2 left: anchors 0 and 1, both IoU >= 0.5 with GT 1.
    assert p.image_index.tolist() == [0, 1, 1]
    assert p.gt_index.tolist() == [0, 1, 1]
    torch.testing.assert_close(p.pred_boxes[0], t([0, 0, 10, 55]))  # decoded and clipped
    torch.testing.assert_close(p.scores.detach(), t([0.9, 0.95, 0.9]))
    assert p.pred_boxes.requires_grad and p.scores.requires_grad


def test_rpn_stage_in_the_model_trains():
    from pedcrowd.model import build_model, install_criteria

    torch.manual_seed(0)
    model = build_model(SMALL).train()
    install_criteria(model, SMALL, _nms(stage="rpn", rpn_min_height=0.0, rpn_min_score=0.0, add_gt=True))
    losses = model(_images(2), [_target(PEOPLE), _target(PEOPLE[:2])])
    assert {"loss_rpn_nms_pull", "loss_rpn_nms_push"} <= set(losses)
    assert "loss_nms_pull" not in losses
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("name", ["nms_loss_citypersons.yaml", "nms_loss_caltech.yaml"])
def test_paper_configs_are_the_official_settings(name):
    from pedcrowd.engine.config import load_config

    cfg = load_config(REPO / "configs" / name)
    nms = cfg.loss.nms
    assert nms.stage == "rpn" and nms.add_gt and nms.nms_thresh == 0.5
    assert cfg.schedule.warmup_iters == 500 and cfg.schedule.warmup_factor == pytest.approx(1 / 3)
    if name.startswith("nms_loss_citypersons"):
        assert (nms.lambda_pull, nms.lambda_push, nms.pull_grad, nms.detach_pull_score) == (0.1, 0.001, "dup", True)
        assert (nms.rpn_min_score, nms.rpn_top_n, nms.rpn_min_height) == (0.005, 2500, 50.0)
        assert cfg.data.augment.crop_size == (512, 1024) and cfg.model.train_scale == 1.0
    else:
        assert (nms.lambda_pull, nms.lambda_push, nms.pull_grad, nms.detach_pull_score) == (0.1, 0.1, "max", False)
        assert (nms.rpn_min_score, nms.rpn_top_n, nms.rpn_min_height) == (0.0, 200, 0.0)
        assert cfg.data.augment.crop_size == (384, 512) and cfg.model.train_scale == 2.0


def test_train_scale_keeps_or_scales_training_images():
    from pedcrowd.model.transform import PedTransform

    for scale, size in ((None, (96, 192)), (1.0, (40, 80)), (2.0, (80, 160))):
        tr = PedTransform(96, 192, [0.0] * 3, [1.0] * 3, train_scale=scale).train()
        target = {"boxes": t([[4, 8, 12, 24]]).float(), "labels": torch.ones(1, dtype=torch.long),
                  "ignore_boxes": t([[0, 0, 10, 10]]).float()}  # fmt: skip
        images, targets = tr([torch.zeros(3, 40, 80)], [target])
        assert tuple(images.image_sizes[0]) == size
        factor = size[0] / 40
        torch.testing.assert_close(targets[0]["boxes"], t([[4, 8, 12, 24]]).float() * factor)
        torch.testing.assert_close(targets[0]["ignore_boxes"], t([[0, 0, 10, 10]]).float() * factor)
        tr.eval()
        images, _ = tr([torch.zeros(3, 40, 80)])
        assert tuple(images.image_sizes[0]) == (96, 192)  # inference always resizes
