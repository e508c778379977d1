"""Progress bars shared by the commands and the training engine (rich, on a given console)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from pedcrowd.data.synth import ensure_synth, generate


def synth_with_progress(out: str | Path, cfg, console: Console, label: str, force: bool = False,
                        should_stop=None):
    """Generate (``force``) or reuse-else-generate the synthetic set ``cfg`` at ``out``,
    with a transient bar of images drawn (on a terminal; one line elsewhere), none when reused.

    Args:
        cfg: a :class:`pedcrowd.data.config.SynthConfig`.
        label: the text before the bar.

    Returns:
        the :class:`pedcrowd.data.synth.SynthSummary`.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = None
    task = None

    def progress(done: int, total: int) -> None:
        # The bar appears with the first image drawn: a set reused from the cache draws nothing.
        nonlocal bar, task
        if bar is None and not console.is_terminal:  # a log: one line, no bar
            console.print(f"{label}: {total} images", soft_wrap=True, markup=False, highlight=False)
            bar = False
        if bar is None:
            bar = Progress(
                TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=console, transient=True,
            )
            bar.start()
            task = bar.add_task("synth", total=total)
        if bar:
            bar.update(task, completed=done)

    run = generate if force else ensure_synth
    try:
        return run(out, cfg, progress=progress, should_stop=should_stop)
    finally:
        if bar:
            bar.stop()
