"""The training engine: schedule, clipping, checkpoints, a tiny run, resume equivalence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine import distributed as ddp
from pedcrowd.engine.checkpoint import (
    load_checkpoint,
    load_for_inference,
    resolve_checkpoint,
    save_checkpoint,
)
from pedcrowd.engine.config import Config, ScheduleConfig, apply_overrides
from pedcrowd.engine.loop import train_one_epoch
from pedcrowd.engine.metrics import read_metrics, to_jsonable
from pedcrowd.engine.predict import predict
from pedcrowd.engine.schedule import build_scheduler, lr_factor
from pedcrowd.engine.train import fit
from pedcrowd.errors import PedcrowdError
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory) -> Config:
    root = tmp_path_factory.mktemp("synth")
    ensure_synth(root, TINY_SYNTH)
    return apply_overrides(Config(), tiny_overrides(root))


# ----------------------------------------------------------------------------- schedule


def test_lr_warmup_step_and_cosine():
    step = ScheduleConfig(name="step", steps=[2, 3], gamma=0.1, warmup_iters=4, warmup_factor=0.2)
    # 10 iterations per epoch; warm-up ramps 0.2 -> 1 over 4 iterations
    assert lr_factor(0, step, 10, 50) == pytest.approx(0.2)
    assert lr_factor(2, step, 10, 50) == pytest.approx(0.6)
    assert lr_factor(4, step, 10, 50) == 1.0
    assert lr_factor(19, step, 10, 50) == 1.0
    assert lr_factor(20, step, 10, 50) == pytest.approx(0.1)  # after epoch 2
    assert lr_factor(30, step, 10, 50) == pytest.approx(0.01)  # after epoch 3
    cos = ScheduleConfig(name="cosine", warmup_iters=0, min_lr_factor=0.1)
    assert lr_factor(0, cos, 10, 100) == 1.0
    assert lr_factor(50, cos, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, cos, 10, 100) == pytest.approx(0.1)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = build_scheduler(opt, step, iters_per_epoch=10, epochs=5)
    lrs = []
    for _ in range(22):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5)
    assert lrs[21] == pytest.approx(0.05)


# ----------------------------------------------------------------------------- one epoch, stand-in model


class QuadraticModel(torch.nn.Module):
    """A stand-in detector: the loss dict of a linear model, scaled by ``scale``."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.scale = scale

    def forward(self, images, targets):
        x = torch.stack([img.sum() for img in images])  # [B]
        return {
            "loss_a": self.scale * (self.w.sum() - x).pow(2).mean(),
            "loss_b": self.w.abs().sum(),
        }


def test_train_one_epoch_clips_the_gradient_and_logs_every_term():
    model = QuadraticModel(scale=1000.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = ([torch.ones(3, 2, 2)], [{"boxes": torch.zeros(0, 4)}])
    result = train_one_epoch(
        model,
        opt,
        sched,
        scaler,
        [batch],
        torch.device("cpu"),
        epoch=0,
        iteration=7,
        grad_clip=1.0,
        log_every=1,
    )
    iteration, means, records = result.iteration, result.means, result.records
    # x = 12 (a 3 x 2 x 2 image of ones): loss_a = 1000 * 12^2 = 144000; its
    # gradient at w = 0 is 1000 * 2 * (0 - 12) = -24000 per component (norm
    # 24000 * sqrt 3); loss_b's subgradient at 0 is 0. Clipped to norm 1, lr 1:
    # every component moves by 1 / sqrt 3.
    assert torch.allclose(model.w.detach(), torch.full((3,), 1 / math.sqrt(3)))
    assert iteration == 8
    assert means == {"loss_a": pytest.approx(144000.0), "loss_b": 0.0}
    (rec,) = records
    assert rec["iter"] == 8 and rec["epoch"] == 1 and rec["log"] is True
    assert rec["loss"] == pytest.approx(144000.0) and rec["lr"] == 1.0

    # without clipping the same step moves each component by the full 24000
    model2 = QuadraticModel(scale=1000.0)
    opt2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    train_one_epoch(
        model2,
        opt2,
        torch.optim.lr_scheduler.LambdaLR(opt2, lambda it: 1.0),
        scaler,
        [batch],
        torch.device("cpu"),
        epoch=0,
        grad_clip=None,
    )
    assert torch.allclose(model2.w.detach(), torch.full((3,), 24000.0))


class FlakyModel(QuadraticModel):
    """QuadraticModel whose loss_a is infinite on an all-zero image."""

    def forward(self, images, targets):
        out = super().forward(images, targets)
        if float(images[0].abs().sum()) == 0:
            out["loss_a"] = out["loss_a"] * float("inf")
        return out


def _run_flaky(model, batches, max_nonfinite):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0)
    result = train_one_epoch(
        model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), batches,
        torch.device("cpu"), epoch=0, max_nonfinite=max_nonfinite,
    )
    return (result.iteration, result.means), sched, result.warnings, result.records


