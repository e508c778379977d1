"""Compare detection runs: MR^-2 per setup, AP, bootstrap intervals, curves.

:func:`compare` is the library entry point behind ``pedcrowd compare``. Every
run is evaluated against the same ground truth; each MR^-2 gets a 95 %
percentile bootstrap interval over images, and each run's difference to the
first run a *paired* interval: every resample draws one multiset of images and
scores all runs on it, so the image-to-image variation the runs share cancels
out of the difference.

How a resample is scored without re-matching (EVAL_PROTOCOL.md section 6):
matching is per image, so a resample only changes how often each image counts.
Take the non-ignored detections of a setup in the official global order (stable
sort on -score); an image drawn c times puts c copies of each of its detections
side by side (they tie on score), and brings c times its GT count. The curve is
the cumulative TP / FP counts with these weights; the copies of one detection
are c consecutive points, which matters only for the "no point with FPPI <= ref"
case (quirk 1). Resamples keep the image count N, so FPPI = FP / N. Only the
head of the ranking up to FPPI 1 is accumulated per resample, which makes 1000
resamples of a 500-image set take about 0.1 s per run and setup.
:func:`bootstrap_mr` is checked against expanding each resample into real image
copies and running the official accumulation (tests/test_compare.py).

Shapes: B = resamples, N = images, D = non-ignored detections of one setup.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.mr import FPPI_REFS_CALTECH, FPPI_REFS_CITYPERSONS

# The protocols' FPPI reference points, shared with the evaluator.
CITYPERSONS_REFS = FPPI_REFS_CITYPERSONS
CALTECH_REFS = FPPI_REFS_CALTECH


@dataclass(frozen=True)
class MatchedDets:
    """One run x one setup after matching, ready to be resampled.

    Attributes:
        image: [D] int, index (0..N-1, in GT order) of the image of each
            non-ignored detection, in the official accumulation order.
        tp: [D] bool, the detection matched a non-ignored GT box.
        n_gt: [N] int, non-ignored GT boxes per image.
        refs: [9] FPPI reference points of the protocol.
        sentinel_final: when no point has FPPI <= ref, CityPersons' Python reads
            the *final* recall (quirk 1); Caltech's ROC starts at recall 0.
    """

    image: np.ndarray
    tp: np.ndarray
    n_gt: np.ndarray
    refs: np.ndarray
    sentinel_final: bool = True


def resample_counts(n_images: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each image is drawn in each bootstrap resample of size N.

    Returns:
        [B, N] int32 counts, each row summing to N.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(n_resamples, n_images))  # [B, N]
    flat = draws + (np.arange(n_resamples) * n_images)[:, None]  # row-offset so one bincount does all
    return np.bincount(flat.ravel(), minlength=n_resamples * n_images).reshape(
        n_resamples, n_images
    ).astype(np.int32)


def _max_fp_per_ref(refs: np.ndarray, n_images: int, max_fp: int) -> np.ndarray:
    """[9] the largest FP count m with m / N <= ref, with the official float division."""
    fppi = np.arange(max_fp + 1) / n_images  # exactly what the official fp / N gives
    return np.searchsorted(fppi, refs, side="right") - 1


def bootstrap_mr(m: MatchedDets, counts: np.ndarray, chunk_elems: int = 4_000_000) -> np.ndarray:
    """MR^-2 of one run x setup on every resample.

    Args:
        m: the matched detections.
        counts: [B, N] image multiplicities (all ones = the plain MR^-2).
        chunk_elems: resamples are processed in chunks of about this many
            [B, D] elements to bound memory.

    Returns:
        [B] float64 MR^-2; NaN where the resample has no non-ignored GT.
    """
    counts = np.asarray(counts)
    n_res, n_images = counts.shape
    n_gt = counts @ m.n_gt.astype(np.int64)  # [B]
    tp_per_image = np.bincount(m.image[m.tp], minlength=n_images)
    total_tp = counts @ tp_per_image  # [B] the final recall's numerator
    fp_img = m.image[~m.tp]  # [F]
    tp_img = m.image[m.tp]  # [T]
    # TP detections before each FP detection, in the accumulation order.
    tp_before_fp = np.cumsum(m.tp)[~m.tp]  # [F]
    max_fp = int(counts.max(initial=0)) * len(fp_img)
    m_ref = _max_fp_per_ref(m.refs, n_images, max_fp)  # [9]
    recalls = np.empty((n_res, len(m.refs)))
    step = max(1, chunk_elems // max(1, len(m.image)))
    for a in range(0, n_res, step):
        c = counts[a : a + step]  # [b, N]
        recalls[a : a + step] = _recall_at_refs(
            c, fp_img, tp_img, tp_before_fp, total_tp[a : a + step], m_ref, m.sentinel_final
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = recalls / n_gt[:, None]
        # No clamp (section 6.8): a miss rate of 0 gives log -inf and MR 0.
        mr = np.exp(np.mean(np.log(1.0 - recall), axis=1))
    mr[n_gt == 0] = np.nan
    return mr


def _recall_at_refs(
    c: np.ndarray,
    fp_img: np.ndarray,
    tp_img: np.ndarray,
    tp_before_fp: np.ndarray,
    total_tp: np.ndarray,
    m_ref: np.ndarray,
    sentinel_final: bool,
) -> np.ndarray:
    """[b, 9] TP count at the last point with FP <= m_ref[r], for the resamples ``c`` [b, N]."""
    b = len(c)
    rows = np.arange(b)
    # Only the head of the ranking matters: once every resample is past the
    # largest FP limit (FPPI 1), later detections change nothing but the final
    # recall, which total_tp already holds. The head is usually a few % of D.
    top = int(m_ref.max())
    k = min(len(fp_img), max(256, 4 * (top + 1)))
    while True:
        cum_fp = np.cumsum(c[:, fp_img[:k]], axis=1)  # [b, k]
        if k == len(fp_img) or (cum_fp[:, -1] > top).all():
            break
        k = min(len(fp_img), 2 * k)
    n_tp = int(tp_before_fp[k - 1]) if k else len(tp_img)
    cum_tp0 = np.zeros((b, n_tp + 1), dtype=np.int64)  # column t: weight of the first t TPs
    np.cumsum(c[:, tp_img[:n_tp]], axis=1, out=cum_tp0[:, 1:])
    out = np.empty((b, len(m_ref)))
    if k == 0:  # no false positive at all: every ref sees the final recall
        out[:] = total_tp[:, None]
        return out
    tp_at_fp = cum_tp0[:, tp_before_fp[:k]]  # [b, k] TP weight before each FP det
    fp_prev = np.concatenate([np.zeros((b, 1), cum_fp.dtype), cum_fp[:, :-1]], axis=1)
    for r, limit in enumerate(m_ref):
        # The last point with FP <= limit lies just before the first FP det
        # that pushes the count past it (cum_fp is monotone along a row).
        j = (cum_fp <= limit).sum(axis=1)  # [b]
        past_end = j == len(fp_img)
        jj = np.minimum(j, k - 1)
        got = np.where(past_end, total_tp, tp_at_fp[rows, jj])
        # No point has FPPI <= ref when nothing drawn precedes that FP det and
        # even its first copy (FP = 1) is past the limit (EVAL_PROTOCOL 6.7).
        none_before = (tp_at_fp[rows, jj] == 0) & (fp_prev[rows, jj] == 0) & ~past_end & (limit < 1)
        sentinel = total_tp if sentinel_final else np.zeros_like(total_tp)
        out[:, r] = np.where(none_before, sentinel, got)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The percentile interval of the finite values; None when there are none."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass
class RunResult:
    """One row of the comparison.

    Attributes:
        name: the run's label.
        path: the detection file read.
        mr: setup -> MR^-2 (fraction), None where the setup has no GT.
        ci: setup -> 95 % bootstrap interval of MR^-2, None without bootstrap.
        delta: setup -> this run's MR^-2 minus the first run's.
        delta_ci: setup -> paired 95 % bootstrap interval of ``delta``.
        ap: COCO AP (0.5:0.95) or None when not computed.
        curves: setup -> (fppi [P], miss rate [P]) for plotting.
    """

    name: str
    path: Path
    mr: dict[str, float | None] = field(default_factory=dict)
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    delta_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    ap: float | None = None
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Comparison:
    """What :func:`compare` returns: runs in input order, the first is the baseline."""

    protocol: str
    setups: list[str]
    runs: list[RunResult]
    n_images: int
    bootstrap: int
    seed: int


def parse_run(text: str) -> tuple[str, Path]:
    """``name=path`` or ``path`` (named after the run folder or file stem)."""
    name, sep, rest = text.partition("=")
    if sep and name and not Path(text).exists():
        return name, Path(rest)
    path = Path(text)
    return (path.name if path.is_dir() else path.stem), path


def resolve_detections(path: Path) -> Path:
    """A detection file or Caltech result tree, or a run directory's latest ``val_dets.json``."""
    if path.is_dir():
        dets = path / "val_dets.json"
        if any(path.glob("set*")) and not dets.is_file():
            return path  # a Caltech result tree (setXX/VYYY.txt or setXX/VYYY/I#####.txt)
        if not dets.is_file():
            raise PedcrowdError(
                f"{path}: run directory has no val_dets.json (per-image detections are "
                "needed for the bootstrap; evaluate the run or pass a detection file)"
            )
        return dets
    if not path.exists():
        raise PedcrowdError(f"{path}: no such detection file or run directory")
    return path


