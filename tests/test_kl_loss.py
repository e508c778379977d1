"""KL-Loss: values and gradients by hand, the term's normalisation, and a KL model that
trains, evaluates with variance voting and writes bbox_std through infer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.config import KlLossConfig
from pedcrowd.losses.kl import kl_loss, kl_term


def test_kl_values_and_gradients_by_hand():
    # d = x_e - x_g: 0.5 (quadratic branch), 2.0 (linear branch), -0.2; alpha 0, ln 4, -1
    x_e = torch.tensor([[0.5, 2.0, -0.2, 0.0]], dtype=torch.float64, requires_grad=True)
    x_g = torch.zeros(1, 4, dtype=torch.float64)
    alpha = torch.tensor([[0.0, math.log(4.0), -1.0, 0.0]], dtype=torch.float64,
                         requires_grad=True)
    loss = kl_loss(x_e, x_g, alpha, beta=1.0)
    e = math.e
    expected = [0.125, 0.25 * 1.5 + 0.5 * math.log(4.0), e * 0.02 - 0.5, 0.0]
    torch.testing.assert_close(loss[0], torch.tensor(expected, dtype=torch.float64))
    loss.sum().backward()
    # dL/dx_e = exp(-alpha) SmoothL1'(d); dL/dalpha = -exp(-alpha) SmoothL1(d) + 1/2
    torch.testing.assert_close(
        x_e.grad[0], torch.tensor([0.5, 0.25, -0.2 * e, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        alpha.grad[0], torch.tensor([0.375, 0.125, 0.5 - 0.02 * e, 0.5], dtype=torch.float64))


def test_kl_reduces_to_smooth_l1_at_alpha_zero():
    g = torch.Generator().manual_seed(0)
    x_e, x_g = torch.randn(20, 4, generator=g) * 2, torch.randn(20, 4, generator=g)
    zero = torch.zeros(20, 4)
    for beta in (1.0, 1.0 / 9):
        torch.testing.assert_close(
            kl_loss(x_e, x_g, zero, beta=beta),
            torch.nn.functional.smooth_l1_loss(x_e, x_g, beta=beta, reduction="none"),
        )


class _Samples:  # the StageSamples fields kl_term reads
    def __init__(self, deltas, targets, labels, sampled, log_var=None):
        self.stage, self.deltas, self.target_deltas = "roi", deltas, targets
        self.labels, self.sampled, self.weights, self.box_weights = labels, sampled, None, None
        self.positive = labels == 1
        self.class_logits = torch.zeros(len(labels), 2)
        self.extras = {} if log_var is None else {"box_log_var": log_var}


def test_kl_term_sums_sampled_positives_over_sampled_rows():
    deltas = torch.tensor([[0.5, 0, 0, 0], [2.0, 0, 0, 0], [9.0, 9, 9, 9], [0.0, 0, 0, 0]])
    log_var = torch.tensor([[0.0, 0, 0, 0], [math.log(4.0), 0, 0, 0], [5.0, 5, 5, 5], [1.0, 1, 1, 1]])
    labels = torch.tensor([1, 1, 1, 0])  # row 2 positive but not sampled, row 3 negative
    sampled = torch.tensor([True, True, False, True])
    s = _Samples(deltas, torch.zeros(4, 4), labels, sampled, log_var)
    value = kl_term(s, KlLossConfig(), {})
    # rows 0 and 1 only: 0.125 + (0.375 + ln 2), over 3 sampled rows
    assert value.item() == pytest.approx((0.125 + 0.375 + math.log(2.0)) / 3, rel=1e-6)
    with pytest.raises(PedcrowdError, match="box_std_head"):
        kl_term(_Samples(deltas, torch.zeros(4, 4), labels, sampled), KlLossConfig(), {})
    # per-row box weights scale it; the classification weights (PISA's ISR) do not
    s.weights = torch.tensor([5.0, 5.0, 5.0, 5.0])
    assert kl_term(s, KlLossConfig(), {}).item() == pytest.approx(value.item(), rel=1e-6)
    s.box_weights = torch.tensor([2.0, 0.0, 1.0, 1.0])
    assert kl_term(s, KlLossConfig(), {}).item() == pytest.approx(2 * 0.125 / 3, rel=1e-6)


def test_the_kl_head_follows_the_box_loss():
    import dataclasses

    from pedcrowd.engine.config import Config, apply_overrides
    from pedcrowd.engine.train import head_for_box_loss

    cfg = head_for_box_loss(apply_overrides(Config(), ["loss.box=kl"]))  # a YAML or --set
    assert cfg.model.box_std_head
    assert head_for_box_loss(Config()) == Config()
    bad = dataclasses.replace(Config(), model=dataclasses.replace(Config().model, box_std_head=True))
    with pytest.raises(PedcrowdError, match="box_std_head: true needs loss.box: kl"):
        head_for_box_loss(bad)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine.config import Config, apply_overrides, save_config
    from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

    tmp = tmp_path_factory.mktemp("kl")
    ensure_synth(tmp / "synth", TINY_SYNTH)
    save_config(apply_overrides(Config(), tiny_overrides(tmp / "synth")), tmp / "tiny.yaml")
    return tmp / "tiny.yaml"


@pytest.mark.slow
def test_kl_model_trains_evaluates_with_voting_and_infer_writes_bbox_std(tiny_yaml, tmp_path):
    from typer.testing import CliRunner

    from pedcrowd.cli import app
    from pedcrowd.engine.checkpoint import load_for_inference
    from pedcrowd.engine.metrics import read_metrics

    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, [
        "train", "-c", str(tiny_yaml), "--box-loss", "kl", "--out", str(run),
        "--set", "postprocess.var_voting=true", "--set", "postprocess.nms=soft-gaussian",
    ])
    assert result.exit_code == 0, result.output
    train = [m for m in read_metrics(run) if m["kind"] == "train"]
    assert [m["iter"] for m in train] == [1, 2]
    assert all(math.isfinite(m["loss_box_reg"]) for m in train)
    val_dets = json.loads((run / "val_dets.json").read_text())
    assert val_dets  # evaluated (soft-NMS + variance voting) and wrote its detections

    # the checkpoint alone rebuilds the KL head and its post-processing, no flag needed
    model, cfg = load_for_inference(run)
    assert model.roi_heads.has_box_std and cfg.model.box_std_head and cfg.loss.box == "kl"
    assert cfg.postprocess.var_voting and cfg.postprocess.nms == "soft-gaussian"

    # infer runs the evaluation's loop: the same boxes on the val images, plus bbox_std
    root = cfg.data.root
    out = tmp_path / "infer"
    result = runner.invoke(app, [
        "infer", f"{root}/leftImg8bit/val", "--weights", str(run), "--out", str(out), "--device", "cpu",
        "--gt", f"{root}/annotations/val_gt.json",
    ])
    assert result.exit_code == 0, result.output
    dets = json.loads((out / "detections.json").read_text())
    key = lambda d: (d["image_id"], d["score"])  # noqa: E731
    assert [(d["image_id"], d["bbox"], d["score"]) for d in sorted(dets, key=key)] == [
        (d["image_id"], d["bbox"], d["score"]) for d in sorted(val_dets, key=key)
    ]
    assert all(len(d["bbox_std"]) == 4 and min(d["bbox_std"]) > 0 for d in dets)
    meta = json.loads((out / "postprocess.json").read_text())
    assert meta["method"] == "soft-gaussian+var-voting" and meta["box_std"] is True
    # eval reads the file (bbox_std ignored) and scores it as the training evaluation did
    result = runner.invoke(app, [
        "eval", "--gt", f"{root}/annotations/val_gt.json", "--dets", str(out / "detections.json"),
        "--json",
    ])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)["results"]
    trained = json.loads((run / "val_eval.json").read_text())["results"]
    assert {k: v["mr"] for k, v in scored.items()} == {k: v["mr"] for k, v in trained.items()}

    # the choices on the command line win, and are recorded
    result = runner.invoke(app, [
        "infer", f"{root}/leftImg8bit/val", "--weights", str(run), "--out", str(out), "--device", "cpu",
        "--nms", "hard", "--no-var-voting",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "postprocess.json").read_text())["method"] == "hard"
    hard = json.loads((out / "detections.json").read_text())
    assert {tuple(d["bbox"]) for d in hard} != {tuple(d["bbox"]) for d in dets}
    result = runner.invoke(app, [
        "infer", f"{root}/leftImg8bit/val", "--weights", str(run), "--out", str(out), "--nms", "soft",
    ])
    assert result.exit_code == 2 and "--nms soft: choose one of" in result.output


def test_var_voting_without_kl_head_is_a_clean_error(tiny_yaml, tmp_path):
    from typer.testing import CliRunner

    from pedcrowd.cli import app

    runner = CliRunner()
    result = runner.invoke(app, [
        "train", "-c", str(tiny_yaml), "--out", str(tmp_path / "r"),
        "--set", "postprocess.var_voting=true",
    ])
    assert result.exit_code == 2, result.output
    assert "var_voting" in result.output and "--box-loss kl" in result.output
