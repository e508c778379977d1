"""Miss rate vs FPPI plots in the style of the Caltech benchmark (log-log, MR^-2 in the legend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_mr_fppi(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]],
    path: str | Path | None = None,
    title: str = "",
    ax=None,
):
    """Draw miss rate against FPPI for several methods or setups.

    Args:
        curves: label -> (fppi [T], miss_rate [T], mr); mr (fraction or None)
            goes into the legend as ``12.34% label``; legend sorted by MR.
        path: write a PNG there (when drawing a whole figure).
        title: axes title.
        ax: draw into these matplotlib axes instead of a new figure (for panels).

    Returns:
        the axes.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    ordered = sorted(curves.items(), key=lambda kv: (kv[1][2] is None, kv[1][2] or 0.0))
    for label, (fppi, miss, mr) in ordered:
        fppi, miss = np.asarray(fppi, dtype=float), np.asarray(miss, dtype=float)
        text = f"{100 * mr:.2f}% {label}" if mr is not None else f"n/a {label}"
        ok = fppi > 0
        if ok.any():
            # Start at the first FPPI > 0 with the miss rate reached so far, as the toolbox plots.
            ax.step(fppi[ok], miss[ok], where="post", label=text, linewidth=1.5)
        else:
            ax.plot([], [], label=text)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1e1)
    ax.set_ylim(0.01, 1.0)
    yt = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.64, 0.8, 1.0]
    ax.set_yticks(yt)
    ax.set_yticklabels([f"{v:g}" for v in yt])
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    if own and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return ax
