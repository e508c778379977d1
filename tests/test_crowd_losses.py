"""The ``loss:`` config, its presets, the registry, the criteria composed from it on
hand-made StageSamples, and the criteria installed in the detector."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

import pedcrowd.losses.nms_loss
import pedcrowd.losses.positives
from pedcrowd.errors import PedcrowdError
from pedcrowd.losses import (
    LOSS_PRESETS,
    TERM_CHOICES,
    LossConfig,
    apply_loss_preset,
)
from pedcrowd.losses.criterion import StageCriterion, build_criteria
from pedcrowd.losses.nms_loss import nms_loss
from pedcrowd.losses.registry import TERMS
from pedcrowd.losses.repulsion import repulsion_loss
from pedcrowd.losses.samples import StageSamples
from pedcrowd.model import build_model, install_criteria
from pedcrowd.reference.tiny import SMALL


def test_the_package_exports_the_config_and_each_loss_lives_in_its_module():
    # pedcrowd.losses is torch-free (the config tree); the functions are imported from
    # their files, and pedcrowd.losses.nms_loss is the module, never a re-exported function.
    assert callable(nms_loss) and callable(repulsion_loss)
    assert nms_loss.__module__ == "pedcrowd.losses.nms_loss"
    assert repulsion_loss.__module__ == "pedcrowd.losses.repulsion"
    assert {"LossConfig", "TERM_CHOICES", "apply_loss_preset"} <= set(pedcrowd.losses.__all__)
    assert "nms_loss" not in pedcrowd.losses.__all__
    assert pedcrowd.losses.nms_loss.nms_loss is nms_loss


def test_every_registry_entry_resolves():
    for name, spec in TERMS.items():
        assert callable(spec.fn), name
        if spec.options is not None:
            assert isinstance(getattr(LossConfig(), name), spec.options)


def test_config_choices_agree_with_the_registry():
    # the torch-free config names each key's choices; the registry holds the functions
    for key, (role, stage, names) in TERM_CHOICES.items():
        registered = tuple(n for n, s in TERMS.items() if s.has_role(role) and stage in s.stages)
        assert names == registered, key
    hints = typing.get_type_hints(LossConfig)
    sections = {f.name for f in dataclasses.fields(LossConfig) if dataclasses.is_dataclass(hints[f.name])}
    assert sections == {name for name, spec in TERMS.items() if spec.options is not None}
    for name in sections:
        assert hints[name] is TERMS[name].options, name


def test_defaults_add_no_crowd_loss():
    for cfg in (LossConfig(), apply_loss_preset(LossConfig(), "none")):
        rpn, roi = build_criteria(cfg)
        assert rpn.extras == {} and roi.extras == {}
        assert (roi.cls_term, roi.box_term, rpn.cls_term, rpn.box_term) == (
            "ce", "smooth_l1", "bce", "smooth_l1",
        )


def test_unknown_term_choice_is_a_clear_error():
    with pytest.raises(PedcrowdError, match="loss.cls: unknown cls term 'fokal'.*ce"):
        dataclasses.replace(LossConfig(), cls="fokal")
    with pytest.raises(PedcrowdError, match="loss.rpn_cls: unknown cls term 'ce'"):
        dataclasses.replace(LossConfig(), rpn_cls="ce")  # the RoI head's softmax CE


def test_presets_hold_the_papers_settings():
    assert set(LOSS_PRESETS) == {"none", "nms", "rep", "nms+rep"}
    base = LossConfig()
    base.nms.stage = "both"
    base.nms.nms_thresh = 0.6
    assert LOSS_PRESETS["nms"]["nms.lambda_pull"] == 0.1  # a named dict of loss fields
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


CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))


def _stage(images, stage="roi") -> StageSamples:
    """A StageSamples from per-image dicts of proposals, matched_gt (-1 negative),
    pred_boxes, scores, gt_boxes; the deltas (the leaf with gradient) decode to pred_boxes."""
    rows = {k: [] for k in ("boxes", "img", "lab", "gt", "pred", "score")}
    gts, gt_img, offset = [], [], 0
    for i, im in enumerate(images):
        n = len(im["proposals"])
        rows["boxes"].append(im["proposals"])
        rows["img"].append(torch.full((n,), i))
        m = im["matched_gt"]
        rows["lab"].append((m >= 0).long())
        rows["gt"].append(torch.where(m >= 0, m + offset, m))
        rows["pred"].append(im["pred_boxes"])
        rows["score"].append(im["scores"])
        gts.append(im["gt_boxes"])
        gt_img.append(torch.full((len(im["gt_boxes"]),), i))
        offset += len(im["gt_boxes"])
    boxes = torch.cat(rows["boxes"])
    deltas = CODER.encode_single(torch.cat(rows["pred"]), boxes).requires_grad_()
    logit = torch.logit(torch.cat(rows["score"]))
    logits = torch.stack([torch.zeros_like(logit), logit], 1) if stage == "roi" else logit[:, None]
    return StageSamples(
        stage=stage, boxes=boxes, image_index=torch.cat(rows["img"]),
        labels=torch.cat(rows["lab"]), matched_gt=torch.cat(rows["gt"]),
        class_logits=logits.requires_grad_(), deltas=deltas, target_deltas=torch.zeros_like(deltas),
        gt_boxes=torch.cat(gts), gt_image_index=torch.cat(gt_img),
        ignore_boxes=[torch.zeros((0, 4), dtype=torch.float64) for _ in images],
        image_sizes=[(200, 400)] * len(images), sampled=torch.ones(len(boxes), dtype=torch.bool),
        box_coder=CODER,
    )  # fmt: skip


def _images():
    """Two images; negatives (-1) mixed in, which must not take part."""
    gts0 = _t([[0, 0, 10, 20], [8, 0, 18, 20]])
    image0 = dict(
        proposals=_t([[0, 0, 10, 20], [2, 0, 12, 20], [50, 50, 60, 60], [0, 0, 10, 8]]),
        matched_gt=torch.tensor([0, 1, -1, 0]),
        pred_boxes=_t([[0, 0, 10, 20], [2, 0, 12, 20], [50, 50, 60, 60], [0, 0, 10, 8]]),
        scores=_t([0.9, 0.6, 0.95, 0.5]),
        gt_boxes=gts0,
    )
    gts1 = _t([[0, 0, 10, 10], [5, 0, 15, 10]])
    image1 = dict(
        proposals=_t([[0, 0, 10, 10], [30, 30, 40, 40]]),
        matched_gt=torch.tensor([0, -1]),
        pred_boxes=_t([[2, 0, 12, 10], [30, 30, 40, 40]]),
        scores=_t([0.8, 0.99]),
        gt_boxes=gts1,
    )
    return [image0, image1]


def _expected(s: StageSamples, fn, rows=None, **options):
    """The per-image function on each image's positives (of ``rows``), averaged."""
    rows = s.positive if rows is None else rows
    per_image = []
    for i in range(s.num_images):
        r = rows & (s.image_index == i)
        second = s.scores()[r] if fn is nms_loss else s.boxes[r]
        gt = s.gt_image_index == i
        offset = int((s.gt_image_index < i).sum())
        per_image.append(fn(s.pred_boxes[r], second, s.matched_gt[r] - offset, s.gt_boxes[gt], **options))
    return [sum(terms) / s.num_images for terms in zip(*per_image, strict=True)]


