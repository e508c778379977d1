"""The run's metrics log: ``metrics.jsonl`` always, TensorBoard when installed.

One JSON object per line: ``{"kind": "train", "epoch", "iter", "lr", "loss",
<every loss term>, "images_per_s", "data_wait_s"}`` every ``log_every``
iterations and ``{"kind": "eval", "epoch", "iter", "mr": {setup: mr}, ...}``
after every evaluation. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pedcrowd.fileio import open_nofollow, to_jsonable  # noqa: F401 - to_jsonable re-exported


class MetricsLog:
    """Appends JSON lines to ``RUN/metrics.jsonl`` (and scalars to TensorBoard)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        try:  # optional: only when the user has tensorboard installed
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        except Exception:
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # O_NOFOLLOW: a link planted at metrics.jsonl is refused, not written through
        fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
        if self._tb is not None:
            step = int(record.get("iter", 0))
            for key, value in _flatten(record).items():
                if isinstance(value, int | float) and key not in ("epoch", "iter"):
                    self._tb.add_scalar(f"{record.get('kind', 'log')}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
