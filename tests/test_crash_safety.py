"""Real processes killed mid-epoch and resumed end with an uninterrupted run's weights.

SIGKILL (nothing can be saved; the periodic checkpoints are what is left) and
SIGTERM (the run finishes its step, writes last.pt and exits 143). Plus the
run-directory lock, torn checkpoints, stale temporary files and metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine.checkpoint import load_checkpoint
from pedcrowd.engine.config import Config, apply_overrides, save_config
from pedcrowd.engine.metrics import read_metrics
from pedcrowd.engine.rundir import RunLock, truncate_metrics
from pedcrowd.engine.signals import StopOnSignal
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
ITERS = 16  # 16 images, batch 2, 2 epochs: 8 iterations per epoch


@pytest.fixture(scope="module")
def crash_cfg(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("crash")
    ensure_synth(tmp / "synth", dataclasses.replace(TINY_SYNTH, train_images=16))
    cfg = apply_overrides(Config(), [
        *tiny_overrides(tmp / "synth"), "synth.train_images=16", "train.epochs=2",
        "train.eval_every=0", "train.checkpoint_every=1", "train.log_every=1",
    ])
    save_config(cfg, tmp / "crash.yaml")
    return tmp / "crash.yaml"


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "pedcrowd", "train", *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_iteration(proc: subprocess.Popen, run: Path, at_least: int, timeout: float = 240) -> int:
    """Poll metrics.jsonl until a train line with iter >= at_least appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, finish(proc)
        path = run / "metrics.jsonl"
        if path.is_file():
            iters = [json.loads(x)["iter"] for x in path.read_text().splitlines()[:-1]]  # last may be torn
            if iters and max(iters) >= at_least:
                return max(iters)
        time.sleep(0.01)
    raise AssertionError("training did not get there in time")


