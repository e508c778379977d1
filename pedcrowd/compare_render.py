"""Rendering of a :class:`pedcrowd.compare.Comparison`: markdown, CSV, JSON and curve plots,
and the labels of the side-by-side analysis view (``pedcrowd compare --analysis``).

MR^-2 and differences are fractions in JSON / CSV and percentages in the tables.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pedcrowd.compare import Comparison, RunResult
from pedcrowd.eval.plot import plot_mr_fppi
from pedcrowd.eval.protocols import get_protocol
from pedcrowd.fileio import dumps_strict

# What the analysis keys (pedcrowd.analyze.MISSES, FALSE_POSITIVES, FIXES) mean, in tables.
MISS_LABELS = {
    "nms_other_person": "removed by NMS (another person)",
    "nms_false_positive": "removed by NMS (a false positive)",
    "low_score": "scored below the threshold",
    "never_proposed": "never proposed",
    "other": "other",
}
FP_LABELS = {
    "duplicate": "duplicates NMS kept",
    "localisation": "poorly localised (IoU 0.1-0.5)",
    "background": "background",
}
FIX_LABELS = {
    "nms_other_person": "NMS misses (another person)",
    "nms_false_positive": "NMS misses (a false positive)",
    "nms_all": "all NMS misses",
    "low_score": "low-score misses",
    "never_proposed": "never-proposed misses",
    "duplicate": "kept duplicates",
    "localisation": "poor localisation",
    "background": "background FPs",
}


def share(count: int, total: int) -> str:
    """``count (pct %)`` of ``total``; the count alone when the total is 0."""
    return f"{count} ({100 * count / total:.0f} %)" if total else str(count)


def _ci_list(ci: tuple[float, float] | None) -> list[float | None]:
    return [None, None] if ci is None else [ci[0], ci[1]]


def to_json(c: Comparison) -> dict[str, Any]:
    """The ``--format json`` document: MR and deltas as fractions, null where undefined."""
    return {
        "protocol": c.protocol,
        "setups": list(c.setups),
        "n_images": c.n_images,
        "bootstrap": c.bootstrap,
        "seed": c.seed,
        "runs": [
            {
                "name": r.name,
                "ap": r.ap,
                **({"ji": r.ji} if get_protocol(c.protocol).reports_ji else {}),
                "results": {s: {"mr": r.mr[s], "ci": _ci_list(r.ci[s])} for s in c.setups},
                "diff_vs_first": {
                    s: {"delta": r.delta[s], "ci": _ci_list(r.delta_ci[s])} for s in c.setups
                },
            }
            for r in c.runs
        ],
    }


def best_per_setup(c: Comparison) -> dict[str, float | None]:
    """The lowest MR^-2 of each setup over the runs (None if no run has one)."""
    best = {}
    for s in c.setups:
        values = [r.mr[s] for r in c.runs if r.mr[s] is not None]
        best[s] = min(values) if values else None
    return best


def _pct(x: float | None, signed: bool = False, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.{digits}f}" if signed else f"{100 * x:.{digits}f}"


def format_cell(r: RunResult, setup: str, first: bool, ci_digits: int = 2) -> tuple[str, str]:
    """(MR with interval, difference with interval) as text, in %; "" for the first run's difference."""
    mr = _pct(r.mr[setup])
    if r.ci.get(setup) is not None:
        lo, hi = r.ci[setup]
        mr += f" [{_pct(lo, digits=ci_digits)}, {_pct(hi, digits=ci_digits)}]"
    if first:
        return mr, ""
    diff = _pct(r.delta[setup], signed=True)
    if r.delta_ci.get(setup) is not None:
        lo, hi = r.delta_ci[setup]
        diff += f" [{_pct(lo, True, ci_digits)}, {_pct(hi, True, ci_digits)}]"
    return mr, diff


def to_markdown(c: Comparison) -> str:
    """A GitHub markdown table; best MR per setup in bold; differences vs the first run."""
    best = best_per_setup(c)
    header = ["run", *[f"{s} MR⁻² %" for s in c.setups], "AP %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, r in enumerate(c.runs):
        cells = [r.name]
        for s in c.setups:
            mr, diff = format_cell(r, s, i == 0)
            if r.mr[s] is not None and r.mr[s] == best[s] and len(c.runs) > 1:
                mr = f"**{mr}**"
            cells.append(mr + (f"<br>Δ {diff}" if diff else ""))
        cells.append(_pct(r.ap))
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"MR⁻² in %, lower is better; [95 % bootstrap interval, {c.bootstrap} resamples of "
        f"{c.n_images} images, seed {c.seed}]; Δ = difference to {c.runs[0].name} (paired)."
        if c.bootstrap
        else "MR⁻² in %, lower is better; Δ = difference to the first run."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def to_csv(c: Comparison) -> str:
    """One row per run x setup: values as fractions, empty where undefined."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "setup", "mr", "mr_lo", "mr_hi", "delta", "delta_lo", "delta_hi", "ap"])

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    for r in c.runs:
        for s in c.setups:
            ci, dci = _ci_list(r.ci[s]), _ci_list(r.delta_ci[s])
            w.writerow([r.name, s, num(r.mr[s]), num(ci[0]), num(ci[1]), num(r.delta[s]),
                        num(dci[0]), num(dci[1]), num(r.ap)])
    return buf.getvalue()


def dumps_json(c: Comparison) -> str:
    return dumps_strict(to_json(c), indent=2)


def plot_comparison(c: Comparison, path: str | Path) -> Path:
    """Miss rate vs FPPI of every run, one panel per setup, log axes, MR in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.setups)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, s in zip(axes.ravel(), c.setups, strict=False):
        curves = {r.name: (*r.curves[s], r.mr[s]) for r in c.runs}
        plot_mr_fppi(curves, ax=ax, title=s, sort_by_mr=False)  # run order = colour order
    for k, ax in enumerate(axes.ravel()[n:]):
        ax.axis("off")
        if k == 0:  # a spare panel: what the pictures show, instead of blank space
            ax.text(0.05, 0.5, "miss rate against false positives per image,\n"
                    "one curve per run (legends: MR$^{-2}$ %, lower is better);\n"
                    "shaded: the FPPI range [0.01, 1] over which\n"
                    "MR$^{-2}$ averages the miss rate (9 points)", fontsize=11,
                    va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
