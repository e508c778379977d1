"""Shared test fixtures.

The real annotation files (the official CityPersons/Caltech ground truth and the
published NMS-Ped detections the parity tests compare against) live in
``../shared/data`` beside the repository on the developers' machines and in CI,
or wherever ``PEDCROWD_SHARED_DATA`` points. Tests that need them use the
``shared_data`` fixture and skip with a clear reason when it is absent; the
summary at the end of a run says how many of these parity tests ran.
"""

from __future__ import annotations

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
