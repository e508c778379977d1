"""``pedcrowd train`` through CliRunner on a tiny config and tiny synthetic crowds."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine.config import Config, apply_overrides, save_config
from pedcrowd.engine.metrics import read_metrics
from pedcrowd.errors import PedcrowdError
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    ensure_synth(tmp / "synth", TINY_SYNTH)
    save_config(apply_overrides(Config(), tiny_overrides(tmp / "synth")), tmp / "tiny.yaml")
    return tmp / "tiny.yaml"


def test_help_lists_the_options():
    # The command's declared options, not the rendered help (which depends on the terminal).
    import typer.main

    train = typer.main.get_command(app).get_command(None, "train")
    options = {opt for p in train.params for opt in p.opts}
    for option in ("--config", "--loss", "--set", "--out", "--resume", "--device"):
        assert option in options
    assert runner.invoke(app, ["train", "--help"]).exit_code == 0


@pytest.mark.slow
def test_train_with_loss_preset_prints_the_summary(tiny_yaml, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(tiny_yaml),
            "--loss",
            "nms+rep",
            "--out",
            str(run),
            "--set",
            "train.log_every=1",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout carries only the JSON
    assert summary["iterations"] == 2 and summary["run_dir"] == str(run)
    saved = json.loads((run / "val_eval.json").read_text())
    assert summary["final_mr"] == {k: v["mr"] for k, v in saved["results"].items()}

    # the preset's weights reached the resolved config and the loss terms the log
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["loss"]["nms"]["lambda_pull"] == 0.1
    assert resolved["loss"]["nms"]["lambda_push"] == 0.001
    assert resolved["loss"]["rep"]["alpha"] == 0.5 and resolved["loss"]["rep"]["beta"] == 0.5
    assert resolved["train"]["device"] == "cpu"
    first = next(m for m in read_metrics(run) if m["kind"] == "train")
    assert {"loss_nms_pull", "loss_nms_push", "loss_rep_gt", "loss_rep_box"} <= first.keys()


@pytest.mark.slow
def test_table_output_and_resume_from_the_run_directory(tiny_yaml, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "-c", str(tiny_yaml), "-o", str(run)])
    assert result.exit_code == 0, result.output
    mr = json.loads((run / "val_eval.json").read_text())["results"]["Reasonable"]["mr"]
    row = next(line for line in result.stdout.splitlines() if "Reasonable " in line)
    assert f"{100 * mr:.2f}" in row

    # --resume with no --config reads RUN/config.yaml; --set extends the run by one epoch
    result = runner.invoke(
        app, ["train", "-o", str(run), "--resume", "--set", "train.epochs=2", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 4 and [h["epoch"] for h in summary["history"]] == [1, 2]

    # an explicit --out that holds a run is never overwritten without --resume
    result = runner.invoke(app, ["train", "-c", str(tiny_yaml), "-o", str(run)])
    assert result.exit_code == 2
    assert f"{run}: already holds a run" in result.stderr


def test_default_run_dir_moves_on_instead_of_overwriting(tmp_path):
    from pedcrowd.engine.rundir import claim_run_dir

    def claim(explicit=False):
        run_dir, lock = claim_run_dir(tmp_path / "demo", explicit=explicit, resume=False)
        lock.release()
        return run_dir

    assert claim() == tmp_path / "demo"
    (tmp_path / "demo" / "last.pt").touch()
    assert claim() == tmp_path / "demo-2"
    (tmp_path / "demo-2").mkdir(exist_ok=True)
    (tmp_path / "demo-2" / "last.pt").touch()
    (tmp_path / "demo-3").mkdir()  # an empty folder (e.g. a crashed start) is reused
    assert claim() == tmp_path / "demo-3"
    with pytest.raises(PedcrowdError, match="demo: already holds a run"):
        claim(explicit=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loss", "focal"], "unknown loss preset 'focal'"),
        (["--set", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--resume"], "no last.pt to resume from"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_yaml, tmp_path, args, message):
    result = runner.invoke(app, ["train", "-c", str(tiny_yaml), "-o", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml: config file not found" in result.stderr
