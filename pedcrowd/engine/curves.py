"""Training curves of a run, drawn from its ``metrics.jsonl``: ``RUN/curves.png``.

One panel per loss term (``loss`` is their sum; every ``loss_*`` key the run
logged, so a technique's own terms appear by themselves) against the
iteration, and one panel of the validation MR^-2 per evaluation (Reasonable
and Reasonable_occ=heavy, plus whatever else the caller asks for). Dotted
vertical lines mark the ends of the evaluated epochs.

:func:`write_run_curves` is called by the training loop after every epoch, so
the picture follows the run; ``pedcrowd compare --curves`` overlays several
runs with :func:`plot_curves`. Matplotlib draws with the Agg backend (no
display needed) and is imported only when a picture is drawn.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pedcrowd.engine.metrics import read_metrics
from pedcrowd.fileio import write_bytes_atomic

log = logging.getLogger(__name__)

MR_SETUPS = ("Reasonable", "Reasonable_occ=heavy")
SMOOTH = 5  # logged points in the running mean of an overlay


@dataclass
class RunCurves:
    """The series of one run.

    Attributes:
        losses: term (``loss``, ``loss_classifier``, ...) -> (iterations [P], values [P]).
        mr: setup -> (iterations [E], MR^-2 fractions [E]) of the evaluations (NaN: no value).
        eval_epochs: the epochs of the evaluations [E].
    """

    losses: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    mr: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    eval_epochs: list[int] = field(default_factory=list)


def read_curves(run_dir: str | Path) -> RunCurves:
    """The loss and MR^-2 series of ``run_dir/metrics.jsonl`` (empty when absent).

    A resumed run may log an iteration twice; the later line wins.
    """
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for rec in read_metrics(run_dir):
        kind = rec.get("kind")
        if kind == "train" and "iter" in rec:
            train[int(rec["iter"])] = rec
        elif kind == "eval" and "iter" in rec:
            evals[int(rec["iter"])] = rec
    out = RunCurves()
    iters = sorted(train)
    keys = sorted({k for it in iters for k in train[it] if k == "loss" or k.startswith("loss_")})
    for key in keys:
        xs = [it for it in iters if isinstance(train[it].get(key), int | float)]
        out.losses[key] = (np.array(xs, float), np.array([train[it][key] for it in xs], float))
    eval_iters = sorted(evals)
    out.eval_epochs = [int(evals[it].get("epoch", 0)) for it in eval_iters]
    setups = sorted({s for it in eval_iters for s in (evals[it].get("mr") or {})})
    for s in setups:
        ys = [(evals[it].get("mr") or {}).get(s) for it in eval_iters]
        out.mr[s] = (
            np.array(eval_iters, float), np.array([np.nan if y is None else y for y in ys], float)
        )
    return out


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at every position (shorter at the start). [P] -> [P]"""
    if len(values) == 0 or window <= 1:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curves(
    runs: dict[str, RunCurves], path: str | Path, *, setups: tuple[str, ...] = MR_SETUPS,
    title: str | None = None,
) -> Path:
    """Draw the curves of one or more runs into the PNG ``path`` (written atomically).

    One run: its logged losses as they are; several runs: a running mean over
    :data:`SMOOTH` logged points per run (the raw lines would hide each other).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = sorted({k for c in runs.values() for k in c.losses}, key=lambda k: (k != "loss", k))
    panels = [*terms, "MR"]
    # three panels a row (one row up to four): 6 panels fill 3 x 2, nothing left empty
    cols = len(panels) if len(panels) <= 4 else 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    overlay = len(runs) > 1
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for i, (name, c) in enumerate(runs.items()):
            color = colors[i % len(colors)]
            label = name if overlay else None
            if panel == "MR":
                for j, s in enumerate(setups):
                    if s not in c.mr:
                        continue
                    x, y = c.mr[s]
                    style = "-o" if j == 0 else "--s"
                    lab = f"{name} {s}" if overlay else s
                    ax.plot(x, 100 * y, style, color=color if overlay else colors[j % len(colors)],
                            ms=5, lw=1.6, label=lab)
                continue
            if panel not in c.losses:
                continue
            x, y = c.losses[panel]
            ax.plot(x, _running_mean(y, SMOOTH) if overlay else y, color=color, lw=1.3, label=label)
        if not overlay:
            first = next(iter(runs.values()), None)
            if first is not None and panel == "MR":
                for x in first.mr.get(setups[0], (np.zeros(0), None))[0]:
                    ax.axvline(x, color="0.7", ls=":", lw=0.8)
        if panel == "MR":
            ax.set_title("val MR$^{-2}$ (lower is better)", fontsize=12)
            ax.set_ylabel("MR$^{-2}$ %", fontsize=11)
        else:
            ax.set_title("total loss" if panel == "loss" else panel.removeprefix("loss_"), fontsize=12)
            ax.set_ylabel("loss" + (f" (mean of {SMOOTH} logs)" if overlay else ""), fontsize=11)
        ax.set_xlabel("iteration", fontsize=11)
        ax.tick_params(labelsize=10)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        if panel == "MR" and ax.lines:
            ax.legend(fontsize=9)
        elif overlay and panel == terms[0] and ax.lines:
            ax.legend(fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=13)
    # fixed margins: tight_layout costs more than the drawing itself
    fig.subplots_adjust(left=0.08 if cols > 1 else 0.2, right=0.98, bottom=0.12 if rows == 1 else 0.08,
                        top=(0.84 if rows == 1 else 0.9) if title else 0.92,
                        wspace=0.32, hspace=0.45)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=80, format="png")
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buffer.getvalue())


def write_run_curves(run_dir: str | Path) -> Path | None:
    """(Re)draw ``run_dir/curves.png`` from its metrics; None when there is nothing to draw
    yet or the picture cannot be written (a warning: a picture never stops a training run)."""
    run_dir = Path(run_dir)
    curves = read_curves(run_dir)
    if not curves.losses and not curves.mr:
        return None
    try:
        return plot_curves({run_dir.name: curves}, run_dir / "curves.png", title=str(run_dir.name))
    except (OSError, ValueError, RuntimeError) as e:  # a full disk, a matplotlib failure
        log.warning("%s: cannot draw curves.png (%s)", run_dir, e)
        return None