def _roi(cfg, **context):
    return StageCriterion("roi", cfg, context or {"box_nms_thresh": 0.5})


def test_composed_roi_criterion_weights_and_averages_over_images():
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.rep.normalize = "positives"
    rpn, roi = build_criteria(cfg, {"box_nms_thresh": 0.5})
    assert rpn.extras == {}
    s = _stage(_images())
    losses = roi(s)
    assert set(losses) == {
        "loss_classifier", "loss_box_reg", "loss_nms_pull", "loss_nms_push", "loss_rep_gt", "loss_rep_box",
    }  # fmt: skip
    pull, push = _expected(s, nms_loss)
    rep_gt, rep_box = _expected(s, repulsion_loss)
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
    crowd = {k: v for k, v in losses.items() if "nms" in k or "rep" in k}
    assert all(v.item() > 0 for v in crowd.values())
    sum(crowd.values()).backward()
    # Negatives take no part: their boxes and scores get no gradient.
    assert s.deltas.grad[2].abs().sum() == 0 and s.deltas.grad[5].abs().sum() == 0
    assert s.class_logits.grad[2].abs().sum() == 0

    # the paper-exact normalisation scales RepLoss by sampled positives / sampled RoIs (4 / 6)
    cfg.rep.normalize = "box_loss"
    scaled = _roi(cfg)(_stage(_images()))
    assert scaled["loss_rep_gt"].item() == pytest.approx(losses["loss_rep_gt"].item() * 4 / 6)
    assert scaled["loss_rep_box"].item() == pytest.approx(losses["loss_rep_box"].item() * 4 / 6)


