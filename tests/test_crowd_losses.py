"""The ``loss:`` config, its presets, the composed crowd-loss hooks on hand-made
RoiSamples, and the hooks installed in the detector."""

from __future__ import annotations

import math

import pytest
import torch

import pedcrowd.losses.crowd
import pedcrowd.losses.nms_loss  # noqa: F401  (the submodule must not shadow the function)
from pedcrowd.errors import PedcrowdError
from pedcrowd.losses import (
    LOSS_PRESETS,
    LossConfig,
    apply_loss_preset,
    build_crowd_losses,
    nms_loss,
    repulsion_loss,
)
from pedcrowd.model import ModelConfig, build_model
from pedcrowd.model.samples import RoiSamples


def test_package_exports_the_functions():
    assert callable(nms_loss) and callable(repulsion_loss)
    assert pedcrowd.losses.nms_loss is nms_loss


def test_defaults_add_no_crowd_loss():
    assert build_crowd_losses(LossConfig()) == (None, None)
    assert build_crowd_losses(apply_loss_preset(LossConfig(), "none")) == (None, None)


def test_presets_hold_the_papers_settings():
    assert set(LOSS_PRESETS) == {"none", "nms", "rep", "nms+rep"}
    base = LossConfig()
    base.nms.stage = "both"
    base.nms.nms_thresh = 0.6
    cfg = apply_loss_preset(base, "nms+rep")
    assert (cfg.nms.lambda_pull, cfg.nms.lambda_push) == (0.1, 0.001)
    assert cfg.nms.add_gt and cfg.nms.pull_relax and not cfg.nms.push_relax
    assert cfg.nms.detach_pull_score
    assert (cfg.rep.alpha, cfg.rep.beta, cfg.rep.sigma_gt, cfg.rep.sigma_box) == (
        0.5,
        0.5,
        1.0,
        0.0,
    )
    assert (cfg.nms.stage, cfg.nms.nms_thresh) == ("both", 0.6)  # not the preset's business
    assert base.nms.lambda_pull == 0.0  # the input is not modified
    rep_only = apply_loss_preset(cfg, "rep")
    assert (rep_only.nms.lambda_pull, rep_only.nms.lambda_push) == (0.0, 0.0)
    assert rep_only.rep.alpha == 0.5
    nms_only = apply_loss_preset(cfg, "nms")
    assert (nms_only.rep.alpha, nms_only.rep.beta) == (0.0, 0.0)
    with pytest.raises(PedcrowdError, match="unknown loss preset 'repulsion'"):
        apply_loss_preset(base, "repulsion")


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _samples() -> list[RoiSamples]:
    """Two images; negatives (-1) mixed in, which must not take part."""
    gts0 = _t([[0, 0, 10, 20], [8, 0, 18, 20]])
    image0 = RoiSamples(
        proposals=_t([[0, 0, 10, 20], [2, 0, 12, 20], [50, 50, 60, 60], [0, 0, 10, 8]]),
        matched_gt=torch.tensor([0, 1, -1, 0]),
        pred_boxes=_t([[0, 0, 10, 20], [2, 0, 12, 20], [50, 50, 60, 60], [0, 0, 10, 8]]),
        scores=_t([0.9, 0.6, 0.95, 0.5]),
        gt_boxes=gts0,
    )
    gts1 = _t([[0, 0, 10, 10], [5, 0, 15, 10]])
    image1 = RoiSamples(
        proposals=_t([[0, 0, 10, 10], [30, 30, 40, 40]]),
        matched_gt=torch.tensor([0, -1]),
        pred_boxes=_t([[2, 0, 12, 10], [30, 30, 40, 40]]),
        scores=_t([0.8, 0.99]),
        gt_boxes=gts1,
    )
    for s in (image0, image1):
        s.pred_boxes.requires_grad_()
        s.scores.requires_grad_()
    return [image0, image1]


def _expected(samples, fn, **options):
    per_image = []
    for s in samples:
        pos = s.matched_gt >= 0
        second = s.scores[pos] if fn is nms_loss else s.proposals[pos]
        per_image.append(fn(s.pred_boxes[pos], second, s.matched_gt[pos], s.gt_boxes, **options))
    return [sum(terms) / len(samples) for terms in zip(*per_image, strict=True)]


