"""Checkpoints never run code: payloads are refused (no marker file), old ones convert with --trust."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.synth import ensure_synth
from pedcrowd.engine.checkpoint import (
    load_checkpoint,
    load_for_inference,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pedcrowd.engine.config import Config, apply_overrides, config_to_dict, save_config
from pedcrowd.errors import PedcrowdError
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

runner = CliRunner()


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config file and a real checkpoint of its (untrained) model."""
    from pedcrowd.model import build_model

    tmp = tmp_path_factory.mktemp("safe")
    ensure_synth(tmp / "synth", TINY_SYNTH)
    cfg = apply_overrides(Config(), tiny_overrides(tmp / "synth"))
    save_config(cfg, tmp / "tiny.yaml")
    model = build_model(cfg.model)
    save_checkpoint(tmp / "good.pt", model=model.state_dict(), config=config_to_dict(cfg),
                    epoch=1, iteration=2, rng=rng_state())
    return tmp, cfg


def evil_checkpoint(good, path, marker):
    """A real checkpoint with a payload added to it."""
    ckpt = load_checkpoint(good)
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, path)
    return path


def test_load_checkpoint_refuses_a_payload(tiny, tmp_path):
    tmp, _ = tiny
    marker = tmp_path / "marker"
    path = evil_checkpoint(tmp / "good.pt", tmp_path / "evil.pt", marker)
    with pytest.raises(PedcrowdError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "evil.pt: refused" in msg and "io.open" in msg and "convert-checkpoint" in msg
    assert "\n" not in msg
    assert not marker.exists()


def test_infer_weights_with_a_payload_exits_2_and_runs_nothing(tiny, tmp_path):
    tmp, _ = tiny
    marker = tmp_path / "marker"
    evil = evil_checkpoint(tmp / "good.pt", tmp_path / "evil.pt", marker)
    image = next((tmp / "synth").rglob("*.png"))
    result = runner.invoke(app, ["infer", str(image), "--weights", str(evil), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "evil.pt: refused" in result.output
    assert not marker.exists()


def test_train_resume_from_a_payload_last_pt_exits_2(tiny, tmp_path):
    tmp, cfg = tiny
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    evil_checkpoint(tmp / "good.pt", run / "last.pt", marker)
    result = runner.invoke(app, ["train", "--out", str(run), "--resume"])
    assert result.exit_code == 2, result.output
    assert "last.pt: refused" in result.output
    assert not marker.exists()


def test_set_model_weights_to_a_payload_exits_2(tiny, tmp_path):
    tmp, _ = tiny
    marker = tmp_path / "marker"
    evil = evil_checkpoint(tmp / "good.pt", tmp_path / "evil.pt", marker)
    result = runner.invoke(app, [
        "train", "-c", str(tmp / "tiny.yaml"), "--out", str(tmp_path / "run"),
        "--set", f"model.weights={evil}",
    ])
    assert result.exit_code == 2, result.output
    assert "model.weights" in result.output and "evil.pt: refused" in result.output
    assert not marker.exists()


def test_a_bare_pickle_payload_is_refused_too(tmp_path):
    import pickle

    marker = tmp_path / "marker"
    with (tmp_path / "legacy.pt").open("wb") as f:
        pickle.dump({"model": Payload(marker)}, f, protocol=2)
    with pytest.raises(PedcrowdError, match="legacy.pt: refused"):
        load_checkpoint(tmp_path / "legacy.pt")
    assert not marker.exists()


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    import random

    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    random.seed(5)
    save_checkpoint(tmp_path / "c.pt", rng=rng_state())
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_convert_checkpoint_needs_trust_then_makes_an_old_checkpoint_loadable(tiny, tmp_path):
    tmp, _ = tiny
    old = load_checkpoint(tmp / "good.pt")
    old["rng"]["numpy"] = np.random.get_state()  # noqa: NPY002 - what older pedcrowd wrote
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(PedcrowdError, match="refused"):
        load_checkpoint(tmp_path / "old.pt")

    args = ["convert-checkpoint", str(tmp_path / "old.pt"), str(tmp_path / "new.pt")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "pass --trust" in result.output
    assert not (tmp_path / "new.pt").exists()

    result = runner.invoke(app, [*args, "--trust"])
    assert result.exit_code == 0, result.output
    new = load_checkpoint(tmp_path / "new.pt")
    np.testing.assert_array_equal(new["rng"]["numpy"][1].numpy(), old["rng"]["numpy"][1])
    for k, v in old["model"].items():
        assert torch.equal(new["model"][k], v)
    set_rng_state(new["rng"])
    assert np.random.get_state()[2] == old["rng"]["numpy"][2]  # noqa: NPY002
    load_for_inference(tmp_path / "new.pt")


def test_checkpoint_weights_that_do_not_match_its_config(tiny, tmp_path):
    tmp, cfg = tiny
    ckpt = load_checkpoint(tmp / "good.pt")
    ckpt["config"]["model"]["representation_size"] = 48
    save_checkpoint(tmp_path / "mismatch.pt", **ckpt)
    with pytest.raises(PedcrowdError) as e:
        load_for_inference(tmp_path / "mismatch.pt")
    msg = str(e.value)
    assert "mismatch.pt: its weights do not match the model its config describes" in msg
    assert "wrong shape" in msg and "roi_heads.box_head.fc6.weight" in msg