@pytest.fixture(scope="module")
def reference(crash_cfg, tmp_path_factory) -> dict:
    """The uninterrupted run's summary."""
    run = tmp_path_factory.mktemp("ref") / "run"
    code, out, err = finish(start("-c", str(crash_cfg), "-o", str(run), "--json"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["iterations"] == ITERS
    return summary


def assert_metrics_once_each(run: Path) -> None:
    train = [m["iter"] for m in read_metrics(run) if m["kind"] == "train"]
    assert train == list(range(1, ITERS + 1))
    assert [m["epoch"] for m in read_metrics(run) if m["kind"] == "eval"] == [2]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(crash_cfg, reference, tmp_path):
    run = tmp_path / "run"
    proc = start("-c", str(crash_cfg), "-o", str(run))
    wait_for_iteration(proc, run, at_least=10)  # in epoch 2 (iterations 9-16)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the kill may fall between keeping prev.pt and renaming the new last.pt into place
    last = run / "last.pt" if (run / "last.pt").is_file() else run / "prev.pt"
    ckpt = load_checkpoint(last)
    assert 9 <= ckpt["iteration"] < ITERS and ckpt["epoch"] == 1 and ckpt["epoch_state"]["steps"] > 0

    # the worst case on top: last.pt torn, a killed write's temporary file left behind
    prev_iteration = load_checkpoint(run / "prev.pt")["iteration"]
    assert prev_iteration in (ckpt["iteration"] - 1, ckpt["iteration"])
    data = (run / "last.pt").read_bytes() if (run / "last.pt").is_file() else b"\x00" * 1000
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    (run / ".last.pt.tmp-99999").write_bytes(b"half a checkpoint")

    code, out, err = finish(start("-o", str(run), "--resume", "--json"))
    assert code == 0, err
    flat = " ".join(err.split())  # rich wraps long log lines
    assert "last.pt: not a readable checkpoint" in flat and "resuming from the checkpoint before it" in flat
    summary = json.loads(out)
    assert summary["iterations"] == ITERS
    assert summary["weights_digest"] == reference["weights_digest"]
    assert [h["train"] for h in summary["history"]] == [h["train"] for h in reference["history"]]
    assert summary["final_mr"] == reference["final_mr"]
    assert not list(run.glob(".*.tmp*"))
    assert_metrics_once_each(run)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes_exactly(crash_cfg, reference, tmp_path):
    run = tmp_path / "run"
    proc = start("-c", str(crash_cfg), "-o", str(run))
    wait_for_iteration(proc, run, at_least=3)  # in epoch 1
    proc.send_signal(signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 143, err
    ckpt = load_checkpoint(run / "last.pt")
    stopped_at = ckpt["iteration"]
    assert 3 <= stopped_at < ITERS
    message = err.strip().splitlines()[-1]
    assert message == (
        f"pedcrowd: SIGTERM: training stopped, checkpoint {run / 'last.pt'} written at iteration "
        f"{stopped_at}; continue with: pedcrowd train --out {run} --resume"
    )
    train = [m["iter"] for m in read_metrics(run) if m["kind"] == "train"]
    assert train == list(range(1, stopped_at + 1))  # the step in flight was finished and logged

    code, out, err = finish(start("-o", str(run), "--resume", "--json"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["weights_digest"] == reference["weights_digest"]
    assert [h["train"] for h in summary["history"]] == [h["train"] for h in reference["history"]]
    assert_metrics_once_each(run)


def test_a_second_training_on_a_locked_run_directory_is_refused(crash_cfg, tmp_path):
    run = tmp_path / "run"
    lock = RunLock(run)
    assert lock.acquire()
    try:  # flock conflicts between two open files of one process too
        result = CliRunner().invoke(app, ["train", "-c", str(crash_cfg), "-o", str(run)])
    finally:
        lock.release()
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"pedcrowd: error: {run}: another training (pid {os.getpid()}) is using this run "
        "directory; wait for it to finish or choose another --out"
    )
    assert not (run / "config.yaml").exists()


def test_a_dead_process_does_not_hold_the_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pedcrowd.engine.rundir import RunLock; "
         "assert RunLock(__import__('pathlib').Path(sys.argv[1])).acquire(); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert not RunLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path)
    assert lock.acquire()
    lock.release()


def test_sigint_and_sigterm_only_set_the_flag_and_a_second_one_acts_as_usual(usual_handlers):
    for sig in (signal.SIGINT, signal.SIGTERM):
        with StopOnSignal() as stop:
            os.kill(os.getpid(), sig)
            time.sleep(0.01)  # the handler runs between bytecodes
            assert stop.signum == sig
            assert signal.getsignal(sig) is not stop._handle  # restored after the first
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_ignored_on_entry_stays_ignored(usual_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a `cmd &` job of a script inherits it
    with StopOnSignal() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signum is None  # ignored, as Python itself leaves it
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # SIGTERM still stops the run
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
def test_the_signal_tests_pass_however_pytest_is_started(tmp_path):
    """Background (SIGINT and SIGQUIT ignored, as a shell does for `pytest &` in a script),
    in a new session with no terminal and stdin from /dev/null, as a CI runner may start it."""
    tests = ["test_sigint_and_sigterm_only_set_the_flag_and_a_second_one_acts_as_usual",
             "test_a_signal_ignored_on_entry_stays_ignored"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def ignore_interrupts():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    for preexec in (ignore_interrupts, None):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             *(f"{__file__}::{name}" for name in tests)],
            env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            preexec_fn=preexec, start_new_session=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "2 passed" in proc.stdout


def test_truncate_metrics_keeps_each_iteration_once(tmp_path):
    lines = [{"kind": "train", "iter": i} for i in (1, 2, 3, 4)] + [{"kind": "eval", "iter": 4}]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "tra'
    )
    assert truncate_metrics(tmp_path, 4, eval_done=False) == 2  # the eval is redone, the torn line
    assert [(m["kind"], m["iter"]) for m in read_metrics(tmp_path)] == [("train", i) for i in (1, 2, 3, 4)]
    assert truncate_metrics(tmp_path, 2) == 2
    assert [m["iter"] for m in read_metrics(tmp_path)] == [1, 2]


# ----------------------------------------------------------------------------- in-process: resume rules, divergence


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished 1-epoch tiny run (step schedule) and its config."""
    from pedcrowd.engine.train import fit

    tmp = tmp_path_factory.mktemp("resume_rules")
    ensure_synth(tmp / "synth", TINY_SYNTH)
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp / "synth"), "train.eval_every=0"])
    fit(cfg, tmp / "run")
    return cfg, tmp / "run"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0.02", "optim.lr: 0.01 -> 0.02"),
        ("schedule.warmup_iters=5", "schedule.warmup_iters: 1 -> 5"),
        ("train.batch_size=1", "train.batch_size: 2 -> 1"),
        ("model.box_nms_thresh=0.6", "model.box_nms_thresh: 0.5 -> 0.6"),
    ],
)
def test_resume_refuses_a_changed_trajectory(one_epoch_run, override, message):
    from pedcrowd.engine.train import fit
    from pedcrowd.errors import PedcrowdError

    cfg, run = one_epoch_run
    with pytest.raises(PedcrowdError) as e:
        fit(apply_overrides(cfg, [override, "train.epochs=2"]), run, resume=True)
    text = str(e.value)
    assert text.startswith(f"{run / 'last.pt'}: resuming with a changed config would not continue the same run")
    assert message in text and "--set model.weights=" in text


@pytest.mark.slow
def test_resume_epochs_step_schedule_warns_cosine_refuses(one_epoch_run, tmp_path):
    import shutil

    from pedcrowd.engine.reporter import Reporter
    from pedcrowd.engine.train import fit
    from pedcrowd.errors import PedcrowdError

    cfg, run = one_epoch_run
    with pytest.raises(PedcrowdError, match="train.epochs=0|must be >= 1"):
        apply_overrides(cfg, ["train.epochs=0"])
    cosine_run = tmp_path / "cosine"
    fit(apply_overrides(cfg, ["schedule.name=cosine"]), cosine_run)
    with pytest.raises(PedcrowdError, match=r"train.epochs 1 -> 2 would change the cosine schedule"):
        fit(apply_overrides(cfg, ["schedule.name=cosine", "train.epochs=2"]), cosine_run, resume=True)

    class Warnings(Reporter):
        seen: list[str] = []

        def warning(self, message):
            self.seen.append(message)

    copy = tmp_path / "step"
    shutil.copytree(run, copy)
    _, summary = fit(apply_overrides(cfg, ["train.epochs=2"]), copy, resume=True, reporter=Warnings())
    assert summary["iterations"] == 4
    assert Warnings.seen == [
        f"resuming {copy / 'last.pt'}: train.epochs 1 -> 2 (step schedule: the learning rate of every "
        "iteration is unchanged)"
    ]


@pytest.mark.slow
def test_divergence_stops_after_n_nonfinite_steps_and_keeps_last_pt(one_epoch_run, tmp_path):
    from pedcrowd.engine.train import fit
    from pedcrowd.errors import PedcrowdError

    cfg, _ = one_epoch_run
    # lr 1e30: the first step blows the weights up, every later loss is non-finite
    bad = apply_overrides(cfg, ["optim.lr=1e30", "optim.grad_clip=null", "train.epochs=4",
                                "train.max_nonfinite_steps=3", "schedule.warmup_iters=0"])
    run = tmp_path / "run"
    with pytest.raises(PedcrowdError) as e:
        fit(bad, run)
    text = str(e.value)
    assert "3 steps in a row with a non-finite loss" in text
    assert text.endswith(f"; the last checkpoint ({run / 'last.pt'}) is left as it was")
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 2  # written before the run stopped in epoch 2
    skipped = [m["iter"] for m in read_metrics(run) if m["kind"] == "train" and m.get("skipped")]
    assert len(skipped) >= 2 and skipped == list(range(skipped[0], skipped[0] + len(skipped)))


def test_interrupted_exit_codes_and_message(tmp_path):
    from pedcrowd.engine.signals import Interrupted

    stopped = Interrupted(signal.SIGINT, tmp_path, tmp_path / "last.pt", 7)
    assert stopped.exit_code == 130
    assert str(stopped) == (
        f"SIGINT: training stopped, checkpoint {tmp_path / 'last.pt'} written at iteration 7; "
        f"continue with: pedcrowd train --out {tmp_path} --resume"
    )
    assert Interrupted(signal.SIGTERM, tmp_path, None, 7).exit_code == 143


def test_resume_rules_for_training_sets_and_threads():
    import copy

    from pedcrowd.engine.config import Config, config_to_dict
    from pedcrowd.engine.rundir import check_resume_config
    from pedcrowd.errors import PedcrowdError

    saved = config_to_dict(Config())
    saved["data"]["train"] = [{"format": "mot", "root": "/old/MOT17", "split": "train"}]
    moved = copy.deepcopy(saved)
    moved["data"]["train"][0]["root"] = "/new/MOT17"  # a moved folder: the same run
    assert check_resume_config(saved, moved, 1, Path("last.pt")) == []
    other = copy.deepcopy(saved)
    other["data"]["train"][0]["split"] = "val"
    with pytest.raises(PedcrowdError, match="data.train: the training sets changed"):
        check_resume_config(saved, other, 1, Path("last.pt"))
    threads = copy.deepcopy(saved)
    threads["train"]["threads"] = 1
    (warning,) = check_resume_config(saved, threads, 1, Path("last.pt"))
    assert warning.startswith("train.threads None -> 1")