def test_train_one_epoch_skips_nonfinite_steps_then_stops_after_n_in_a_row():
    good = ([torch.ones(3, 2, 2)], [{}])
    bad = ([torch.zeros(3, 2, 2)], [{}])
    model = FlakyModel(scale=1.0)
    (iteration, means), sched, warnings, records = _run_flaky(model, [bad, good, bad, bad, good], 3)
    reference = QuadraticModel(scale=1.0)  # the same two good steps, no bad ones
    _run_flaky(reference, [good, good], 3)
    assert torch.equal(model.w.detach(), reference.w.detach())
    assert iteration == 5 and sched.last_epoch == 5  # skipped batches still count
    assert [r["skipped"] for r in records] == [True, False, True, True, False]
    assert len(warnings) == 3
    assert warnings[0] == (
        "epoch 1, iteration 1: non-finite loss (loss_a=nan); step skipped (1 in a row, stopping at 3)"
    )
    assert "2 in a row" in warnings[2]
    # the means are over the finite steps: (0 - 12)^2 at w = 0, then (3 * 0.24 - 12)^2 after
    # one SGD step (lr 0.01, gradient 2 * (0 - 12) per component)
    assert means["loss_a"] == pytest.approx((144.0 + 11.28**2) / 2)

    model = FlakyModel(scale=1.0)
    with pytest.raises(PedcrowdError) as e:
        _run_flaky(model, [good, bad, bad, bad, good], 3)
    assert str(e.value).startswith(
        "training diverged at epoch 1, iteration 4: 3 steps in a row with a non-finite loss (loss_a=inf)"
    )
    one_good = QuadraticModel(scale=1.0)
    _run_flaky(one_good, [good], 3)
    assert torch.equal(model.w.detach(), one_good.w.detach())  # the bad steps changed nothing


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_atomic_write_and_resolution(tmp_path):
    save_checkpoint(tmp_path / "run" / "last.pt", model={"w": torch.arange(3)}, epoch=2)
    save_checkpoint(tmp_path / "run" / "last.pt", model={"w": torch.arange(4)}, epoch=3)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]  # no temp left
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["epoch"] == 3 and torch.equal(ckpt["model"]["w"], torch.arange(4))

    assert resolve_checkpoint(tmp_path / "run") == tmp_path / "run" / "last.pt"
    save_checkpoint(tmp_path / "run" / "best.pt", epoch=1)
    assert resolve_checkpoint(tmp_path / "run") == tmp_path / "run" / "best.pt"
    with pytest.raises(PedcrowdError, match="neither best.pt nor last.pt"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PedcrowdError, match="torn.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")
    with pytest.raises(PedcrowdError, match="not a pedcrowd training checkpoint"):
        load_for_inference(tmp_path / "run" / "best.pt")


# ----------------------------------------------------------------------------- tiny runs


