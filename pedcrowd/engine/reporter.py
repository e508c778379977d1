"""What a training run tells its user, kept out of :func:`pedcrowd.engine.train.fit`.

``fit`` calls a :class:`Reporter` at fixed points (start, each step, each
evaluation, warnings). The base class reports through :mod:`logging` and
draws nothing (library use, tests); :class:`RichReporter` is the command
line's: a live progress bar on a terminal, one line per ``log_every``
iterations off a terminal (a pipe, a log file, CI).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedcrowd.data.synth import ensure_synth
from pedcrowd.progress import synth_with_progress

log = logging.getLogger("pedcrowd.train")


def loss_text(record: dict[str, Any]) -> str:
    """``classifier=0.512 box_reg=0.101 ...`` for every loss term of a step record."""
    return " ".join(f"{k.removeprefix('loss_')}={v:.3f}" for k, v in record.items() if k.startswith("loss_"))


# Short names of the standard terms for the progress line (the log files keep the full ones).
_SHORT = {"classifier": "cls", "box_reg": "box", "objectness": "obj", "rpn_box_reg": "rpn_box"}


def short_loss_text(record: dict[str, Any]) -> str:
    """``loss 1.234 (cls 0.512 box 0.101 ...)``: the total, then each term."""
    terms = " ".join(
        f"{_SHORT.get(k.removeprefix('loss_'), k.removeprefix('loss_'))} {v:.3f}"
        for k, v in record.items() if k.startswith("loss_")
    )
    total = f"loss {record['loss']:.3f}" if "loss" in record else ""
    return f"{total} ({terms})" if total and terms else total or terms


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
        return ensure_synth(root, synth_cfg, should_stop=should_stop)

    def close(self) -> None:
        """The run ended (normally or not)."""


def duration_text(seconds: float | None) -> str:
    """``1:02:03`` / ``12:34``; ``--:--`` while unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class ProgressState:
    """What the progress display shows; :func:`progress_lines` renders it."""

    epoch: int = 1
    epochs: int = 1
    done: int = 0  # global iterations done
    total: int = 0
    images_per_s: float | None = None
    step_s: float | None = None
    eta_s: float | None = None
    lr: float | None = None
    losses: str = ""
    status: str = ""  # replaces the loss line while evaluating


def progress_lines(state: ProgressState, width: int, bar: bool = True) -> list[str]:
    """The two progress lines, each at most ``width`` characters.

    The first holds what a user watching a run needs, in this order: epoch,
    iteration / total, percentage, ETA and throughput (then a bar where room is
    left); the second holds the learning rate and the loss terms, cut with an
    ellipsis when they do not fit (the periodic log and metrics.jsonl have them all).
    """
    pct = 100 * state.done / state.total if state.total else 0.0
    speed = ""
    if state.images_per_s is not None:
        speed = f"  {state.images_per_s:.1f} img/s"
        if state.step_s is not None:
            speed += f" {state.step_s:.2f} s/it"
    first = (
        f"epoch {state.epoch}/{state.epochs}  iter {state.done}/{state.total} {pct:3.0f}%"
        f"  ETA {duration_text(state.eta_s)}{speed}"
    )
    room = width - len(first) - 2
    if bar and room >= 10:
        filled = int(round(room * state.done / state.total)) if state.total else 0
        first += "  " + "\u2501" * filled + "\u2500" * (room - filled)
    second = state.status or (
        (f"lr {state.lr:.2e}  " if state.lr is not None else "") + state.losses
    )
    return [_fit(first, width), _fit(second, width)]


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(0, width - 1)] + "\u2026"


class _ProgressView:
    """A rich renderable over a :class:`ProgressState` (re-read at every refresh)."""

    def __init__(self, state: ProgressState):
        self.state = state

    def __rich_console__(self, console, options):
        from rich.text import Text

        for line in progress_lines(self.state, options.max_width):
            yield Text(line, no_wrap=True, overflow="ellipsis")


class RichReporter(Reporter):
    """The command line's reporter, on stderr.

    On a terminal: a two-line live display (:func:`progress_lines`) under the
    log lines. Elsewhere (a pipe, a file, CI): plain log lines, one every
    ``train.log_every`` iterations, with the same fields. Log lines carry the
    time of day, never a source location.
    """

    def __init__(self, console=None, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._state: ProgressState | None = None
        self._live = None
        self._batch = 1
        self._recent: collections.deque = collections.deque(maxlen=21)  # (time, iteration)

    def _print(self, message, style: str = "") -> None:
        """One log line: the time of day, then ``message`` (plain text, never markup)."""
        from rich.text import Text

        line = Text(f"{time.strftime('%H:%M:%S')} ")
        line.append(message, style=style)
        # off a terminal rich would wrap at 80 columns: one record, one line
        self.console.print(line, soft_wrap=not self.console.is_terminal, highlight=False)

    def start(self, run_dir, cfg, total_iters, done_iters, epoch):
        n = cfg.train.epochs
        self.info(f"training into {run_dir} ({cfg.model.backbone}, {n} epoch{'s' if n != 1 else ''})")
        self._state = ProgressState(
            epoch=epoch + 1, epochs=cfg.train.epochs, done=done_iters, total=total_iters
        )
        import torch.distributed as dist

        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self._batch = cfg.train.batch_size * world  # images per step over every process
        self._recent.clear()
        self._recent.append((time.perf_counter(), done_iters))
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self._live = Live(
                _ProgressView(self._state), console=self.console, refresh_per_second=4,
                transient=True,
            )
            self._live.start()

    def epoch(self, epoch, epochs):
        if self._state is not None:
            self._state.epoch, self._state.epochs = epoch, epochs

    def step(self, record):
        st = self._state
        if st is None:
            return
        st.done = record.get("iter", st.done + 1)
        st.epoch = record.get("epoch", st.epoch)
        # speed and ETA over the last 20 steps: steady, and quick to follow a machine's load
        self._recent.append((time.perf_counter(), st.done))
        (t_old, i_old), (t_new, i_new) = self._recent[0], self._recent[-1]
        if i_new > i_old:
            st.step_s = (t_new - t_old) / (i_new - i_old)
            st.eta_s = st.step_s * (st.total - st.done)
            st.images_per_s = self._batch / st.step_s if st.step_s > 0 else None
        st.lr = record.get("lr")
        st.losses = short_loss_text(record)
        st.status = ""
        if record.get("log") and self.enabled and self._live is None:
            counts, losses = progress_lines(st, 10**6, bar=False)
            self._print(f"{counts}  data wait {record.get('data_wait_s', 0.0):.3f} s  {losses}")

    def evaluating(self):
        if self._state is not None:
            self._state.status = "evaluating on the val split ..."
        if self.enabled and self._live is None:
            self._print("evaluating on the val split ...")

    def evaluated(self, epoch, mrs):
        if self._state is not None:
            self._state.status = ""
            self._recent.clear()  # the evaluation's time is not a step's
            self._recent.append((time.perf_counter(), self._state.done))
        self.info(f"epoch {epoch}: MR^-2 {mr_text(mrs)}")

    def info(self, message):
        if self.enabled:
            self._print(message)

    def warning(self, message):
        if self.enabled:
            self._print(f"warning: {message}", style="yellow")

    def synthesize(self, root, synth_cfg, should_stop=None):
        if not self.enabled:
            return super().synthesize(root, synth_cfg, should_stop)
        return synth_with_progress(root, synth_cfg, self.console, f"generating synthetic crowds in {root}",
                                   should_stop=should_stop)

    def close(self):
        if self._live is not None:
            self._live.stop()
            self._live = None
