"""Crowd knobs of the synthetic generator, the "crowded" preset, curves.png and compare --curves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.config import SYNTH_PRESETS, SynthConfig, synth_preset
from pedcrowd.data.stats import dataset_stats
from pedcrowd.data.synth import generate
from pedcrowd.data.synth_scene import render_scene
from pedcrowd.engine.curves import plot_curves, read_curves, write_run_curves
from pedcrowd.errors import PedcrowdError

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# sha256 of the first two images of each split of the default set (pixels, boxes, visible
# boxes, ratios, categories): the demo's cached data and numbers depend on these bytes.
# First computed before the crowd knobs (commit 0773d6b, 5d603c08...); since synth VERSION 2
# the drawing is pure numpy (pedcrowd/data/raster.py, issue 24), which moved the pixels once.
DEFAULT_GOLDEN = "f50bcbce05a326f05830a3b6fba4132056f07a5812d4786c1d97fbdb8a99376a"


def test_default_generator_output_is_unchanged_by_the_knobs():
    cfg = SynthConfig()
    h = hashlib.sha256()
    for split_key in (0, 1):
        for i in range(2):
            rng = np.random.default_rng([cfg.seed, split_key, i])
            img, rec = render_scene(rng, cfg.height, cfg.width, cfg, image_id=i + 1, file_name="x")
            for a in (img, rec.boxes, rec.vis_boxes, rec.vis_ratios):
                h.update(np.ascontiguousarray(a).tobytes())
            h.update(",".join(rec.categories).encode())
    assert h.hexdigest() == DEFAULT_GOLDEN
    assert synth_preset("default") == SynthConfig()


def test_knob_validation():
    # the declared ranges' messages (issue 23)
    with pytest.raises(PedcrowdError, match=r"'overlap' must be in \[0, 1\], got 1.5"):
        SynthConfig(overlap=1.5)
    with pytest.raises(PedcrowdError, match=r"'max_group' must be in \[2, 1000\], got 1"):
        SynthConfig(max_group=1)
    with pytest.raises(PedcrowdError, match="--preset 'packed'"):
        synth_preset("packed")
    assert synth_preset("crowded", density=3.0).density == 3.0  # explicit values win


def test_crowded_preset_populates_heavy_occlusion_and_high_iou_pairs(tmp_path):
    sizes = dict(train_images=0, val_images=16, height=192, width=384, seed=1)
    generate(tmp_path / "default", SynthConfig(**sizes))
    generate(tmp_path / "crowded", synth_preset("crowded", **sizes))
    d = dataset_stats(tmp_path / "default", "val")
    c = dataset_stats(tmp_path / "crowded", "val")
    heavy_d, heavy_c = d["setups"]["Reasonable_occ=heavy"], c["setups"]["Reasonable_occ=heavy"]
    # Measured on 100 val images at 384 x 768: heavy 117 -> 252, IoU > 0.5 pairs 78 -> 521.
    assert heavy_c >= 1.5 * max(heavy_d, 1)
    assert c["overlap_pairs"] >= 3 * max(d["overlap_pairs"], 1)
    assert c["heavy_to_reasonable"] > d["heavy_to_reasonable"]


def test_overlap_knob_alone_raises_high_iou_pairs(tmp_path):
    sizes = dict(train_images=0, val_images=12, height=192, width=384, seed=2, occlusion=0.9)
    generate(tmp_path / "loose", SynthConfig(overlap=0.0, **sizes))
    generate(tmp_path / "tight", SynthConfig(overlap=1.0, **sizes))
    loose = dataset_stats(tmp_path / "loose", "val")["overlap_pairs"]
    tight = dataset_stats(tmp_path / "tight", "val")["overlap_pairs"]
    # overlap 0: members 0.75..1.25 box widths apart, IoU <= (1 - 0.75) / (1 + 0.75) < 0.5
    # for equal heights; overlap 1: 0..0.25 widths apart, IoU >= 0.6 for equal heights.
    assert tight > 4 * max(loose, 1)


def test_benchmark_config_states_the_crowded_preset():
    raw = yaml.safe_load((REPO / "configs" / "crowd_benchmark.yaml").read_text())
    for key, value in SYNTH_PRESETS["crowded"].items():
        assert raw["synth"][key] == value, key


def test_data_synth_preset_cli(tmp_path):
    out = tmp_path / "c"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "crowded",
                                 "-n", "0", "--val-images", "1", "--height", "96", "--width", "160",
                                 "--occlusion", "0.6"])
    assert result.exit_code == 0, result.output
    params = json.loads((out / "synth.json").read_text())["params"]
    assert params["density"] == 14.0 and params["overlap"] == 0.75 and params["max_group"] == 6
    assert params["occlusion"] == 0.6  # the explicit option wins over the preset
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--preset", "packed"])
    assert bad.exit_code == 2 and "--preset 'packed'" in bad.output


# ----------------------------------------------------------------------------- curves


def _write_metrics(run: Path, lines: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _fake_run(run: Path, offset: float = 0.0) -> None:
    lines = []
    for it in range(1, 7):
        lines.append({"kind": "train", "epoch": 1 + (it > 3), "iter": it, "lr": 0.01,
                      "loss": 2.0 - 0.1 * it + offset, "loss_classifier": 1.0 - 0.05 * it,
                      "loss_nms_pull": 0.1, "step_s": 0.5})
        if it % 3 == 0:
            lines.append({"kind": "eval", "epoch": it // 3, "iter": it,
                          "mr": {"Reasonable": 0.9 - 0.1 * it / 3, "Reasonable_occ=heavy": None}})
    _write_metrics(run, lines)


def test_read_curves_series(tmp_path):
    _fake_run(tmp_path / "r")
    # a resumed run logs iteration 3 again: the later line wins
    with (tmp_path / "r" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"kind": "train", "epoch": 1, "iter": 3, "loss": 9.0}) + "\n")
    c = read_curves(tmp_path / "r")
    assert sorted(c.losses) == ["loss", "loss_classifier", "loss_nms_pull"]
    x, y = c.losses["loss"]
    assert x.tolist() == [1, 2, 3, 4, 5, 6]
    assert y.tolist() == pytest.approx([1.9, 1.8, 9.0, 1.6, 1.5, 1.4])
    assert c.losses["loss_classifier"][0].tolist() == [1, 2, 4, 5, 6]  # iter 3 has none now
    assert c.mr["Reasonable"][0].tolist() == [3, 6]
    assert c.mr["Reasonable"][1].tolist() == pytest.approx([0.8, 0.7])
    assert np.isnan(c.mr["Reasonable_occ=heavy"][1]).all()
    assert c.eval_epochs == [1, 2]


def test_write_run_curves_and_compare_overlay(tmp_path):
    assert write_run_curves(tmp_path / "empty") is None  # nothing logged yet: no picture
    _fake_run(tmp_path / "a")
    _fake_run(tmp_path / "b", offset=0.3)
    png = write_run_curves(tmp_path / "a")
    assert png == tmp_path / "a" / "curves.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 150_000
    assert not list((tmp_path / "a").glob(".*tmp*"))  # written atomically, no leftovers

    out = tmp_path / "overlay.png"
    result = runner.invoke(app, ["compare", f"base={tmp_path / 'a'}", f"other={tmp_path / 'b'}",
                                 "--curves", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    missing = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "empty"),
                                  "--curves", str(out)])
    assert missing.exit_code == 2 and "metrics.jsonl" in missing.output
    no_gt = runner.invoke(app, ["compare", str(tmp_path / "a")])
    assert no_gt.exit_code == 2 and "--gt is required" in no_gt.output


def test_plot_curves_overlay_smooths(tmp_path):
    from pedcrowd.engine.curves import _running_mean

    assert _running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    _fake_run(tmp_path / "a")
    path = plot_curves({"a": read_curves(tmp_path / "a"), "b": read_curves(tmp_path / "a")},
                       tmp_path / "o.png")
    assert path.is_file()