def _setup_names(protocol: str, setups: Sequence[str] | None) -> list:
    """Setup objects for the names (official or ``NAME:HMIN-HMAX:VMIN-VMAX``)."""
    from pedcrowd.eval.setups import CALTECH_SETUPS, CITYPERSONS_SETUPS, parse_setup

    if protocol not in ("citypersons", "caltech"):
        raise PedcrowdError(f"--protocol {protocol}: expected citypersons or caltech")
    known = CITYPERSONS_SETUPS if protocol == "citypersons" else CALTECH_SETUPS
    if not setups:
        return list(known.values())
    return [parse_setup(s, known) for s in setups]


def compare(
    runs: Sequence[str | tuple[str, str | Path]],
    gt: str | Path,
    *,
    protocol: str = "citypersons",
    setups: Sequence[str] | None = None,
    images: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    with_ap: bool = True,
    resize_dets: bool = True,
) -> Comparison:
    """Evaluate runs on one ground truth, with bootstrap intervals.

    Args:
        runs: ``path``, ``name=path`` or (name, path); a path is a detection
            file or a run directory (its ``val_dets.json``). The first run is the
            baseline of every difference.
        gt: ground-truth file (as for ``pedcrowd eval``).
        protocol: ``citypersons`` or ``caltech``.
        setups: setup names (default: all of the protocol).
        images: the image list for Caltech GT caches (as ``pedcrowd eval --images``).
        bootstrap: resamples (0: no intervals).
        seed: resampling seed; the same seed gives the same intervals.
        with_ap: also compute COCO AP.
        resize_dets: Caltech: resize detections to aspect 0.41 (toolbox v3.2.1);
            False gives the Pedestron/CSP numbers (as ``pedcrowd eval --no-resize-dets``).

    Returns:
        A :class:`Comparison`.
    """
    from pedcrowd.eval import load_ground_truth, match_setup
    from pedcrowd.formats.detections import read_detections

    if not runs:
        raise PedcrowdError("compare: give at least one run or detection file")
    specs = [parse_run(r) if isinstance(r, str) else (r[0], Path(r[1])) for r in runs]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise PedcrowdError(f"compare: run names must differ (got {names}); name them with name=path")
    gt_data = load_ground_truth(gt, protocol, images=images)
    if not setups and gt_data.kind == "caltech-cache":
        setups = list(gt_data.caches)  # only the setups the caches hold
    setup_objs = _setup_names(protocol, setups)
    n_images = len(gt_data.records)
    counts = resample_counts(n_images, bootstrap, seed) if bootstrap > 0 else None
    results: list[RunResult] = []
    samples: list[dict[str, np.ndarray]] = []
    for name, path in specs:
        dets_path = resolve_detections(path)
        dets = read_detections(dets_path, gt_data.records)
        run = RunResult(name, dets_path)
        per_setup: dict[str, np.ndarray] = {}
        for s in setup_objs:
            # match_setup(...).mr() is evaluate()'s MR exactly, and its per-image
            # outcome is what the bootstrap resamples.
            sm = match_setup(gt_data, dets, s, protocol=protocol, resize_dets=resize_dets)
            run.mr[s.name] = sm.mr()
            run.curves[s.name] = sm.curve()
            run.ci[s.name] = None
            if counts is not None and run.mr[s.name] is not None:
                per_setup[s.name] = bootstrap_mr(from_setup_matches(sm), counts)
                run.ci[s.name] = percentile_ci(per_setup[s.name])
        if with_ap:
            run.ap = _coco_ap(gt_data, dets)
        results.append(run)
        samples.append(per_setup)
    for run, per_setup in zip(results, samples, strict=True):
        for s in setup_objs:
            base, mine = results[0].mr[s.name], run.mr[s.name]
            run.delta[s.name] = None if base is None or mine is None else mine - base
            if s.name in per_setup and s.name in samples[0]:
                # Paired: the same resampled images for both runs.
                run.delta_ci[s.name] = percentile_ci(per_setup[s.name] - samples[0][s.name])
            else:
                run.delta_ci[s.name] = None
    return Comparison(protocol, [s.name for s in setup_objs], results, n_images, bootstrap, seed)


