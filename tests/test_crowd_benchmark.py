"""scripts/crowd_benchmark.py end to end at a toy budget, and its resume rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    """scripts/<name>.py as module <name> (scripts/ is a folder of programs, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (its dataclasses look their module up; its sibling imports it)
    spec.loader.exec_module(module)
    return module


_load_script("crowd_benchmark_report")  # what the benchmark imports beside itself
bench = _load_script("crowd_benchmark")

# The tiny detector of tests/test_engine.py on 96 x 160 crowded images: 4 training
# images, batch 2, so one epoch is 2 steps.
TOY = [
    "model.backbone=tiny_fpn", "model.min_size=96", "model.max_size=160",
    "model.anchor_sizes=[8,16,32]", "model.rpn_pre_nms_top_n_train=100",
    "model.rpn_post_nms_top_n_train=50", "model.rpn_pre_nms_top_n_test=50",
    "model.rpn_post_nms_top_n_test=30", "model.rpn_batch_size_per_image=32",
    "model.box_batch_size_per_image=32", "model.representation_size=32", "data.num_workers=0",
    "optim.lr=0.01", "schedule.name=step", "schedule.warmup_iters=1", "train.batch_size=2",
    "train.device=cpu", "synth.height=96", "synth.width=160",
]

FUTURE = bench.Row("future", None, ("loss.cls=not_a_registered_term",), "a row that has not landed")
# loads, but its run fails: variance voting without the KL head
BROKEN = bench.Row("broken", None, ("postprocess.var_voting=true",), "a run that fails")


def _argv(tmp: Path, rows: str = "none,rep,future,broken") -> list[str]:
    argv = ["--out", str(tmp / "bench"), "--rows", rows, "--seeds", "1", "--iters", "2",
            "--train-images", "4", "--val-images", "4", "--bootstrap", "20",
            "--time-images", "1", "--results", str(tmp / "docs" / "RESULTS.md"),
            "--backbone-from", "none"]
    for s in TOY:
        argv += ["--set", s]
    return argv


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.setitem(bench.ROW_BY_NAME, "future", FUTURE)
    mp.setitem(bench.ROW_BY_NAME, "broken", BROKEN)
    assert bench.main(_argv(tmp)) == 0
    yield tmp
    mp.undo()


def test_rows_are_the_issue_list():
    names = [r.name for r in bench.ROWS]
    assert names == ["none", "nms_roi", "nms_rpn", "rep", "nms+rep", "focal", "ohem", "ghm", "pisa",
                     "qfl", "kl+vv", "softnms", "fcos", "fcos+dw", "bg_drop", "bg_ratio"]
    assert bench.ROW_BY_NAME["nms_rpn"].command() == "--loss nms --set loss.nms.stage=rpn"


@pytest.mark.slow
def test_toy_benchmark_end_to_end(toy):
    report = json.loads((toy / "bench" / "report.json").read_text())
    assert set(report["rows"]) == {"none", "rep"}
    assert "not_a_registered_term" in report["unavailable"]["future"]
    assert report["unavailable"]["broken"].startswith("failed: ") and "KL" in report["unavailable"]["broken"]
    runs = toy / "bench" / "runs"
    for name in ("none", "rep"):
        run = runs / name / "seed0"
        assert {"done.json", "last.pt", "val_dets.json", "curves.png", "metrics.jsonl"} <= {
            p.name for p in run.iterdir()}
        done = json.loads((run / "done.json").read_text())
        assert done["iterations"] == 2 and done["epochs"] == 1
        # the benchmark's own evaluation of the detections equals the training's evaluation
        evaluated = json.loads((run / "val_eval.json").read_text())["results"]
        st = report["rows"][name]["stats"]["Reasonable"]
        assert st["mean"] == pytest.approx(evaluated["Reasonable"]["mr"])
        assert report["rows"][name]["iterations"] == [2]
    rep = report["rows"]["rep"]["stats"]["Reasonable"]
    base = report["rows"]["none"]["stats"]["Reasonable"]
    assert rep["delta"] == pytest.approx(rep["mean"] - base["mean"])
    assert rep["ci"] is not None and rep["ci"][0] <= rep["delta"] + 1e-12 <= rep["ci"][1] + 2e-12
    cfg = (runs / "rep" / "seed0" / "config.yaml").read_text()
    assert "alpha: 0.5" in cfg  # the row's --loss rep really reached the run
    # pedcrowd analyze of the baseline: its GT count is the val split's Reasonable pedestrians
    from pedcrowd.data.stats import dataset_stats

    reasonable = dataset_stats(toy / "bench" / "data", "val")["setups"]["Reasonable"]
    assert report["rows"]["none"]["analyze"]["result"]["n_gt"] == reasonable
    assert (runs / "none" / "seed0" / "analyze.json").is_file()
    text = (toy / "docs" / "RESULTS.md").read_text()
    assert "| `rep` | `--loss rep` |" in text and "`future`: --set loss.cls=not_a_registered_term: loss.cls" in text
    for png in ("mr_fppi.png", "curves.png"):
        assert (toy / "docs" / "results" / png).read_bytes()[:4] == b"\x89PNG"


def _stamps(tmp: Path) -> dict[str, float]:
    runs = tmp / "bench" / "runs"
    return {str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("*.pt")} | {
        str(p.relative_to(runs)): p.stat().st_mtime_ns for p in runs.rglob("done.json")}


@pytest.mark.slow
def test_second_invocation_redoes_nothing(toy, capsys, monkeypatch):
    monkeypatch.setitem(bench.ROW_BY_NAME, "future", FUTURE)
    monkeypatch.setitem(bench.ROW_BY_NAME, "broken", BROKEN)
    before = _stamps(toy)
    capsys.readouterr()
    assert bench.main(_argv(toy)) == 0
    err = capsys.readouterr().err
    assert "none seed 0: reused" in err and "rep seed 0: reused" in err
    assert _stamps(toy) == before


@pytest.mark.slow
def test_killed_runs_are_continued_or_redone_never_counted(toy, capsys):
    runs = toy / "bench" / "runs"
    # killed after its checkpoint: no done.json, so it is continued from last.pt
    (runs / "rep" / "seed0" / "done.json").unlink()
    # killed before its first checkpoint: the folder holds no last.pt, so it is redone
    for p in (runs / "none" / "seed0").iterdir():
        if p.name not in ("config.yaml", "metrics.jsonl"):
            p.unlink() if p.is_file() else None
    capsys.readouterr()
    assert bench.main(_argv(toy, rows="none,rep")) == 0
    err = capsys.readouterr().err
    assert "rep/seed0: interrupted run, continuing from its last.pt" in err
    assert "none/seed0: interrupted before its first checkpoint, redone from scratch" in err
    assert json.loads((runs / "rep" / "seed0" / "done.json").read_text())["resumed"] is True
    assert json.loads((runs / "none" / "seed0" / "done.json").read_text())["iterations"] == 2


def test_unknown_row_is_an_error(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path), "--rows", "nms,bogus"]) == 2
    assert "unknown row(s) nms, bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_jobs_give_the_same_runs_as_one_process(toy, tmp_path, capsys):
    """--jobs 2: each run in its own process (log beside it), the same MR^-2 as in-process
    (training on the CPU is deterministic), and a second invocation reuses them."""
    argv = _argv(tmp_path, rows="none,rep") + ["--jobs", "2"]
    assert bench.main(argv) == 0
    runs = tmp_path / "bench" / "runs"
    for name in ("none", "rep"):
        assert (runs / name / "seed0.log").is_file()
        done = json.loads((runs / name / "seed0" / "done.json").read_text())
        serial = json.loads((toy / "bench" / "runs" / name / "seed0" / "done.json").read_text())
        assert done["iterations"] == 2  # (the digests differ: the data folder is another)
        assert done["final_mr"] == pytest.approx(serial["final_mr"])
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert set(report["rows"]) == {"none", "rep"}
    capsys.readouterr()
    assert bench.main(argv) == 0
    err = capsys.readouterr().err
    assert "none seed 0: reused" in err and "rep seed 0: reused" in err


@pytest.mark.slow
def test_rows_start_from_the_backbone_of_a_checkpoint(toy, tmp_path):
    """--backbone-from CKPT: only its backbone.* tensors, in a file named by the source's hash,
    become every row's model.weights; the heads start fresh."""
    import torch

    source = toy / "bench" / "runs" / "none" / "seed0" / "last.pt"
    argv = _argv(tmp_path, rows="none") + ["--backbone-from", str(source)]
    assert bench.main(argv) == 0
    files = list((tmp_path / "bench").glob("backbone-*.pt"))
    assert len(files) == 1
    state = torch.load(files[0], weights_only=True)["model"]
    full = torch.load(source, weights_only=True)["model"]
    assert set(state) == {k for k in full if k.startswith("backbone.")} and state
    cfg = (tmp_path / "bench" / "runs" / "none" / "seed0" / "config.yaml").read_text()
    assert f"weights: {files[0]}" in cfg
