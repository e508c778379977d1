"""scripts/gpu_check.py (issue 26): one line and exit 2 without CUDA, the README table,
and its CPU-sized dry run end to end (torchrun step on gloo included)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_one_line_and_exit_2(monkeypatch, capsys):
    gpu_check = load_script()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("gpu_check: no CUDA device")


def test_unknown_technique_is_refused(monkeypatch, capsys):
    gpu_check = load_script()
    assert gpu_check.main(["--dry-run", "--techniques", "default,nmsloss"]) == 2
    assert "unknown nmsloss" in capsys.readouterr().err


def test_markdown_table_rows():
    gpu_check = load_script()
    rows = [
        {"name": "torchvision", "amp": False, "step_s": 0.5, "images_per_s": 4.0, "peak_gib": 10.0,
         "ratio": 1.0, "amp_speedup": None},
        {"name": "default", "amp": True, "step_s": 0.25, "images_per_s": 8.0, "peak_gib": 6.5,
         "ratio": 1.04, "amp_speedup": 1.5},
    ]
    result = {"device": "NVIDIA H100", "torch": "2.15", "torchvision": "0.29",
              "settings": {"backbone": "resnet50_fpn", "input": [1024, 2048], "batch": 2,
                           "warmup": 5, "iters": 30, "amp_dtype": "float16"},
              "training": rows, "inference_images_per_s": {"amp_off": 10.0, "amp_on": 16.0},
              "ddp": {"ok": True, "backend": "nccl", "loss": 1.25}}
    table = gpu_check.markdown(result).splitlines()
    assert table[0].startswith("NVIDIA H100, torch 2.15, torchvision 0.29: resnet50_fpn at 1024 x 2048")
    assert "| torchvision | off | 4.00 | 500.0 | 10.00 | 1.000x |  |" in table
    assert "| default | on | 8.00 | 250.0 | 6.50 | 1.040x | 1.50x |" in table
    assert table[-2] == "Inference (pedcrowd default, batch 2): 10.00 images/s float32, 16.00 images/s AMP."
    assert table[-1] == "torchrun --nproc_per_node 1: ok, backend nccl, loss 1.2500"


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """About 20 s on a 2-core machine: 3 detectors x AMP off/on, 1 step each, then torchrun."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--techniques", "default,nms-rpn (official)",
         "--iters", "1", "--warmup", "0", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (tmp_path / "gpu_check.md").read_text() in out.stdout
    names = [(r["name"], r["amp"]) for r in result["training"]]
    assert names == [(n, amp) for amp in (False, True)
                     for n in ("torchvision", "default", "nms-rpn (official)")]
    by = {(r["name"], r["amp"]): r for r in result["training"]}
    for (name, amp), r in by.items():
        assert r["step_s"] > 0 and r["images_per_s"] == pytest.approx(2 / r["step_s"])
        assert r["ratio"] == pytest.approx(r["step_s"] / by[("torchvision", amp)]["step_s"])
        if amp:
            assert r["amp_speedup"] == pytest.approx(by[(name, False)]["step_s"] / r["step_s"])
    assert all(v > 0 for v in result["inference_images_per_s"].values())
    assert result["ddp"]["ok"] and result["ddp"]["backend"] == "gloo"
    assert result["ddp"]["skipped"] is False