def test_composed_roi_hook_weights_and_averages_over_images():
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    roi_fn, rpn_fn = build_crowd_losses(cfg)
    assert rpn_fn is None
    samples = _samples()
    losses = roi_fn(samples)
    assert set(losses) == {"loss_nms_pull", "loss_nms_push", "loss_rep_gt", "loss_rep_box"}
    pull, push = _expected(samples, nms_loss)
    rep_gt, rep_box = _expected(samples, repulsion_loss)
    torch.testing.assert_close(losses["loss_nms_pull"], 0.1 * pull)
    torch.testing.assert_close(losses["loss_nms_push"], 0.001 * push)
    torch.testing.assert_close(losses["loss_rep_gt"], 0.5 * rep_gt)
    torch.testing.assert_close(losses["loss_rep_box"], 0.5 * rep_box)
    # By hand. Image 0, GTs first (add_gt): GT 0 removes prediction 1 (person 1, IoU 2/3
    # > GT IoU 1/9): push ln(3) * 0.6; prediction 3 (IoU 0.4 with GT 0) survives as an
    # FP: pull -ln(0.9) * 0.5. Image 1 has one positive: no NMS-Loss.
    assert losses["loss_nms_pull"].item() == pytest.approx(0.1 * -math.log(0.9) * 0.5 / 2, rel=1e-5)
    assert losses["loss_nms_push"].item() == pytest.approx(0.001 * math.log(3) * 0.6 / 2, rel=1e-5)
    # RepGT, image 0: IoG 0.2, 0.8, 0.08 with the other GT, over 3; image 1: IoG 0.7.
    image0 = -(math.log(0.8) + math.log(0.2) + math.log(0.92)) / 3
    assert losses["loss_rep_gt"].item() == pytest.approx(0.5 * (image0 - math.log(0.3)) / 2)
    # RepBox, image 0: pairs (0, 1) IoU 2/3 and (3, 1) IoU 64/216, both overlapping.
    assert losses["loss_rep_box"].item() == pytest.approx(0.5 * (2 / 3 + 64 / 216) / 2 / 2)
    assert all(v.item() > 0 for v in losses.values())
    sum(losses.values()).backward()
    # Negatives take no part: their boxes and scores get no gradient.
    assert samples[0].pred_boxes.grad[2].abs().sum() == 0
    assert samples[1].pred_boxes.grad[1].abs().sum() == 0


@pytest.mark.parametrize("max_batched", [2048, 3])
def test_batched_equals_per_image_on_random_crowds(monkeypatch, max_batched):
    # Batching the images (and splitting the batch into groups) changes nothing.
    monkeypatch.setattr(pedcrowd.losses.crowd, "MAX_BATCHED_POSITIVES", max_batched)
    gen = torch.Generator().manual_seed(4)  # a scene where all four terms are non-zero
    samples = []
    for num_pred, num_gt in [(12, 4), (0, 2), (1, 1), (9, 3), (7, 5)]:
        corner = torch.rand(num_gt, 2, generator=gen, dtype=torch.float64) * 25
        gts = torch.cat(
            [corner, corner + 20 + 20 * torch.rand(num_gt, 2, generator=gen, dtype=torch.float64)],
            1,
        )
        matched = torch.randint(0, num_gt, (num_pred,), generator=gen)
        matched[::4] = -1  # negatives
        proposals = gts[matched.clamp(min=0)] + 3 * torch.randn(
            num_pred, 4, generator=gen, dtype=torch.float64
        )
        samples.append(RoiSamples(
            proposals=proposals,
            matched_gt=matched,
            pred_boxes=(proposals + torch.randn(num_pred, 4, generator=gen, dtype=torch.float64)).requires_grad_(),
            scores=torch.rand(num_pred, generator=gen, dtype=torch.float64).requires_grad_(),
            gt_boxes=gts,
        ))  # fmt: skip
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    losses = build_crowd_losses(cfg)[0](samples)
    pull, push = _expected(samples, nms_loss)
    rep_gt, rep_box = _expected(samples, repulsion_loss)
    assert pull.item() > 0 and push.item() > 0 and rep_gt.item() > 0 and rep_box.item() > 0
    for key, value, weight in [
        ("loss_nms_pull", pull, 0.1), ("loss_nms_push", push, 0.001),
        ("loss_rep_gt", rep_gt, 0.5), ("loss_rep_box", rep_box, 0.5),
    ]:  # fmt: skip
        torch.testing.assert_close(losses[key], weight * value)
        (got,) = torch.autograd.grad(losses[key], samples[0].pred_boxes, retain_graph=True)
        (ref,) = torch.autograd.grad(weight * value, samples[0].pred_boxes, retain_graph=True)
        torch.testing.assert_close(got, ref)


