"""Sample-imbalance techniques (issue 11) plugged into the detector: every option
trains with the CLI (combined with --loss nms) and evaluates, a batch of background
images gives finite losses and no box loss, inference stays bit-identical, the
prior bias, the terms' reductions, OHEM's and PISA's samplers in the RoI head."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine.config import Config, apply_overrides, save_config
from pedcrowd.engine.metrics import read_metrics
from pedcrowd.losses import LossConfig
from pedcrowd.losses.config import set_loss_fields
from pedcrowd.losses.focal import init_classifier_priors, prior_bias
from pedcrowd.losses.ohem import ohem_row_loss, ohem_select
from pedcrowd.model import build_model, install_criteria
from pedcrowd.reference.tiny import SMALL, TINY_SYNTH, tiny_overrides

CROWD = [[20.0, 20.0, 40.0, 70.0], [30.0, 22.0, 50.0, 72.0], [36.0, 18.0, 56.0, 70.0]]

# option name -> loss fields it sets
OPTIONS = {
    "focal": {"cls": "focal"},
    "ghm": {"cls": "ghm"},
    "ghm-r": {"box": "ghm"},
    "qfl": {"cls": "qfl"},
    "ohem": {"sampler": "ohem"},
    "pisa": {"sampler": "pisa"},
    "rpn-focal": {"rpn_cls": "focal"},
}
CLI = {
    "focal": ["--cls-loss", "focal"],
    "ghm": ["--cls-loss", "ghm", "--box-loss", "ghm"],
    "qfl": ["--cls-loss", "qfl"],
    "ohem": ["--sampler", "ohem"],
    "pisa": ["--sampler", "pisa"],
    "rpn-focal": ["--set", "loss.rpn_cls=focal"],
}


def batch(background_only: bool = False):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 192, generator=g) for _ in range(2)]
    boxes = torch.zeros((0, 4)) if background_only else torch.tensor(CROWD)
    targets = [
        {"boxes": boxes, "labels": torch.ones(boxes.shape[0], dtype=torch.int64)} for _ in range(2)
    ]
    return images, targets


def model_with(fields: dict[str, object]):
    torch.manual_seed(0)
    model = build_model(SMALL).train()
    loss = set_loss_fields(LossConfig(), fields)
    install_criteria(model, SMALL, loss)
    init_classifier_priors(model, SMALL.weights, loss)
    return model


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_option_trains_a_step_with_finite_terms(name):
    model = model_with(OPTIONS[name])
    images, targets = batch()
    losses = model(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    if name == "pisa":
        assert losses["loss_carl"].item() > 0
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    head = model.roi_heads.box_predictor
    assert head.cls_score.weight.grad.abs().sum() > 0
    if name != "ohem":  # at initialisation OHEM may well keep no positive of this small batch
        assert head.bbox_pred.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(OPTIONS))
def test_background_only_batch_is_finite_with_zero_box_loss(name):
    model = model_with(OPTIONS[name])
    images, targets = batch(background_only=True)
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_classifier"].item() > 0  # the negatives still teach the classifier
    if name == "pisa":
        assert losses["loss_carl"].item() == 0.0
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)


def test_inference_bit_identical_whatever_the_training_losses():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    images, _ = batch()
    with torch.no_grad():
        plain = model(images)
        for fields in OPTIONS.values():
            install_criteria(model, SMALL, set_loss_fields(LossConfig(), fields))
            for a, b in zip(plain, model(images), strict=True):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[k], b[k]) for k in a)
    # the logit the focal / QFL terms train: its sigmoid is the softmax inference score
    z = torch.randn(50, 2, dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(z[:, 1] - z[:, 0]), torch.softmax(z, -1)[:, 1])


def test_prior_bias_initialisation_of_both_stages():
    model = model_with({"cls": "focal", "rpn_cls": "focal"})
    b = model.roi_heads.box_predictor.cls_score.bias
    assert b[1].item() - b[0].item() == pytest.approx(-math.log(99.0), rel=1e-6)
    assert torch.all(model.rpn.head.cls_logits.bias == torch.tensor(prior_bias(0.01)).float())
    fields = {"cls": "qfl", "qfl.prior": None}
    loss = set_loss_fields(LossConfig(), fields)
    assert init_classifier_priors(build_model(SMALL), "none", loss) == []
    loss = set_loss_fields(LossConfig(), {"cls": "focal"})
    assert init_classifier_priors(build_model(SMALL), "run/best.pt", loss) == []  # a weights file


def test_focal_term_is_the_mean_over_the_sampled_rows():
    model = model_with({"cls": "focal", "focal.prior": None})
    captured = {}
    criterion = model.roi_heads.criterion
    original = criterion.cls_fn

    def spy(s, options, state):
        captured["s"] = s
        return original(s, options, state)

    criterion.cls_fn = spy
    images, targets = batch()
    losses = model(images, targets)
    s = captured["s"]
    rows = torch.where(s.sampled)[0]
    z = (s.class_logits[rows, 1] - s.class_logits[rows, 0]).detach()
    y = (s.labels[rows] == 1).double()
    p = torch.sigmoid(z.double())
    pt = torch.where(y == 1, p, 1 - p)
    at = torch.where(y == 1, 0.25, 0.75)
    expected = (-at * (1 - pt) ** 2 * torch.log(pt)).sum() / rows.numel()
    assert losses["loss_classifier"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ohem_trains_on_the_hardest_deduplicated_rois():
    model = model_with({"sampler": "ohem", "ohem.pool": 0})  # every proposal scored
    sampler = model.roi_heads.criterion.sampler
    seen = {}
    original = sampler.select

    def spy(ctx):
        chosen = original(ctx)
        seen["ctx"], seen["chosen"] = ctx, chosen
        return chosen

    sampler.select = spy
    images, targets = batch()
    model(images, targets)
    ctx, chosen = seen["ctx"], seen["chosen"]
    pools = [torch.where(lab >= 0)[0] for lab in ctx.labels]
    scored = ctx.score(pools)  # the same weights: the same hardness
    loss = ohem_row_loss(scored.class_logits, scored.deltas, scored.labels, scored.target_deltas)
    for i, (pool, image_loss) in enumerate(
        zip(pools, loss.split([len(p) for p in pools]), strict=True)
    ):
        boxes = ctx.proposals[i][pool]
        mask = ohem_select(image_loss, boxes, ctx.labels[i][pool], num=64, nms_thresh=0.7)
        assert torch.equal(chosen[i], pool[mask])
        assert (ctx.labels[i][chosen[i]] >= 0).all()  # ignored rows never chosen
        assert len(chosen[i]) <= 64

    # a random pool of 20 per image: 5 chosen from it, the hardest of the pool's losses
    model = model_with({"sampler": "ohem", "ohem.pool": 20, "ohem.num": 5})
    sampler = model.roi_heads.criterion.sampler
    scored_pools = []
    original_select = sampler.select

    def spy_pool(ctx):
        inner = ctx.score

        def score(rows):
            scored_pools.append([r.clone() for r in rows])
            return inner(rows)

        ctx.score = score
        seen["chosen"] = original_select(ctx)
        return seen["chosen"]

    sampler.select = spy_pool
    model(images, targets)
    (pools,) = scored_pools
    for pool, chosen_i in zip(pools, seen["chosen"], strict=True):
        assert len(pool) == 20 and len(chosen_i) <= 5 and len(chosen_i) > 0
        assert set(chosen_i.tolist()) <= set(pool.tolist())


def test_pisa_weights_keep_the_positive_loss_and_leave_the_box_loss_alone():
    model = model_with({"sampler": "pisa"})
    captured = {}
    criterion = model.roi_heads.criterion
    original = criterion.box_fn

    def spy(s, options, state):
        captured["s"] = s
        return original(s, options, state)

    criterion.box_fn = spy
    images, targets = batch()
    model(images, targets)
    s = captured["s"]
    assert s.weights is not None and s.box_weights is None
    pos = torch.where(s.sampled & (s.labels == 1))[0]
    ce = F.cross_entropy(s.class_logits[pos].detach(), s.labels[pos], reduction="none")
    assert (ce * s.weights[pos]).sum().item() == pytest.approx(ce.sum().item(), rel=1e-5)
    assert not torch.all(s.weights[pos] == 1.0)
    # ISR-N: the sampled negatives' weights keep their loss sum too (scored by the same head)
    neg = torch.where(s.sampled & (s.labels == 0))[0]
    ce = F.cross_entropy(s.class_logits[neg].detach(), s.labels[neg], reduction="none")
    assert (ce * s.weights[neg]).sum().item() == pytest.approx(ce.sum().item(), rel=1e-4)
    assert not torch.all(s.weights[neg] == 1.0)


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imbalance")
    ensure_synth(tmp / "synth", TINY_SYNTH)
    save_config(apply_overrides(Config(), tiny_overrides(tmp / "synth")), tmp / "tiny.yaml")
    return tmp / "tiny.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI))
def test_cli_trains_two_iterations_with_nms_loss_and_evaluates(name, tiny_yaml, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-c", str(tiny_yaml), "--loss", "nms", "-o", str(run), "--json", *CLI[name]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 2
    assert "Reasonable" in json.loads((run / "val_eval.json").read_text())["results"]
    train = [m for m in read_metrics(run) if m["kind"] == "train"]
    assert len(train) == 2
    for m in train:
        terms = {k: v for k, v in m.items() if k.startswith("loss_")}
        assert {"loss_classifier", "loss_box_reg", "loss_nms_pull", "loss_nms_push"} <= set(terms)
        assert all(math.isfinite(v) for v in terms.values())
    if name == "pisa":
        assert "loss_carl" in train[0]


def test_unknown_choice_names_the_registered_ones():
    with pytest.raises(Exception, match="focal.*ghm.*qfl"):
        dataclasses.replace(LossConfig(), cls="fokal")
    with pytest.raises(Exception, match="smooth_l1.*ghm"):
        dataclasses.replace(LossConfig(), box="qfl")


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("focal", {"cls": "focal"}),
        ("ghm", {"cls": "ghm", "box": "ghm"}),
        ("qfl", {"cls": "qfl"}),
        ("ohem", {"sampler": "ohem"}),
        ("pisa", {"sampler": "pisa"}),
    ],
)
def test_example_configs_are_the_demo_with_one_technique(name, fields):
    from pathlib import Path

    from pedcrowd.engine.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}_demo.yaml")
    expected = dataclasses.replace(
        Config(),
        loss=set_loss_fields(Config().loss, fields),
        train=dataclasses.replace(Config().train, out_dir=f"runs/demo-{name}"),
    )
    assert cfg == expected


# ---------------------------------------------------------------- the authors' settings (issue 21)


def test_ohem_defaults_are_the_authors():
    from pedcrowd.losses.config import OhemConfig

    o = OhemConfig()
    # fast_rcnn_ohem.yml: B = 64 per image; every RoI scored; sigma-1 smooth L1; NMS 0.7
    assert (o.num, o.pool, o.beta, o.nms_thresh, o.with_box) == (64, 0, 1.0, 0.7, True)
    model = model_with({"sampler": "ohem"})
    sampler = model.roi_heads.criterion.sampler
    seen = {}
    original = sampler.select

    def spy(ctx):
        inner = ctx.score

        def score(rows):
            seen["pools"] = [r.clone() for r in rows]
            return inner(rows)

        ctx.score = score
        seen["ctx"] = ctx
        return original(ctx)

    sampler.select = spy
    model(*batch())
    for labels, pool in zip(seen["ctx"].labels, seen["pools"], strict=True):
        assert torch.equal(pool, torch.where(labels >= 0)[0])  # every trainable RoI scored


def test_pisa_box_loss_and_carl_use_beta_one():
    from pedcrowd.losses.config import PisaConfig

    assert PisaConfig().box_beta == 1.0
    model = model_with({"sampler": "pisa"})
    captured = {}
    criterion = model.roi_heads.criterion
    original = criterion.box_fn

    def spy(s, options, state):
        captured["s"], captured["value"] = s, original(s, options, state)
        return captured["value"]

    criterion.box_fn = spy
    losses = model(*batch())
    s = captured["s"]
    assert s.box_beta == 1.0
    rows = torch.where(s.sampled)[0]
    pos = rows[s.positive[rows]]
    d = (s.deltas[pos] - s.target_deltas[pos]).detach().abs()
    by_hand = torch.where(d < 1.0, 0.5 * d**2, d - 0.5).sum() / rows.numel()  # beta 1
    assert captured["value"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    # CARL: the same beta-1 smooth L1, weighted by ((1 - 0.2) p + 0.2) / mean and over S rows
    p = s.scores()[pos].detach()
    w = 0.8 * p + 0.2
    w = w * (pos.numel() / w.sum())
    per = torch.where(d < 1.0, 0.5 * d**2, d - 0.5).sum(dim=1)
    assert losses["loss_carl"].item() == pytest.approx((w * per).sum().item() / rows.numel(), rel=1e-5)


@pytest.mark.parametrize("cls", ["focal", "qfl"])
def test_pisa_isr_p_keeps_the_heads_own_classification_loss(cls):
    from pedcrowd.box_torch import paired_iou
    from pedcrowd.losses.focal import focal_rows
    from pedcrowd.losses.pisa import isr_p_weights
    from pedcrowd.losses.qfl import qfl_rows

    model = model_with({"sampler": "pisa", "cls": cls})
    criterion = model.roi_heads.criterion
    captured = {}
    original = criterion.cls_fn

    def spy(s, options, state):
        captured["s"], captured["options"] = s, options
        return original(s, options, state)

    criterion.cls_fn = spy
    model(*batch())
    s, options = captured["s"], captured["options"]
    pos = torch.where(s.sampled & (s.labels == 1))[0]
    own = (focal_rows if cls == "focal" else qfl_rows)(s, pos, options).detach()
    assert (own * s.weights[pos]).sum().item() == pytest.approx(own.sum().item(), rel=1e-5)
    gt = s.gt_boxes[s.matched_gt[pos]]
    ious = paired_iou(s.pred_boxes[pos].detach(), gt)
    expected = isr_p_weights(ious, s.matched_gt[pos], own, k=2.0, bias=0.0)
    torch.testing.assert_close(s.weights[pos], expected.to(s.weights.dtype), rtol=1e-6, atol=0)
    # the cross-entropy sum (what ISR-P kept before) gives other weights
    ce = isr_p_weights(ious, s.matched_gt[pos], -F.logsigmoid(s.ped_logit()[pos].detach()))
    assert (ce / expected - 1).abs().max().item() > 1e-4


def test_pisa_with_nothing_to_sample_trains():
    # box_positive_fraction 1 and more positives than rows: ISR-N has no negative to pick
    cfg = dataclasses.replace(SMALL, box_batch_size_per_image=2, box_positive_fraction=1.0)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    install_criteria(model, cfg, set_loss_fields(LossConfig(), {"sampler": "pisa"}))
    criterion = model.roi_heads.criterion
    captured = {}
    original = criterion.cls_fn

    def spy(s, options, state):
        captured["s"] = s
        return original(s, options, state)

    criterion.cls_fn = spy
    losses = model(*batch())
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_carl"].item() > 0
    s = captured["s"]
    assert s.sampled.sum().item() == 4 and (s.labels[s.sampled] == 1).all()  # 2 positives each


def test_ghmr_on_raw_deltas_with_the_official_weight():
    from types import SimpleNamespace

    from torchvision.models.detection._utils import BoxCoder

    from pedcrowd.losses.config import GhmConfig
    from pedcrowd.losses.ghm import ghmr_term

    # one positive whose weighted deltas are off by (1, 1, 0.5, 0.5): raw 0.1 each
    deltas = torch.tensor([[1.0, 1.0, 0.5, 0.5], [3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    s = SimpleNamespace(
        stage="roi", sampled=torch.tensor([True, True]), labels=torch.tensor([1, 0]),
        positive=torch.tensor([True, False]), class_logits=torch.zeros(2, 2, requires_grad=True),
        deltas=deltas, target_deltas=torch.zeros(2, 4), box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
    )
    o = GhmConfig()
    assert (o.mu, o.box_weight, o.raw_deltas) == (0.02, 10.0, True)
    # every coordinate has g = 0.1 / sqrt(0.01 + 0.0004) = 0.98: one region; its first-step
    # moving average is (1 - 0.7) * 4, so each weight is tot / (1.2 * 1 region) = 1 / 0.3
    value = ghmr_term(s, o, {})
    assert value.item() == pytest.approx(10.0 / 0.3 * (math.sqrt(0.0104) - 0.02), rel=1e-6)
    # the weighted deltas (the old form, no loss weight): ASL1 of (1, 1, 0.5, 0.5), g 0.9998/0.9992
    old = ghmr_term(s, dataclasses.replace(o, raw_deltas=False, box_weight=1.0), {})
    expected = (2 * (math.sqrt(1.0004) - 0.02) + 2 * (math.sqrt(0.2504) - 0.02)) / 4 / 0.3
    assert old.item() == pytest.approx(expected, rel=1e-6)