def _coco_ap(gt_data: Any, dets: dict) -> float | None:
    from pedcrowd.eval import coco_ap

    try:
        ap = coco_ap(gt_data.records, dets)
    except ModuleNotFoundError:  # pycocotools missing: AP is optional here
        return None
    value = ap.get("AP")
    # pycocotools reports -1 when there is no GT to score.
    return None if value is None or value < 0 else float(value)


def from_setup_matches(m: Any) -> MatchedDets:
    """The evaluator's :class:`pedcrowd.eval.SetupMatches` as :class:`MatchedDets`."""
    citypersons = m.protocol == "citypersons"
    return MatchedDets(
        image=np.asarray(m.det_image, dtype=np.int64),
        tp=np.asarray(m.is_tp, dtype=bool),
        n_gt=np.asarray(m.gt_per_image, dtype=np.int64),
        refs=CITYPERSONS_REFS if citypersons else CALTECH_REFS,
        sentinel_final=citypersons,
    )


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
    return json.dumps(to_json(c), indent=2)


def plot_comparison(c: Comparison, path: str | Path) -> Path:
    """Miss rate vs FPPI of every run, one panel per setup, log axes, MR in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pedcrowd.eval.plot import plot_mr_fppi

    n = len(c.setups)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, s in zip(axes.ravel(), c.setups, strict=False):
        curves = {r.name: (*r.curves[s], r.mr[s]) for r in c.runs}
        plot_mr_fppi(curves, ax=ax, title=s, sort_by_mr=False)  # run order = colour order
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