def test_zero_weight_skips_the_term_and_stage_moves_nms_to_the_rpn():
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.rep.beta = 0.0
    cfg.nms.lambda_push = 0.0
    roi_fn, _ = build_crowd_losses(cfg)
    assert set(roi_fn(_samples())) == {"loss_nms_pull", "loss_rep_gt"}

    cfg.nms.stage = "rpn"
    roi_fn, rpn_fn = build_crowd_losses(cfg)
    assert set(roi_fn(_samples())) == {"loss_rep_gt"}
    assert set(rpn_fn(_samples())) == {"loss_nms_pull"}  # the RPN renames it loss_rpn_nms_pull

    cfg.nms.stage = "both"
    roi_fn, rpn_fn = build_crowd_losses(cfg)
    assert set(roi_fn(_samples())) == {"loss_nms_pull", "loss_rep_gt"}
    # on both stages the RPN hook computes NMS-Loss alone (RepLoss stays on the RoI head)
    samples = _samples()
    rpn_losses = rpn_fn(samples)
    assert set(rpn_losses) == {"loss_nms_pull"}
    assert all(torch.isfinite(v).all() for v in rpn_losses.values())
    pull, _ = _expected(samples, nms_loss)
    torch.testing.assert_close(rpn_losses["loss_nms_pull"], 0.1 * pull)
    assert rpn_losses["loss_nms_pull"].item() > 0

    cfg.rep.alpha = 0.0
    cfg.nms.stage = "rpn"
    assert build_crowd_losses(cfg)[0] is None


def test_nms_options_reach_the_loss():
    cfg = apply_loss_preset(LossConfig(), "nms")
    cfg.nms.push_relax = True
    cfg.nms.nms_thresh = 0.6
    samples = _samples()
    losses = build_crowd_losses(cfg)[0](samples)
    _, push = _expected(samples, nms_loss, push_relax=True, nms_thresh=0.6)
    torch.testing.assert_close(losses["loss_nms_push"], 0.001 * push)


# ----------------------------------------------------------------------------- in the model

SMALL = ModelConfig(
    min_size=96,
    max_size=192,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=64,
    representation_size=64,
)
CROWD = [[20.0, 20.0, 40.0, 70.0], [30.0, 22.0, 50.0, 72.0], [36.0, 18.0, 56.0, 70.0]]


def _batch():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 192, generator=g) for _ in range(2)]
    boxes = torch.tensor(CROWD)
    targets = [{"boxes": boxes, "labels": torch.ones(3, dtype=torch.int64)} for _ in range(2)]
    return images, targets


def test_eval_outputs_bit_identical_with_and_without_crowd_losses():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    images, _ = _batch()
    with torch.no_grad():
        plain = model(images)
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.nms.stage = "both"
    model.roi_heads.crowd_loss_fn, model.rpn.crowd_loss_fn = build_crowd_losses(cfg)
    with torch.no_grad():
        hooked = model(images)
    for a, b in zip(plain, hooked, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])


def test_train_forward_returns_crowd_terms_with_gradient_into_the_box_head():
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.nms.stage = "both"
    model.roi_heads.crowd_loss_fn, model.rpn.crowd_loss_fn = build_crowd_losses(cfg)
    images, targets = _batch()
    losses = model(images, targets)
    crowd_keys = {
        "loss_nms_pull",
        "loss_nms_push",
        "loss_rep_gt",
        "loss_rep_box",
        "loss_rpn_nms_pull",
        "loss_rpn_nms_push",
    }
    assert crowd_keys <= set(losses)
    assert all(torch.isfinite(losses[k]) for k in crowd_keys)
    head = model.roi_heads.box_predictor.bbox_pred.weight
    rep = losses["loss_rep_gt"] + losses["loss_rep_box"]
    assert rep.item() > 0  # three people overlapping: the box head is repelled
    (grad,) = torch.autograd.grad(rep, head, retain_graph=True)
    assert grad.abs().sum() > 0
    nms_terms = sum(losses[k] for k in crowd_keys if "nms" in k)
    assert nms_terms.requires_grad
    sum(losses.values()).backward()
