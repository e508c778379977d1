"""Shared test fixtures.

The real annotation files live in ``../shared/data`` beside the repository
(present on the developers' machines and in CI). Tests that need them use the
``shared_data`` fixture and skip with a clear reason when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
