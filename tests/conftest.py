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
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEDCROWD_SHARED_DATA") or REPO.parent / "shared" / "data")

_parity: set[str] = set()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"shared data not found at {SHARED_DATA} (set PEDCROWD_SHARED_DATA to the folder "
            "holding citypersons/, caltech/ and nmsped/; README 'Parity tests')"
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
