"""Shared test fixtures.

The real annotation files (the official CityPersons/Caltech ground truth and the
published NMS-Ped detections the parity tests compare against) live in
``../shared/data`` beside the repository on the developers' machines and in CI,
or wherever ``PEDCROWD_SHARED_DATA`` points. Tests that need them use the
``shared_data`` fixture and skip with a clear reason when it is absent; the
summary at the end of a run says how many of these parity tests ran.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEDCROWD_SHARED_DATA") or REPO.parent / "shared" / "data")

_parity: set[str] = set()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A weights-only checkpoint of the tiny test detector (random weights) and its config."""
    from pedcrowd.engine.checkpoint import save_checkpoint
    from pedcrowd.engine.config import Config, apply_overrides, config_to_dict
    from pedcrowd.model import build_model
    from pedcrowd.reference.tiny import tiny_overrides

    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = apply_overrides(Config(), [o for o in tiny_overrides(tmp) if not o.startswith("synth.")])
    save_checkpoint(tmp / "m.pt", model=build_model(cfg.model).state_dict(), config=config_to_dict(cfg))
    return tmp / "m.pt"


@pytest.fixture
def tiny_fasterrcnn():
    """A torchvision FasterRCNN with a 2-conv backbone (seed 0, eval mode): ~50 boxes per
    image in a few ms; inputs are resized to min_size 72, max_size 96."""
    # imported here: the pure-numpy tests (eval, formats) run without loading torch
    import torch
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )
    backbone.out_channels = 16
    model = FasterRCNN(
        backbone,
        num_classes=2,
        rpn_anchor_generator=AnchorGenerator(sizes=((16, 32),), aspect_ratios=((2.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        min_size=72,
        max_size=96,
        box_score_thresh=0.0,
        representation_size=32,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=30,
    )
    return model.eval()


@pytest.fixture
def small_gt(tmp_path):
    """Writes a CityPersons ground truth to ``tmp_path/gt.json`` and returns its path: two
    images, three pedestrians (one 40 px: only in All), one ignore region."""

    def write() -> Path:
        anns = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "height": 100, "vis_ratio": 1.0, "ignore": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [300, 10, 41, 100], "height": 100, "vis_ratio": 1.0, "ignore": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 16, 40], "height": 40, "vis_ratio": 1.0, "ignore": 0},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [500, 0, 200, 200], "height": 200, "vis_ratio": 1.0, "ignore": 1},
        ]
        doc = {"images": [{"id": 1, "im_name": "a_1.png"}, {"id": 2, "im_name": "b_2.png"}],
               "annotations": anns, "categories": [{"id": 1, "name": "pedestrian"}]}
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(doc))
        return path

    return write


@pytest.fixture
def small_dets(tmp_path):
    """Writes detections to ``tmp_path/dets.json`` and returns its path: ``dets`` (a list, or
    the file's text as a string), by default three detections on :func:`small_gt`'s images."""

    def write(dets=None) -> Path:
        dets = dets if dets is not None else [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [150, 10, 41, 100], "score": 0.8},
            {"image_id": 2, "category_id": 1, "bbox": [550, 50, 41, 100], "score": 0.95},
        ]
        path = tmp_path / "dets.json"
        path.write_text(json.dumps(dets) if not isinstance(dets, str) else dets)
        return path

    return write


@pytest.fixture
def gt_doc() -> dict:
    """A valid CityPersons ground-truth document (two images, one pedestrian), fresh per test."""
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "height": 100,
           "vis_ratio": 1.0, "ignore": 0}
    return {"images": [{"id": 1, "im_name": "a_1.png"}, {"id": 2, "im_name": "b_2.png"}],
            "annotations": [ann],
            "categories": [{"id": 1, "name": "pedestrian"}]}


@pytest.fixture
def one_line_exit_2():
    """Checks that a CliRunner result is exit 2 with one ``pedcrowd: error: `` line holding
    every fragment given, and no traceback; returns the line."""

    def check(result, *fragments) -> str:
        assert result.exit_code == 2, result.output
        err = result.stderr.strip()
        assert "\n" not in err and "Traceback" not in result.output, err
        assert err.startswith("pedcrowd: error: ")
        for fragment in fragments:
            assert fragment in err, err
        return err

    return check


@pytest.fixture
def usual_handlers():
    """Python's own handlers, whatever this process inherited (pytest started as a background
    job of a script inherits SIGINT ignored; issue 23), restored afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data not found at {SHARED_DATA} (set PEDCROWD_SHARED_DATA to the folder "
            "holding citypersons/, caltech/ and nmsped/; docs/development.md)"
        )
    return SHARED_DATA


def pytest_collection_modifyitems(items):
    _parity.update(item.nodeid for item in items if "shared_data" in item.fixturenames)


def pytest_terminal_summary(terminalreporter):
    """'parity tests (official data at ...): 40 ran, 0 skipped' after every run that collected any."""
    if not _parity:
        return
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            if report.nodeid in _parity and (report.when == "call" or outcome == "skipped"):
                counts[outcome] += 1
    ran = counts["passed"] + counts["failed"]
    if ran + counts["skipped"] == 0:  # all deselected (-m, -k)
        return
    terminalreporter.write_line(
        f"parity tests (official data at {SHARED_DATA}): {ran} ran "
        f"({counts['failed']} failed), {counts['skipped']} skipped"
    )
