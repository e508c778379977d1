"""Layers import only what they need, checked in fresh interpreters.

The config tree is read by every command (``--help`` included) and must stay
fast: no torch, no cv2. ``pedcrowd eval`` is pure numpy (test_eval_cli.py runs
the command itself and checks the same for it).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchvision", "cv2", "matplotlib")


def heavy_modules_after(statement: str) -> list[str]:
    """The heavy modules loaded by running ``statement`` in a new interpreter."""
    code = f"import sys\n{statement}\nprint('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY"))
    return eval(line[len("HEAVY "):])


def test_torch_free_modules():
    modules = ("pedcrowd.data.config", "pedcrowd.model.config", "pedcrowd.engine.device", "pedcrowd.eval")
    assert heavy_modules_after("\n".join(f"import {m}" for m in modules)) == []


def test_config_tree_loads_neither_torch_nor_cv2():
    # data/synth.py (cv2) used to come in for SynthConfig, losses/ and model/ for torch.
    assert heavy_modules_after("import pedcrowd.engine.config") == []


def test_eval_command_loads_no_torch(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(
        '{"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],'
        ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 70],'
        ' "iscrowd": 0}], "categories": [{"id": 1, "name": "person"}]}'
    )
    dets = tmp_path / "dets.json"
    dets.write_text('[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 70], "score": 0.9}]')
    statement = (
        "from pedcrowd.cli import app\n"
        f"app(['eval', '--gt', {str(gt)!r}, '--dets', {str(dets)!r}, '--json'], standalone_mode=False)"
    )
    assert heavy_modules_after(statement) == []
