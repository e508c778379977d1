"""Surprises said out loud: inputs shrunk for the model, detections missing for most GT
images, images given where detections are expected."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import pedcrowd.infer as infer_mod
from pedcrowd.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synth_val(tmp_path_factory) -> Path:
    from pedcrowd.data.config import SynthConfig
    from pedcrowd.data.synth import generate

    root = tmp_path_factory.mktemp("said") / "set"
    generate(root, SynthConfig(train_images=1, val_images=6, height=96, width=160, seed=7))
    return root


def test_input_scale_follows_torchvisions_rule(tiny_fasterrcnn):
    model = tiny_fasterrcnn  # min_size 72, max_size 96
    assert infer_mod.input_scale(model, 72, 96) == 1.0
    assert infer_mod.input_scale(model, 288, 512) == pytest.approx(96 / 512)
    assert infer_mod.input_scale(model, 36, 40) == pytest.approx(2.0)


def test_infer_notes_inputs_resized_more_than_2x(tmp_path, monkeypatch, tiny_fasterrcnn):
    model = tiny_fasterrcnn
    monkeypatch.setattr(infer_mod, "load_model", lambda weights, device: model.to(device))
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "big.png"), rng.integers(0, 255, (288, 512, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "in" / "fit.png"), rng.integers(0, 255, (72, 96, 3), np.uint8))
    result = runner.invoke(
        app, ["infer", str(tmp_path / "in"), "-w", "run", "-o", str(tmp_path / "out"), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # 512 x 288 to 96 x 54 (x0.1875): a 50-pixel person becomes 9 pixels; the 96 x 72 image fits
    assert "note: 512 x 288 inputs are resized x0.19 to 96 x 54 for the model" in text
    assert "a 50-pixel person becomes 9 pixels" in text
    assert text.count("note:") == 1


def _val_records(root: Path):
    from pedcrowd.eval import load_ground_truth

    return load_ground_truth(root / "annotations" / "val_gt.json", "citypersons", None).records


def _dets_for(records, n_images: int) -> list[dict]:
    return [
        {"image_id": r.id, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 50.0], "score": 0.9}
        for r in records[:n_images]
    ]


def test_eval_warns_when_most_gt_images_have_no_detections(synth_val, tmp_path):
    records = _val_records(synth_val)
    with_people = [r for r in records if (~r.ignore).any()]
    assert len(with_people) >= 3  # the case needs a few images with pedestrians
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_dets_for(with_people, 1)))
    gt = str(synth_val / "annotations" / "val_gt.json")
    result = runner.invoke(app, ["eval", "--gt", gt, "--dets", str(dets)])
    assert result.exit_code == 0, result.output
    n = len(with_people)
    assert f"warning: {n - 1} of the {n} GT images with pedestrians have no detections" in " ".join(
        result.output.split()
    )
    # detections on every image: no warning
    dets.write_text(json.dumps(_dets_for(records, len(records))))
    result = runner.invoke(app, ["eval", "--gt", gt, "--dets", str(dets)])
    assert result.exit_code == 0 and "warning" not in result.output


@pytest.mark.parametrize("as_folder", [True, False])
def test_eval_given_images_points_to_infer(synth_val, as_folder):
    images = synth_val / "leftImg8bit" / "val"
    dets = images if as_folder else next(images.rglob("*.png"))
    result = runner.invoke(
        app, ["eval", "--gt", str(synth_val / "annotations" / "val_gt.json"), "--dets", str(dets)]
    )
    assert result.exit_code == 2
    assert f"--dets {dets}: images, not detections" in result.output
    assert "pedcrowd infer" in result.output
