"""Miss rate vs FPPI plots in the style of the Caltech benchmark (log-log, MR^-2 in the legend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_mr_fppi(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]],
    path: str | Path | None = None,
    title: str = "",
    ax=None,
    *,
    sort_by_mr: bool = True,
):
    """Draw miss rate against FPPI for several methods or setups.

    Args:
        curves: label -> (fppi [T], miss_rate [T], mr); mr (fraction or None)
            goes into the legend as ``12.34% label``.
        path: write a PNG there (when drawing a whole figure).
        title: axes title.
        ax: draw into these matplotlib axes instead of a new figure (for panels).
        sort_by_mr: order the legend by MR (the Caltech benchmark's habit);
            False keeps the given order, so that panels drawn with the same
            labels give each label the same colour.

    Returns:
        the axes.
    """
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    items = list(curves.items())
    if sort_by_mr:
        items.sort(key=lambda kv: (kv[1][2] is None, kv[1][2] or 0.0))
    floor = 0.05
    for label, (fppi, miss, mr) in items:
        fppi, miss = np.asarray(fppi, dtype=float), np.asarray(miss, dtype=float)
        text = f"{100 * mr:.2f}% {label}" if mr is not None else f"n/a {label}"
        ok = fppi > 0
        if ok.any():
            # Start at the first FPPI > 0 with the miss rate reached so far, as the toolbox plots.
            ax.step(fppi[ok], miss[ok], where="post", label=text, linewidth=1.5)
            seen = miss[ok & (fppi <= 10) & (miss > 0)]
            floor = min(floor, float(seen.min())) if len(seen) else floor
        else:
            ax.plot([], [], label=text)
    # The MR^-2 window: miss rates are averaged at 9 FPPI points in [1e-2, 1].
    ax.axvspan(1e-2, 1.0, color="0.95", zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1e1)
    ax.set_ylim(max(0.01, 0.8 * floor), 1.0)
    yt = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0]
    ax.set_yticks(yt)
    ax.set_yticklabels([f"{v:g}" for v in yt])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("miss rate")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=9, title="MR⁻²", title_fontsize=9)
    if own and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return ax