@pytest.mark.parametrize("max_batched", [2048, 3])
def test_batched_equals_per_image_on_random_crowds(monkeypatch, max_batched):
    # Batching the images (and splitting the batch into groups) changes nothing.
    monkeypatch.setattr(pedcrowd.losses.positives, "MAX_BATCHED_POSITIVES", max_batched)
    gen = torch.Generator().manual_seed(4)  # a scene where all four terms are non-zero
    images = []
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
        images.append(dict(
            proposals=proposals,
            matched_gt=matched,
            pred_boxes=proposals + torch.randn(num_pred, 4, generator=gen, dtype=torch.float64),
            scores=torch.rand(num_pred, generator=gen, dtype=torch.float64),
            gt_boxes=gts,
        ))  # fmt: skip
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.rep.normalize = "positives"
    s = _stage(images)
    original = pedcrowd.losses.positives.image_groups
    monkeypatch.setattr(
        pedcrowd.losses.positives, "image_groups", lambda p, m=max_batched: original(p, m)
    )
    losses = _roi(cfg)(s)
    pull, push = _expected(s, nms_loss)
    rep_gt, rep_box = _expected(s, repulsion_loss)
    assert pull.item() > 0 and push.item() > 0 and rep_gt.item() > 0 and rep_box.item() > 0
    for key, value, weight in [
        ("loss_nms_pull", pull, 0.1), ("loss_nms_push", push, 0.001),
        ("loss_rep_gt", rep_gt, 0.5), ("loss_rep_box", rep_box, 0.5),
    ]:  # fmt: skip
        torch.testing.assert_close(losses[key], weight * value)
        (got,) = torch.autograd.grad(losses[key], s.deltas, retain_graph=True)
        (ref,) = torch.autograd.grad(weight * value, s.deltas, retain_graph=True)
        torch.testing.assert_close(got, ref)


def test_zero_weight_skips_the_term_and_stage_moves_nms_to_the_rpn():
    cfg = apply_loss_preset(LossConfig(), "nms+rep")
    cfg.rep.beta = 0.0
    cfg.nms.lambda_push = 0.0
    rpn, roi = build_criteria(cfg)
    assert set(roi.extras) == {"nms", "rep"} and rpn.extras == {}
    assert {k for k in roi(_stage(_images())) if "nms" in k or "rep" in k} == {"loss_nms_pull", "loss_rep_gt"}

    cfg.nms.stage = "rpn"
    rpn, roi = build_criteria(cfg)
    assert set(roi.extras) == {"rep"} and set(rpn.extras) == {"nms"}
    cfg.nms.stage = "both"
    rpn, roi = build_criteria(cfg)
    assert set(roi.extras) == {"nms", "rep"} and set(rpn.extras) == {"nms"}  # RepLoss: RoI only
    cfg.rep.alpha = 0.0
    cfg.nms.stage = "rpn"
    assert build_criteria(cfg)[1].extras == {}


def test_every_term_has_a_weight_as_detr_weight_dict():
    cfg = apply_loss_preset(LossConfig(), "nms")
    rpn, roi = build_criteria(cfg, {"box_nms_thresh": 0.5})
    assert roi.weight_dict == {"loss_classifier": 1.0, "loss_box_reg": 1.0,
                               "loss_nms_pull": 0.1, "loss_nms_push": 0.001}  # fmt: skip
    assert rpn.weight_dict == {"loss_objectness": 1.0, "loss_rpn_box_reg": 1.0}
    plain = roi(_stage(_images()))
    # the default weights change no bit: the cls and box terms are the functions' own values
    s = _stage(_images())
    assert torch.equal(plain["loss_classifier"], TERMS["ce"].fn(s, None, {}))
    assert torch.equal(plain["loss_box_reg"], TERMS["smooth_l1"].fn(s, None, {}))
    heavy = dataclasses.replace(cfg, cls_weight=2.0, box_weight=0.0)
    weighted = _roi(heavy)(_stage(_images()))
    assert "loss_box_reg" not in weighted  # a zero weight skips the term
    torch.testing.assert_close(weighted["loss_classifier"], 2.0 * plain["loss_classifier"])
    torch.testing.assert_close(weighted["loss_nms_pull"], plain["loss_nms_pull"])
    pisa = build_criteria(dataclasses.replace(LossConfig(), sampler="pisa"))[1]
    assert pisa.weight_dict["loss_carl"] == 1.0


def test_nms_options_reach_the_loss():
    cfg = apply_loss_preset(LossConfig(), "nms")
    cfg.nms.push_relax = True
    cfg.nms.nms_thresh = 0.6
    s = _stage(_images())
    losses = _roi(cfg, box_nms_thresh=0.6)(s)
    _, push = _expected(s, nms_loss, push_relax=True, nms_thresh=0.6)
    torch.testing.assert_close(losses["loss_nms_push"], 0.001 * push)


# ----------------------------------------------------------------------------- in the model

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
    install_criteria(model, SMALL, cfg)
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
    cfg.nms.rpn_min_height = 0.0  # the demo-sized people are under the official 50 px
    install_criteria(model, SMALL, cfg)
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


def test_build_model_builds_the_criteria_once(monkeypatch):
    built = []
    original = StageCriterion.__init__

    def counting(self, stage, cfg, context=None):
        built.append(stage)
        original(self, stage, cfg, context)

    monkeypatch.setattr(StageCriterion, "__init__", counting)
    cfg = apply_loss_preset(LossConfig(), "nms")
    model = build_model(SMALL, loss=cfg)
    assert built == ["rpn", "roi"]  # one criterion per stage, no default ones thrown away
    assert set(model.roi_heads.criterion.extras) == {"nms"}
    assert model.roi_heads.criterion.weight_dict["loss_nms_pull"] == 0.1
    built.clear()
    build_model(SMALL)
    assert built == ["rpn", "roi"]
