"""``model.arch: fcos``: the loss against torchvision's, ignore regions, refinement, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.synth import SynthConfig, ensure_synth
from pedcrowd.engine.checkpoint import load_checkpoint, load_for_inference
from pedcrowd.engine.config import Config, apply_overrides
from pedcrowd.engine.metrics import read_metrics
from pedcrowd.engine.predict import predict
from pedcrowd.engine.train import fit
from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.fcos import fcos_loss, fcos_match
from pedcrowd.model import ModelConfig, build_model
from pedcrowd.model.fcos import PedFCOS, refine_distances, sample_per_channel
from pedcrowd.reference.tiny import tiny_overrides

runner = CliRunner()
TINY = SynthConfig(train_images=4, val_images=2, height=96, width=160, seed=3)
FCOS_SET = ["model.arch=fcos", "model.fcos_num_convs=1", "optim.lr=0.002"]
DW_SET = [*FCOS_SET, "model.assigner=dw"]


def _batch():
    images = [torch.rand(3, 96, 160, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 8.0, 34.0, 70.0], [24.0, 12.0, 46.0, 80.0],
                                [90.0, 10.0, 150.0, 90.0]]),
         "labels": torch.ones(3, dtype=torch.int64)},
        {"boxes": torch.tensor([[60.0, 20.0, 80.0, 66.0]]), "labels": torch.ones(1, dtype=torch.int64)},
    ]
    return images, targets


def _head_inputs(model: PedFCOS, images, targets):
    """The head outputs, anchors and resized targets of a forward pass, as compute_loss gets them."""
    seen = {}

    def grab(targets, head_outputs, anchors, num_anchors_per_level):
        seen.update(targets=targets, outputs=head_outputs, anchors=anchors, levels=num_anchors_per_level)
        return {"x": head_outputs["cls_logits"].sum()}

    model.compute_loss = grab
    model.train()
    model(images, [dict(t) for t in targets])
    del model.compute_loss
    return seen


def test_fcos_loss_without_ignore_equals_torchvision():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="fcos", min_size=96, max_size=160, fcos_num_convs=1))
    images, targets = _batch()
    s = _head_inputs(model, images, targets)
    ours = model.compute_loss(s["targets"], s["outputs"], s["anchors"], s["levels"])
    # torchvision's own FCOS loss (labels as class indices: the one class is 0)
    tv_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in s["targets"]]
    theirs = super(PedFCOS, model).compute_loss(tv_targets, s["outputs"], s["anchors"], s["levels"])
    assert ours["loss_cls"].item() == pytest.approx(theirs["classification"].item(), rel=1e-6)
    assert ours["loss_giou"].item() == pytest.approx(theirs["bbox_regression"].item(), rel=1e-6)
    assert ours["loss_ctrness"].item() == pytest.approx(theirs["bbox_ctrness"].item(), rel=1e-6)
    matched = [fcos_match(a, t["boxes"], s["levels"], 1.5) for a, t in zip(s["anchors"], s["targets"], strict=True)]
    assert all((m >= 0).any() for m in matched)


def test_fcos_matching_hand_case():
    # one level of stride 8, four points; GT A (small) and B (large) both hold point (16, 16)
    anchors = torch.tensor([[12.0, 12, 20, 20], [28, 12, 36, 20], [12, 44, 20, 52], [60, 60, 68, 68]])
    gts = torch.tensor([[4.0, 0, 28, 40], [0.0, 0, 40, 56]])
    m = fcos_match(anchors, gts, [4], radius=1.5)
    # (16,16): in both, near both centres (16,20)/(20,28) within 12 px -> smaller A (area 960)
    # (32,16): inside B only, |32-20|=12 is not < 12 -> none; (16,48): B, |48-28|=20 -> none
    assert m.tolist() == [0, -1, -1, -1]
    assert fcos_match(anchors, gts, [4], radius=3.0).tolist() == [0, 1, 1, -1]


def test_ignored_background_locations_take_no_classification_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="fcos", min_size=96, max_size=160, fcos_num_convs=1))
    images, targets = _batch()
    s = _head_inputs(model, images, targets)
    anchors, tg = s["anchors"], s["targets"]
    matched = [fcos_match(a, t["boxes"], s["levels"], 1.5) for a, t in zip(anchors, tg, strict=True)]
    # an ignore region over the right half of image 1 (a background area there)
    region = torch.tensor([[90.0, 0.0, 160.0, 96.0]])  # the transform keeps 96 x 160 as is
    tg_ign = [tg[0], {**tg[1], "ignore_boxes": region}]
    centres = (anchors[1][:, :2] + anchors[1][:, 2:]) / 2
    inside = (centres[:, 0] > 90) & (centres[:, 0] < 160) & (centres[:, 1] > 0) & (centres[:, 1] < 96)
    assert inside.sum() > 10 and (matched[1][inside] < 0).all()
    base = fcos_loss(s["outputs"], anchors, tg_ign, matched, model.box_coder)
    # the ignored locations' logits change nothing; a non-ignored background logit does
    hot = {k: v.clone() for k, v in s["outputs"].items()}
    hot["cls_logits"][1, inside] = 8.0
    same = fcos_loss(hot, anchors, tg_ign, matched, model.box_coder)
    assert same["loss_cls"].item() == pytest.approx(base["loss_cls"].item(), rel=1e-7)
    without = fcos_loss(hot, anchors, tg, matched, model.box_coder)
    assert without["loss_cls"].item() > base["loss_cls"].item() + 1
    # the focal loss of the kept locations, by hand
    keep = ~inside
    logits = s["outputs"]["cls_logits"][..., 0]
    fg = torch.stack(matched) >= 0
    p = torch.sigmoid(logits)
    pt = torch.where(fg, p, 1 - p)
    alpha = torch.where(fg, 0.25, 0.75)
    focal = -alpha * (1 - pt) ** 2 * torch.log(pt)
    focal[1, ~keep] = 0
    assert base["loss_cls"].item() == pytest.approx((focal.sum() / fg.sum()).item(), rel=1e-5)


def test_refinement_keeps_a_consistent_box_field_and_reads_the_sides():
    # every location of an 8 x 8 map predicts the box x1=1, y1=2, x2=6, y2=7 (cells)
    gy, gx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    reg = torch.stack([gx - 1, gy - 2, 6 - gx, 7 - gy])[None].clamp(min=0)
    inner = (gx >= 1) & (gx <= 6) & (gy >= 2) & (gy <= 7)
    out = refine_distances(reg, torch.zeros(1, 8, 8, 8))
    assert torch.allclose(out[0][:, inner], reg[0][:, inner], atol=1e-6)
    # uniform distances l = 1: x1 is read one cell to the left, whose own x1 is one further
    flat = torch.ones(1, 4, 6, 6)
    out = refine_distances(flat, torch.zeros(1, 8, 6, 6))
    assert out[0, 0, 3, 3].item() == pytest.approx(2.0)


def test_per_channel_sampling_equals_the_official_deformable_convolution():
    from torchvision.ops import deform_conv2d

    gen = torch.Generator().manual_seed(0)
    maps = (torch.rand(2, 4, 5, 7, generator=gen, dtype=torch.float64) * 50).requires_grad_()
    offsets = (torch.randn(2, 8, 5, 7, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    ours = sample_per_channel(maps, offsets.view(2, 4, 2, 5, 7))
    official = deform_conv2d(maps, offsets, maps.new_ones(4, 1, 1, 1))
    assert torch.allclose(ours, official, atol=1e-9)
    weights = torch.rand(ours.shape, generator=gen, dtype=torch.float64)
    g_ours = torch.autograd.grad((ours * weights).sum(), [maps, offsets])
    g_official = torch.autograd.grad((official * weights).sum(), [maps, offsets])
    for a, b in zip(g_ours, g_official, strict=True):
        assert torch.allclose(a, b, atol=1e-8)
    # by hand: channel 0 read one cell to the right, channel 1 half a cell down
    ramp = torch.arange(7.0).expand(1, 1, 5, 7).repeat(1, 2, 1, 1)
    off = torch.zeros(1, 2, 2, 5, 7)
    off[0, 0, 1], off[0, 1, 0] = 1.0, 0.5
    out = sample_per_channel(ramp, off)
    assert out[0, 0, 2].tolist() == pytest.approx([1, 2, 3, 4, 5, 6, 0], abs=1e-5)  # 0 past the edge
    assert out[0, 1, 2].tolist() == pytest.approx(ramp[0, 1, 2].tolist(), abs=1e-5)  # rows: no matter


def test_fcos_config_errors():
    with pytest.raises(PedcrowdError, match="model.backbone: 'mobilenet_v3_fpn' does not fit"):
        build_model(ModelConfig(arch="fcos", backbone="mobilenet_v3_fpn"))
    with pytest.raises(PedcrowdError, match=r"model.dw_prior_sigma: 0.0 must be > 0"):
        build_model(ModelConfig(arch="fcos", assigner="dw", dw_prior_sigma=0.0))
    with pytest.raises(PedcrowdError, match="model.assigner: 'dw' is for model.arch fcos"):
        build_model(ModelConfig(assigner="dw"))
    with pytest.raises(PedcrowdError, match="unknown|must be one of"):
        apply_overrides(Config(), ["model.arch=retinanet"])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    ensure_synth(root, TINY)
    return root


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory) -> dict[str, tuple]:
    out = tmp_path_factory.mktemp("runs")
    result = {}
    for name, extra in (("fcos", FCOS_SET), ("dw", DW_SET)):
        cfg = apply_overrides(Config(), [*tiny_overrides(synth_root), *extra])
        model, summary = fit(cfg, out / name)
        result[name] = (cfg, out / name, model, summary)
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcos", "dw"])
def test_fcos_trains_two_iterations_and_evaluates(runs, name):
    cfg, run, model, summary = runs[name]
    assert isinstance(model, PedFCOS) and model.assigner == name
    assert summary["iterations"] == 2
    keys = {"fcos": ("loss_cls", "loss_giou", "loss_ctrness"),
            "dw": ("loss_cls_pos", "loss_loc", "loss_cls_neg")}[name]
    train_lines = [m for m in read_metrics(run) if m["kind"] == "train"]
    assert len(train_lines) == 2
    for m in train_lines:
        assert all(math.isfinite(m[k]) for k in keys)
        assert m["loss"] == pytest.approx(sum(m[k] for k in keys))
    ev = json.loads((run / "val_eval.json").read_text())
    assert ev["results"]["Reasonable"]["n_gt"] > 0
    dets = json.loads((run / "val_dets.json").read_text())
    assert dets and {d["category_id"] for d in dets} == {1}
    # the checkpoint knows its architecture and rebuilds the same detector
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["config"]["model"]["arch"] == "fcos"
    assert ckpt["config"]["model"]["assigner"] == name
    loaded, loaded_cfg = load_for_inference(run)
    assert isinstance(loaded, PedFCOS) and loaded.assigner == name and loaded_cfg.model == cfg.model
    from pedcrowd.data.config import build_dataset

    val = build_dataset(cfg.data, "val", train=False)
    a, b = predict(loaded, val, torch.device("cpu")), predict(model, val, torch.device("cpu"))
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [FCOS_SET, DW_SET], ids=["fcos", "dw"])
def test_fcos_resume_equals_uninterrupted_training(synth_root, tmp_path, extra):
    two = apply_overrides(Config(), [*tiny_overrides(synth_root), *extra, "train.epochs=2"])
    one = apply_overrides(two, ["train.epochs=1"])
    full_model, full = fit(two, tmp_path / "full")
    fit(one, tmp_path / "split")
    resumed_model, resumed = fit(two, tmp_path / "split", resume=True)
    assert full["iterations"] == resumed["iterations"] == 4
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k
    assert full["history"] == resumed["history"]
    from pedcrowd.engine.train import seed_everything

    seed_everything(two.train.seed)
    init = build_model(two.model).state_dict()
    assert not torch.equal(init["head.classification_head.cls_logits.weight"],
                           full_model.state_dict()["head.classification_head.cls_logits.weight"])


def test_fcos_rejects_crowd_losses(synth_root, tmp_path):
    cfg = apply_overrides(Config(), [*tiny_overrides(synth_root), *FCOS_SET, "loss.rep.alpha=0.5"])
    with pytest.raises(PedcrowdError, match=r"loss: loss.rep act on Faster R-CNN's RPN and RoI head"):
        fit(cfg, tmp_path / "run")


@pytest.mark.slow
def test_infer_vis_and_compare_on_fcos_run_dirs(runs, synth_root, tmp_path):
    images = synth_root / "leftImg8bit" / "val"
    gt = synth_root / "annotations" / "val_gt.json"
    for name in ("fcos", "dw"):
        run = runs[name][1]
        out = tmp_path / name
        result = runner.invoke(app, ["infer", str(images), "--weights", str(run), "--out", str(out),
                                     "--gt", str(gt), "--device", "cpu", "--vis",
                                     "--score-thr", "0.01"])
        assert result.exit_code == 0, result.output
        assert len(list((out / "vis").rglob("*.png"))) == TINY.val_images
        dets = json.loads((out / "detections.json").read_text())
        assert dets and all(d["score"] >= 0.01 for d in dets)
    result = runner.invoke(app, ["compare", str(runs["fcos"][1]), str(runs["dw"][1]), "--gt", str(gt),
                                 "--bootstrap", "50", "--no-ap", "--format", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [r["name"] for r in doc["runs"]] == ["fcos", "dw"]
    for r, name in zip(doc["runs"], ("fcos", "dw"), strict=True):
        want = json.loads((runs[name][1] / "val_eval.json").read_text())["results"]["Reasonable"]["mr"]
        assert r["results"]["Reasonable"]["mr"] == pytest.approx(want, abs=1e-12)
