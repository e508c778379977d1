"""Compare detection runs: MR^-2 per setup, AP and bootstrap intervals (the statistics).

:func:`compare` is the library entry point behind ``pedcrowd compare``. Every
run is evaluated against the same ground truth; each MR^-2 gets a 95 %
percentile bootstrap interval over images, and each run's difference to the
first run a *paired* interval: every resample draws one multiset of images and
scores all runs on it, so the image-to-image variation the runs share cancels
out of the difference. The resampling is :mod:`pedcrowd.eval.bootstrap`'s; the
tables, JSON, CSV and plots are :mod:`pedcrowd.compare_render`'s.

The command's other two views read training curves of run directories
(:func:`read_run_curves`, here) and ``pedcrowd analyze --out`` files
(:func:`pedcrowd.analyze.read_analyses`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pedcrowd.engine.curves import RunCurves, read_curves
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.bootstrap import bootstrap_mr, percentile_ci, resample_counts
from pedcrowd.eval.protocols import get_protocol


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
        ap: COCO AP (0.5:0.95; CrowdHuman: CrowdDet's AP) or None when not computed.
        ji: CrowdHuman only: CrowdDet's JI, else None.
        curves: setup -> (fppi [P], miss rate [P]) for plotting.
    """

    name: str
    path: Path
    mr: dict[str, float | None] = field(default_factory=dict)
    ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    delta: dict[str, float | None] = field(default_factory=dict)
    delta_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    ap: float | None = None
    ji: float | None = None
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
        protocol: ``citypersons``, ``caltech`` or ``crowdhuman`` (one setup, All;
            AP and JI as CrowdDet computes them).
        setups: setup names (default: all of the protocol).
        images: the image list for Caltech GT caches (as ``pedcrowd eval --images``);
            CrowdHuman: the image sizes file.
        bootstrap: resamples (0: no intervals).
        seed: resampling seed; the same seed gives the same intervals.
        with_ap: also compute COCO AP.
        resize_dets: Caltech: resize detections to aspect 0.41 (toolbox v3.2.1);
            False gives the Pedestron/CSP numbers (as ``pedcrowd eval --no-resize-dets``).

    Returns:
        A :class:`Comparison`.
    """
    if not runs:
        raise PedcrowdError("compare: give at least one run or detection file")
    specs = [parse_run(r) if isinstance(r, str) else (r[0], Path(r[1])) for r in runs]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise PedcrowdError(f"compare: run names must differ (got {names}); name them with name=path")
    proto = get_protocol(protocol)
    proto.check_setups(setups)
    gt_data = proto.load_ground_truth(gt, images=images)
    n_images = len(gt_data.records)
    counts = resample_counts(n_images, bootstrap, seed) if bootstrap > 0 else None
    results: list[RunResult] = []
    samples: list[dict[str, np.ndarray]] = []
    setup_names: list[str] = []
    for name, path in specs:
        dets_path = resolve_detections(path)
        run = RunResult(name, dets_path)
        per_setup: dict[str, np.ndarray] = {}
        dets, run_gt = proto.detections_for(gt_data, dets_path, images=images)
        # evaluate()'s matching: .mr() is its MR exactly, and the per-image
        # outcome is what the bootstrap resamples.
        matches = proto.match_setups(
            run_gt, dets, setups=list(setups) if setups else None, resize_dets=resize_dets
        )
        if with_ap:
            run.ap = proto.headline_ap(run_gt, dets, matches)
        if proto.jaccard_index is not None:
            run.ji = proto.jaccard_index(run_gt, dets)
        setup_names = list(matches)
        for s, sm in matches.items():
            run.mr[s] = sm.mr()
            run.curves[s] = sm.curve()
            run.ci[s] = None
            if counts is not None and run.mr[s] is not None:
                per_setup[s] = bootstrap_mr(sm, counts)
                run.ci[s] = percentile_ci(per_setup[s])
        results.append(run)
        samples.append(per_setup)
    for run, per_setup in zip(results, samples, strict=True):
        for s in setup_names:
            base, mine = results[0].mr[s], run.mr[s]
            run.delta[s] = None if base is None or mine is None else mine - base
            if s in per_setup and s in samples[0]:
                # Paired: the same resampled images for both runs.
                run.delta_ci[s] = percentile_ci(per_setup[s] - samples[0][s])
            else:
                run.delta_ci[s] = None
    return Comparison(protocol, setup_names, results, n_images, bootstrap, seed)


def read_run_curves(runs: Sequence[str]) -> dict[str, RunCurves]:
    """The training curves (``metrics.jsonl``) of run directories (``name=dir`` or ``dir``)
    for ``pedcrowd compare --curves``; PedcrowdError for a folder without them or a name twice."""
    series: dict[str, RunCurves] = {}
    for text in runs:
        name, run_dir = parse_run(text)
        if not (run_dir / "metrics.jsonl").is_file():
            raise PedcrowdError(f"{run_dir}: --curves needs run directories with a metrics.jsonl")
        if name in series:
            raise PedcrowdError(f"compare: run names must differ ({name!r} twice); use name=path")
        series[name] = read_curves(run_dir)
    return series
