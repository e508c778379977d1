"""SIGTERM / SIGINT during training: finish the step, checkpoint, exit 143 / 130.

A cluster scheduler pre-empts a job with SIGTERM; Ctrl-C sends SIGINT. While
:class:`StopOnSignal` is active, the first of either only sets a flag that the
training loop reads after each optimiser step; the loop then writes
``last.pt`` and :func:`pedcrowd.engine.train.fit` raises :class:`Interrupted`.
The previous handlers are restored at once, so a second signal acts as usual
(Ctrl-C twice stops immediately). A signal that is ignored (``SIG_IGN``) on entry,
as SIGINT is for a background job of a script, stays ignored.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, the shell's convention


class Interrupted(Exception):  # noqa: N818 - the name says what happened to the run
    """Training stopped on a signal after writing a checkpoint.

    Attributes:
        signum: the signal; ``exit_code`` 143 (SIGTERM) or 130 (SIGINT).
        checkpoint: the ``last.pt`` just written (None if none could be).
    """

    def __init__(self, signum: int, run_dir: Path, checkpoint: Path | None, iteration: int):
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + int(signum))
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        if checkpoint is None:  # stopped before the first step (generating the data set)
            super().__init__(f"{name}: training stopped before its first step, no checkpoint written; "
                             "start it again with the same command")
            return
        super().__init__(
            f"{name}: training stopped, checkpoint {checkpoint} written at iteration {iteration}; "
            f"continue with: pedcrowd train --out {run_dir} --resume"
        )


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set :attr:`signum` instead of killing the process.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self._restore()  # a second signal takes its usual effect

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                if signal.getsignal(sig) == signal.SIG_IGN:
                    # ignored when the process started (a `cmd &` job in a script ignores SIGINT):
                    # Python leaves that alone, and so does pedcrowd
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
