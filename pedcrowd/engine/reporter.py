"""What a training run tells its user, kept out of :func:`pedcrowd.engine.train.fit`.

``fit`` calls a :class:`Reporter` at fixed points (start, each step, each
evaluation, warnings). The base class reports through :mod:`logging` and
draws nothing (library use, tests); :class:`RichReporter` is the command
line's: a live progress bar on a terminal, one line per ``log_every``
iterations in a log file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("pedcrowd.train")


def loss_text(record: dict[str, Any]) -> str:
    """``classifier=0.512 box_reg=0.101 ...`` for every loss term of a step record."""
    return " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in record.items() if k.startswith("loss_"))


def mr_text(mrs: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {100 * v:.2f}%" if v is not None else f"{k} n/a" for k, v in mrs.items())


class Reporter:
    """Silent apart from :mod:`logging`: info and warnings, the MR^-2 of each evaluation."""

    def start(self, run_dir: Path, cfg: Any, total_iters: int, done_iters: int, epoch: int) -> None:
        log.info("training into %s (%s, %d epochs)", run_dir, cfg.model.backbone, cfg.train.epochs)

    def epoch(self, epoch: int, epochs: int) -> None:
        """``epoch`` (1-based) of ``epochs`` begins."""

    def step(self, record: dict[str, Any]) -> None:
        """After each step: ``record`` has epoch, iter, lr, loss, every term, images_per_s,
        data_wait_s and ``log`` (True every ``log_every`` iterations)."""

    def evaluating(self) -> None:
        """The val evaluation starts."""

    def evaluated(self, epoch: int, mrs: dict[str, float | None]) -> None:
        log.info("epoch %d: MR^-2 %s", epoch, mr_text(mrs))

    def info(self, message: str) -> None:
        log.info("%s", message)

    def warning(self, message: str) -> None:
        log.warning("%s", message)

    def synthesize(self, root: Path, synth_cfg: Any, should_stop=None):
        """Generate (or reuse) the synthetic data set; returns its ``SynthSummary``.
        ``should_stop`` is checked before every image (a signal stops the generation)."""
        from pedcrowd.data.synth import ensure_synth

        return ensure_synth(root, synth_cfg, should_stop=should_stop)

    def close(self) -> None:
        """The run ended (normally or not)."""


class RichReporter(Reporter):
    """The command line's reporter: a rich progress bar on stderr (log lines off a terminal)."""

    def __init__(self, console=None, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = None
        self._task = None

    def start(self, run_dir, cfg, total_iters, done_iters, epoch):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.info(f"training into {run_dir} ({cfg.model.backbone}, {cfg.train.epochs} epochs)")
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[losses]}"),
            console=self.console, disable=not self.enabled, refresh_per_second=4,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train", total=total_iters, completed=done_iters,
            epoch=f"{epoch + 1}/{cfg.train.epochs}", speed="", losses="",
        )

    def epoch(self, epoch, epochs):
        if self._progress is not None:
            self._progress.update(self._task, epoch=f"{epoch}/{epochs}")

    def step(self, record):
        if self._progress is None:
            return
        losses = loss_text(record)
        self._progress.update(
            self._task, advance=1, speed=f"{record['images_per_s']:.1f} img/s",
            losses=f"lr={record['lr']:.2e} {losses}",
        )
        if record.get("log") and self.enabled and not self.console.is_terminal:
            total = self._progress.tasks[0].total
            self.console.log(
                f"epoch {record['epoch']} iter {record['iter']}/{total} "
                f"{record['images_per_s']:.1f} img/s data wait {record['data_wait_s']:.3f}s "
                f"lr={record['lr']:.2e} {losses}"
            )

    def evaluating(self):
        if self._progress is not None:
            self._progress.update(self._task, losses="evaluating on val ...")

    def evaluated(self, epoch, mrs):
        self.info(f"epoch {epoch}: MR^-2 {mr_text(mrs)}")

    def info(self, message):
        if self.enabled:
            self.console.log(message)

    def warning(self, message):
        if self.enabled:
            self.console.log(f"[yellow]warning:[/yellow] {message}")

    def synthesize(self, root, synth_cfg, should_stop=None):
        from pedcrowd.progress import synth_with_progress

        if not self.enabled:
            return super().synthesize(root, synth_cfg, should_stop)
        return synth_with_progress(root, synth_cfg, self.console, f"generating synthetic crowds in {root}",
                                   should_stop=should_stop)

    def close(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
