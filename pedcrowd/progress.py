"""Progress bars shared by the commands and the training engine (rich, on a given console)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def synth_with_progress(out: str | Path, cfg, console: Console, label: str, force: bool = False,
                        should_stop=None):
    """Generate (``force``) or reuse-else-generate the synthetic set ``cfg`` at ``out``,
    with a transient bar of images drawn.

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

    from pedcrowd.data.synth import ensure_synth, generate

    with Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task("synth", total=cfg.train_images + cfg.val_images)
        run = generate if force else ensure_synth
        return run(out, cfg, progress=lambda done, total: bar.update(task, completed=done),
                   should_stop=should_stop)