@pytest.mark.slow
def test_tiny_training_run_writes_the_run_directory(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    model, summary = fit(tiny_cfg, run)
    assert summary["iterations"] == 2  # 4 images / batch 2, one epoch
    names = {p.name for p in run.iterdir()}
    assert {
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "val_dets.json",
        "val_eval.json",
        "eval",
    } <= names

    metrics = read_metrics(run)
    train_lines = [m for m in metrics if m["kind"] == "train"]
    assert [m["iter"] for m in train_lines] == [1, 2]
    for m in train_lines:  # every loss term, finite, and the total is their sum
        terms = [
            m[k] for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
        ]
        assert all(math.isfinite(t) for t in terms)
        assert m["loss"] == pytest.approx(sum(terms))
    (ev,) = [m for m in metrics if m["kind"] == "eval"]
    assert ev["mr"] == {
        k: v["mr"] for k, v in json.loads((run / "val_eval.json").read_text())["results"].items()
    }

    # the detection file re-evaluates to exactly the saved evaluation
    from pedcrowd.data.config import build_dataset
    from pedcrowd.eval import evaluate, report_to_json
    from pedcrowd.formats.detections import read_detections

    val = build_dataset(tiny_cfg.data, "val", train=False)
    dets = json.loads((run / "val_dets.json").read_text())
    assert dets and {d["category_id"] for d in dets} == {1}
    assert {d["file_name"] for d in dets} <= {r.file_name for r in val.records}
    reread = read_detections(run / "val_dets.json", val.records)
    again = to_jsonable(report_to_json(evaluate(val.records, reread)))  # NaN -> null as in the file
    assert again == json.loads((run / "val_eval.json").read_text())
    assert again["results"]["Reasonable"]["n_gt"] > 0
    assert (run / "eval" / "epoch001_eval.json").read_text() == (run / "val_eval.json").read_text()

    # the checkpoint holds the trained weights; load_for_inference rebuilds the same detector
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    loaded, cfg = load_for_inference(run)
    assert cfg == apply_overrides(tiny_cfg, [f"train.out_dir={run}"])
    a, b = predict(loaded, val, torch.device("cpu")), predict(model, val, torch.device("cpu"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(tiny_cfg, tmp_path):
    two = apply_overrides(tiny_cfg, ["train.epochs=2", "data.num_workers=1"])
    one = apply_overrides(two, ["train.epochs=1"])
    full_model, full = fit(two, tmp_path / "full")
    fit(one, tmp_path / "split")
    resumed_model, resumed = fit(two, tmp_path / "split", resume=True)

    assert full["iterations"] == resumed["iterations"] == 4
    full_sd, resumed_sd = full_model.state_dict(), resumed_model.state_dict()
    assert full_sd.keys() == resumed_sd.keys()
    for k in full_sd:
        assert torch.equal(full_sd[k], resumed_sd[k]), k
    assert full["weights_digest"] == resumed["weights_digest"]
    # the momentum buffers and the schedule position match too
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["scheduler"] == b["scheduler"]
    for sa, sb in zip(
        a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert [h["train"] for h in a["history"]] == [h["train"] for h in b["history"]]
    # and training moved the weights away from the seeded initialisation
    from pedcrowd.engine.train import seed_everything
    from pedcrowd.model import build_model

    seed_everything(two.train.seed)
    init = build_model(two.model).state_dict()
    changed = [k for k in full_sd if not torch.equal(full_sd[k], init[k])]
    assert "roi_heads.box_predictor.cls_score.weight" in changed


def test_resume_without_a_checkpoint_is_an_error(tiny_cfg, tmp_path, monkeypatch):
    # checked before any process group is created
    monkeypatch.setattr(ddp, "init_distributed", lambda device: pytest.fail("group created"))
    with pytest.raises(PedcrowdError, match="no last.pt to resume from"):
        fit(tiny_cfg, tmp_path / "nothing", resume=True)


@pytest.mark.slow
@pytest.mark.parametrize("error", [PedcrowdError, KeyboardInterrupt])
def test_a_run_failing_mid_training_closes_the_log_and_keeps_last_pt(
    tiny_cfg, tmp_path, monkeypatch, error
):
    """A divergence or Ctrl-C in epoch 2: the log is closed with every line so far and
    epoch 1's last.pt is left as it was."""
    import pedcrowd.engine.train as train_mod
    from pedcrowd.engine.metrics import MetricsLog

    real_steps, real_close = train_mod.training_steps, MetricsLog.close
    epochs_run, closed = [], []

    def failing_steps(*args, **kwargs):
        epochs_run.append(len(epochs_run) + 1)
        steps = real_steps(*args, **kwargs)
        if len(epochs_run) == 1:
            yield from steps
            return
        yield next(steps)  # the first step of epoch 2 is reported and logged, then it fails
        raise error("loss is nan")

    def spy_close(self):
        closed.append(self.path)
        real_close(self)

    monkeypatch.setattr(train_mod, "training_steps", failing_steps)
    monkeypatch.setattr(MetricsLog, "close", spy_close)
    cfg = apply_overrides(tiny_cfg, ["train.epochs=2", "train.eval_every=0"])
    run = tmp_path / "run"
    with pytest.raises(error, match="loss is nan"):
        fit(cfg, run)

    assert epochs_run == [1, 2]
    assert closed == [run / "metrics.jsonl"]
    train_lines = [(m["epoch"], m["iter"]) for m in read_metrics(run) if m["kind"] == "train"]
    assert train_lines == [(1, 1), (1, 2), (2, 3)]
    assert not list(run.glob(".*.tmp*"))  # no half-written file left behind
    ckpt = load_checkpoint(run / "last.pt")
    assert (ckpt["epoch"], ckpt["iteration"]) == (1, 2)
    assert [h["epoch"] for h in ckpt["history"]] == [1]
