"""The crowd benchmark's evaluation and ``docs/RESULTS.md`` (see ``crowd_benchmark.py``).

Statistics (all MR^-2 in fractions, printed in %):

- per run: MR^-2 of the setups and B bootstrap resamples over val images
  (:mod:`pedcrowd.eval.bootstrap`, the resampling ``pedcrowd compare`` uses);
- per row: the mean over its seeds, the seed-to-seed standard deviation, and
  the difference of its seed mean to the baseline's seed mean with a *paired*
  95 % interval: every resample scores every run of both rows on the same
  images, so the interval is the images' part of the uncertainty of the seed
  means; the seed spread is the training part, reported beside it;
- a row "beats" the baseline when the interval excludes 0 **and** the
  difference is larger than the larger of the two rows' seed spreads.

``pedcrowd compare`` (seed 0 of every row) gives the per-run table and the MR-FPPI
plot; ``compare --curves`` the training curves.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SETUPS = ("Reasonable", "Reasonable_occ=heavy")
BG_SCORE = 0.5  # a background image's detections at or above this score count as FPs
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- inference


def detect_checkpoint(run_dir: Path, sets: tuple[str, ...] = (), n_images: int | None = None,
                      repeats: int = 1):
    """Detections of ``run_dir/last.pt`` on the val split (the first ``n_images``) with
    config overrides ``sets`` (e.g. ``postprocess.nms=soft-gaussian``).

    Returns:
        (results-format entries, best seconds of ``repeats`` passes, images).
    """
    import torch

    from pedcrowd.data.config import build_dataset
    from pedcrowd.engine.predict import detections_to_json, load_detector, predict

    model, cfg = load_detector(run_dir / "last.pt", device="cpu", overrides=sets)
    data = build_dataset(cfg.data, "val", train=False)
    if n_images is not None and n_images < len(data):
        data = torch.utils.data.Subset(data, range(n_images))
        records = data.dataset.records[:n_images]
    else:
        records = data.records
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        dets = predict(model, data, torch.device("cpu"))
        best = min(best, time.perf_counter() - t0)
    return detections_to_json(dets, records), best, len(records)


def step_seconds(run_dir: Path, skip: int = 2) -> float | None:
    """Median ``step_s`` of a run's logged training steps (the first ``skip`` left out)."""
    from pedcrowd.engine.metrics import read_metrics

    steps = [r["step_s"] for r in read_metrics(run_dir) if r.get("kind") == "train" and "step_s" in r]
    steps = steps[skip:] or steps
    return statistics.median(steps) if steps else None


# ----------------------------------------------------------------------------- statistics


def evaluate_runs(gt, run_dirs: dict[tuple[str, int], Path], bootstrap: int, seed: int = 0):
    """MR^-2, bootstrap samples and background FPs of every run.

    Returns:
        (key -> {"mr": {setup: mr}, "boot": {setup: [B]}, "bg_fp": float}, n background images).
    """
    from pedcrowd.eval import match_setups
    from pedcrowd.eval.bootstrap import bootstrap_mr, resample_counts
    from pedcrowd.formats.detections import read_detections

    counts = resample_counts(len(gt.records), bootstrap, seed) if bootstrap > 0 else None
    background = [r.id for r in gt.records if len(r) == 0]
    out = {}
    for key, run_dir in run_dirs.items():
        dets = read_detections(run_dir / "val_dets.json", gt.records)
        matches = match_setups(gt, dets, setups=list(SETUPS))
        res = {"mr": {}, "boot": {}}
        for s, sm in matches.items():
            res["mr"][s] = sm.mr()
            if counts is not None and res["mr"][s] is not None:
                res["boot"][s] = bootstrap_mr(sm, counts)
        fps = [int((np.asarray(dets[i][1]) >= BG_SCORE).sum()) if i in dets else 0 for i in background]
        res["bg_fp"] = float(np.mean(fps)) if fps else None
        out[key] = res
    return out, len(background)


def _ci(values: np.ndarray):
    from pedcrowd.eval.bootstrap import percentile_ci

    return percentile_ci(values)


def row_statistics(evals: dict, rows: list, seeds: int) -> dict:
    """Per row and setup: seed MRs, mean, sd, delta to the baseline, paired interval, verdict."""
    stats: dict = {}
    base = [evals[("none", k)] for k in range(seeds)]
    for row in rows:
        mine = [evals[(row.name, k)] for k in range(seeds)]
        per_setup = {}
        for s in SETUPS:
            mrs = [m["mr"].get(s) for m in mine]
            bmrs = [b["mr"].get(s) for b in base]
            if any(v is None for v in mrs + bmrs):
                per_setup[s] = None
                continue
            mean, bmean = float(np.mean(mrs)), float(np.mean(bmrs))
            sd = float(np.std(mrs, ddof=1)) if seeds > 1 else None
            bsd = float(np.std(bmrs, ddof=1)) if seeds > 1 else None
            ci = None
            if all(s in m["boot"] for m in mine + base):
                diff = np.mean([m["boot"][s] for m in mine], 0) - np.mean([b["boot"][s] for b in base], 0)
                ci = _ci(diff)
            delta = mean - bmean
            spread = max(sd or 0.0, bsd or 0.0) if seeds > 1 else None
            per_setup[s] = {
                "seeds": mrs, "mean": mean, "sd": sd, "delta": delta, "ci": ci,
                "verdict": verdict(delta, ci, spread) if row.name != "none" else "baseline",
            }
        stats[row.name] = per_setup
    return stats


def verdict(delta: float, ci, spread: float | None) -> str:
    """better / worse beyond the paired interval and the seed spread, else unresolved."""
    if ci is None:
        return "no interval"
    outside = ci[1] < 0 or ci[0] > 0
    if not outside:
        return "not resolved (interval includes 0)"
    if spread is None:
        return ("better" if delta < 0 else "worse") + " (one seed: spread unknown)"
    if abs(delta) <= spread:
        return "not resolved (within the seed spread)"
    return "better" if delta < 0 else "worse"


def resolvable(stats: dict, n_images: int) -> dict:
    """Median half-width of the paired intervals per setup and the val images that would
    bring it to 2 pp (Reasonable) / 3 pp (heavy), scaling as 1 / sqrt(images)."""
    targets = {"Reasonable": 0.02, "Reasonable_occ=heavy": 0.03}
    out = {}
    for s in SETUPS:
        widths = [(v[s]["ci"][1] - v[s]["ci"][0]) / 2 for name, v in stats.items()
                  if name != "none" and v.get(s) and v[s]["ci"] is not None]
        if not widths:
            out[s] = None
            continue
        hw = float(np.median(widths))
        out[s] = {"half_width": hw, "target": targets[s],
                  "images_needed": int(math.ceil(n_images * (hw / targets[s]) ** 2)) if hw > 0
                  else None}
    return out


# ----------------------------------------------------------------------------- report


def _pct(x, signed=False, digits=2):
    if x is None:
        return "n/a"
    return f"{100 * x:+.{digits}f}" if signed else f"{100 * x:.{digits}f}"


def _report_files(args) -> list[str]:
    """git pathspecs leaving out the report and its plots (being rewritten, they do not count)."""
    results = args.results.resolve()
    try:
        rel = results.relative_to(REPO)
    except ValueError:  # written outside the repository
        return []
    return [f":(exclude){rel.as_posix()}", f":(exclude){(rel.parent / 'results').as_posix()}"]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_analyze(run_dir: Path) -> dict:
    """``pedcrowd.analyze.analyze`` of the run (what ``pedcrowd analyze RUN --json`` prints): the
    run's model once more with its final NMS off, on its val split, at FPPI 0.1 on Reasonable."""
    cached, weights = run_dir / "analyze.json", run_dir / "last.pt"
    if cached.is_file() and weights.is_file() and cached.stat().st_mtime >= weights.stat().st_mtime:
        return {"available": True, "result": json.loads(cached.read_text())}  # of these weights
    from pedcrowd.analyze import analyze, report_to_json
    from pedcrowd.errors import PedcrowdError

    try:
        data = report_to_json(analyze(run_dir, device="cpu"))
    except PedcrowdError as e:  # worded as the command line says it
        return {"available": True, "error": f"pedcrowd: error: {e}"}
    (run_dir / "analyze.json").write_text(json.dumps(data, indent=1) + "\n")
    return {"available": True, "result": data}


def analyze_cells(result: dict) -> list[str]:
    """[GT, misses, NMS-caused misses, kept duplicates, FPs, MR^-2 with every NMS miss restored]
    at the analysis' first operating point."""
    p = result["points"][0]
    nms = p["misses"].get("nms_other_person", 0) + p["misses"].get("nms_false_positive", 0)
    fixed = (p.get("oracle") or {}).get("nms_all", {}).get("mr")
    return [str(result.get("n_gt")), str(p["n_missed"]), str(nms),
            str(p["false_positives"].get("duplicate", 0)), str(p["n_fp"]),
            _pct(result.get("mr")), _pct(fixed)]


def write_report(args, base, rows, unavailable, results, budget, log) -> Path:
    """Evaluate every run, draw the plots, write ``args.results`` and ``OUT/report.json``."""
    from pedcrowd.compare import compare
    from pedcrowd.compare_render import plot_comparison, to_markdown
    from pedcrowd.data.stats import dataset_stats
    from pedcrowd.engine.curves import plot_curves, read_curves
    from pedcrowd.eval import load_ground_truth

    seeds = args.seeds
    gt_path = Path(base.data.root) / "annotations" / "val_gt.json"
    gt = load_ground_truth(gt_path)
    dirs = {(r.name, k): Path(results[r.name][k]["dir"]) for r in rows for k in range(seeds)}
    log(f"evaluating {len(dirs)} runs on {len(gt.records)} val images, {args.bootstrap} resamples")
    evals, n_bg = evaluate_runs(gt, dirs, args.bootstrap)
    stats = row_statistics(evals, rows, seeds)
    res = resolvable(stats, len(gt.records))

    plots = args.results.parent / "results"
    plots.mkdir(parents=True, exist_ok=True)
    runs0 = [(r.name, dirs[(r.name, 0)]) for r in rows]
    cmp = compare(runs0, gt_path, setups=list(SETUPS), bootstrap=args.bootstrap, with_ap=False)
    fppi_png = plot_comparison(cmp, plots / "mr_fppi.png")
    curves = {r.name: read_curves(dirs[(r.name, 0)]) for r in rows if not r.test_time}
    curves_png = plot_curves(curves, plots / "curves.png", title="training curves, seed 0")

    log("timing inference and reading step times")
    timing = {}
    for r in rows:
        run0 = dirs[(r.base if r.test_time else r.name, 0)]
        _, secs, n = detect_checkpoint(run0, r.sets if r.test_time else (), args.time_images, repeats=2)
        steps = [] if r.test_time else [step_seconds(dirs[(r.name, k)]) for k in range(seeds)]
        steps = [s for s in steps if s is not None]
        timing[r.name] = {"infer_ms_per_image": 1000 * secs / max(n, 1),
                          "step_s": float(np.mean(steps)) if steps else None}
    log("pedcrowd analyze of every trained row (seed 0)")
    analysis = {r.name: ({"available": True, "error": "test-time row: analyze replays hard NMS"}
                         if r.test_time else run_analyze(dirs[(r.name, 0)])) for r in rows}
    data_stats = dataset_stats(base.data.root, "val")

    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/crowd_benchmark.py",
                                                      *sys.argv[1:]]),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--", ".", *_report_files(args))),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "budget": budget, "seeds": seeds, "val_images": len(gt.records), "background_images": n_bg,
        "data": data_stats, "unavailable": unavailable,
        "rows": {r.name: {"command": r.command(), "note": r.note, "stats": stats[r.name],
                          "bg_fp": [evals[(r.name, k)]["bg_fp"] for k in range(seeds)],
                          "iterations": [results[r.name][k].get("iterations") for k in range(seeds)],
                          "timing": timing[r.name], "analyze": analysis[r.name]}
                 for r in rows},
        "resolvable": res,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    text = render_markdown(args, report, rows, cmp_md=to_markdown(cmp),
                           images={"fppi": fppi_png, "curves": curves_png})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    log(f"wrote {args.results}")
    return args.results


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.floating | np.integer):
        return x.item()
    return str(x)


def _overview_lines(args, rep: dict, rows) -> list[str]:
    """The title, the note and reading, how the numbers were made, and the data."""
    b = rep["budget"]
    seeds = rep["seeds"]
    L = ["# Crowd benchmark results", ""]
    if args.note:
        L += [f"**{args.note}**", ""]
    reading = getattr(args, "reading", None)
    if reading is not None:  # the hand-written reading of these numbers, kept across regenerations
        L += [Path(reading).read_text().strip(), ""]
    L += [
        f"Produced by `{rep['command']}` at commit `{rep['commit'][:12]}`"
        f"{' (with uncommitted changes)' if rep['dirty'] else ''} on {rep['date']} ({rep['machine']}).",
        "Regenerate with the same command; the raw numbers (`report.json`) and every run directory "
        f"stay under `{args.out.name}/` outside git.",
        "",
        f"Budget: {b['epochs']} epoch(s) x {b['iters_per_epoch']} steps per run "
        f"(asked {b['asked_steps']} steps"
        + (f", from a measured baseline step of {b['calibrated_step_s']:.3f} s" if b["calibrated_step_s"] else "")
        + f"), {seeds} seed(s) per row, training wall time summed over the runs "
        f"{b['runs_wall_s'] / 60:.1f} min. "
        "Detector and recipe: `configs/crowd_benchmark.yaml` (the CPU demo's) on the `crowded` preset"
        + ("; every row starts from the backbone + FPN of "
           + ("the CPU demo trained once on its own default-preset data (`OUT/pretrain`)"
              if args.backbone_from == "demo" else f"`{args.backbone_from}`")
           + " and trains its heads (RPN, RoI head; FCOS's head) from scratch with its technique"
           if args.backbone_from != "none" else "; every row from scratch")
        + (f". {args.jobs} runs trained side by side, each on {max(1, (os.cpu_count() or 1) // args.jobs)}"
           " thread(s)" if args.jobs > 1 else "") + ".",
        "",
        "## Data (`pedcrowd data stats`, val split)",
        "",
        "| quantity | value |", "|---|---|",
    ]
    d = rep["data"]
    for name, value in [
        ("images", d["images"]), ("pedestrians", d["pedestrians"]),
        *((f"{k}", v) for k, v in d["setups"].items()),
        ("occ=heavy / Reasonable", f"{d['heavy_to_reasonable']:.3f}"),
        ("pedestrians per image (mean / max)", f"{d['boxes_per_image']:.2f} / {d['max_boxes_per_image']}"),
        ("pedestrian pairs with IoU > 0.5", d["overlap_pairs"]),
        ("mean visible ratio", f"{d['mean_visibility']:.3f}"),
        ("background-only images (no annotation)", rep["background_images"]),
    ]:
        L.append(f"| {name} | {value} |")
    return L


def _technique_table_lines(args, rep: dict, rows) -> list[str]:
    """The MR^-2 table: every row's seed mean, delta to the baseline and its interval."""
    L: list[str] = []
    L += ["", "## MR⁻² per technique (mean over seeds)", "",
          "MR⁻² in %, lower is better. Δ: seed mean minus the baseline's seed mean, with its paired "
          "95 % bootstrap interval over val images; sd: seed-to-seed standard deviation. "
          "A row beats the baseline only when the interval excludes 0 and |Δ| exceeds the larger "
          "seed sd of the two rows.", ""]
    head = ["row", "options"]
    for s in SETUPS:
        head += [f"{s} %", f"Δ {s} [95 %]", "sd"]
    head += ["FP / bg image", "steps", "step s", "infer ms/img"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        row = rep["rows"][r.name]
        cells = [f"`{r.name}`", f"`{row['command']}`"]
        for s in SETUPS:
            st = row["stats"].get(s)
            if st is None:
                cells += ["n/a", "", ""]
                continue
            ci = st["ci"]
            delta = "—" if r.name == "none" else (
                f"{_pct(st['delta'], True)} [{_pct(ci[0], True, 1)}, {_pct(ci[1], True, 1)}]" if ci
                else _pct(st["delta"], True))
            cells += [_pct(st["mean"]), delta, _pct(st["sd"]) if st["sd"] is not None else "—"]
        fp = [v for v in row["bg_fp"] if v is not None]
        t = row["timing"]
        its = sorted({i for i in row["iterations"] if i is not None})
        cells += [f"{np.mean(fp):.2f}" if fp else "n/a", "/".join(map(str, its)) or "—",
                  f"{t['step_s']:.3f}" if t["step_s"] else "—", f"{t['infer_ms_per_image']:.1f}"]
        L.append("| " + " | ".join(cells) + " |")
    if rep["unavailable"]:
        L += ["", "Not in the table (options not on this checkout, or the run failed; nothing is "
              "faked):", ""]
        L += [f"- `{n}`: {why}" for n, why in rep["unavailable"].items()]
    return L


def _row_reading_lines(args, rep: dict, rows) -> list[str]:
    """One line per row: its delta and verdict per setup."""
    L: list[str] = []
    L += ["", "## Reading, row by row", ""]
    for r in rows:
        row = rep["rows"][r.name]
        if r.name == "none":
            L.append(f"- `none`: {r.note}; seeds "
                     + ", ".join(f"{_pct(v, digits=1)}" for v in row["stats"]["Reasonable"]["seeds"])
                     + " % Reasonable." if row["stats"].get("Reasonable") else "- `none`: baseline.")
            continue
        parts = []
        for s in SETUPS:
            st = row["stats"].get(s)
            if st is None:
                parts.append(f"{s}: n/a")
                continue
            ci = st["ci"]
            width = f", could show effects beyond ±{_pct((ci[1] - ci[0]) / 2, digits=1)} pp" if ci else ""
            parts.append(f"{s} Δ {_pct(st['delta'], True)} pp: **{st['verdict']}**{width}")
        L.append(f"- `{r.name}` ({r.note}): " + "; ".join(parts) + ".")
    return L


def _background_lines(args, rep: dict, rows) -> list[str]:
    """False positives on background-only images under each background policy."""
    L: list[str] = []
    L += ["", "## Background images", "",
          f"False positives (score ≥ {BG_SCORE}) per background-only val image "
          f"({rep['background_images']} such images) and MR⁻² Reasonable, with `data.background` "
          "keep (the baseline), drop and ratio 0.5:", "",
          "| policy | FP / bg image (per seed) | Reasonable % | Δ [95 %] |", "|---|---|---|---|"]
    for name, label in (("none", "keep"), ("bg_drop", "drop"), ("bg_ratio", "ratio 0.5")):
        if name in rep["rows"]:
            row = rep["rows"][name]
            st = row["stats"].get("Reasonable") or {}
            ci = st.get("ci")
            fp = ", ".join("n/a" if v is None else f"{v:.2f}" for v in row["bg_fp"])
            delta = "—" if name == "none" or not st else (
                f"{_pct(st['delta'], True)} [{_pct(ci[0], True, 1)}, {_pct(ci[1], True, 1)}]" if ci
                else _pct(st["delta"], True))
            L.append(f"| {label} | {fp} | {_pct(st.get('mean'))} | {delta} |")
    return L


def _resolution_lines(args, rep: dict, rows) -> list[str]:
    """How large an effect the paired intervals can resolve, and the images that would need."""
    L: list[str] = []
    L += ["", "## What this benchmark can resolve", ""]
    for s, v in rep["resolvable"].items():
        if v is None:
            L.append(f"- {s}: no paired interval (no bootstrap or no compared row).")
            continue
        if v["images_needed"] is None:
            L.append(f"- {s}: every compared row gave the baseline's detections (zero-width "
                     "intervals): nothing to size from.")
            continue
        enough = "enough" if v["half_width"] <= v["target"] else "not enough"
        L.append(f"- {s}: median paired 95 % half-width ±{_pct(v['half_width'], digits=2)} pp on "
                 f"{rep['val_images']} val images ({enough} for a {100 * v['target']:.0f} pp "
                 f"effect); {100 * v['target']:.0f} pp needs about {v['images_needed']} val images "
                 "(half-width ∝ 1/√images, at these detectors' MR⁻²), and more seeds when the "
                 "seed spread is larger than the interval.")
    return L


def _timing_lines(args, rep: dict, rows) -> list[str]:
    """Training step and inference time per row against the baseline's."""
    L: list[str] = []
    L += ["", "## Timing", "",
          "Train step: median `step_s` of the logged steps (seed mean); inference: the best of two "
          f"passes over {args.time_images} val images, batch 4, CPU. The machine is shared, so both "
          "are noisy; a training-only technique should infer exactly as fast as the baseline "
          "(the same network at test time).", ""]
    base_inf = rep["rows"]["none"]["timing"]["infer_ms_per_image"]
    base_step = rep["rows"]["none"]["timing"]["step_s"]
    L += ["| row | training-only | step s | vs none | infer ms/img | vs none |", "|---|---|---|---|---|---|"]
    for r in rows:
        t = rep["rows"][r.name]["timing"]
        step = f"{t['step_s']:.3f}" if t["step_s"] else "—"
        rstep = f"{t['step_s'] / base_step:.2f}x" if t["step_s"] and base_step else "—"
        L.append(f"| `{r.name}` | {'yes' if r.training_only else 'no'} | {step} | {rstep} | "
                 f"{t['infer_ms_per_image']:.1f} | {t['infer_ms_per_image'] / base_inf:.2f}x |")
    return L


def _analyze_lines(args, rep: dict, rows) -> list[str]:
    """The pedcrowd analyze table (NMS-caused misses, kept duplicates)."""
    L: list[str] = []
    L += ["", "## `pedcrowd analyze` (seed 0, Reasonable, at FPPI 0.1)", ""]
    an = [(r.name, rep["rows"][r.name]["analyze"]) for r in rows]
    if not any(a.get("available") for _, a in an):
        L.append("Not available on this checkout (`pedcrowd analyze`, issue 14): not run.")
    else:
        L += ["Misses the final NMS caused (a GT whose box was suppressed by another person's "
              "or by a false positive), false positives that are kept duplicates, and MR⁻² "
              "with every NMS-caused miss restored (the analysis' oracle).", "",
              "| row | GT | misses | NMS-caused misses | kept duplicates | FPs | MR⁻² % | "
              "MR⁻² % without NMS misses |", "|---|---|---|---|---|---|---|---|"]
        for name, a in an:
            if "result" in a:
                try:
                    L.append(f"| `{name}` | " + " | ".join(analyze_cells(a["result"])) + " |")
                except (KeyError, IndexError, TypeError):
                    L.append(f"| `{name}` | see runs/{name}/seed0/analyze.json |||||||")
            else:
                L.append(f"| `{name}` | not analysed: {a.get('error', 'unavailable')} |||||||")
    return L


def render_markdown(args, rep: dict, rows, cmp_md: str, images: dict) -> str:
    """The text of docs/RESULTS.md from the report dict."""
    rel = {k: Path(v).resolve().relative_to(args.results.parent.resolve()).as_posix()
           for k, v in images.items()}
    L: list[str] = []
    for section in (_overview_lines, _technique_table_lines, _row_reading_lines, _background_lines,
                    _resolution_lines, _timing_lines, _analyze_lines):
        L += section(args, rep, rows)
    L += ["", "## `pedcrowd compare`, seed 0 of every row", "", cmp_md,
          f"![MR-FPPI, seed 0]({rel['fppi']})", "",
          f"Training curves (`pedcrowd compare --curves`, seed 0): ![curves]({rel['curves']})", ""]
    return "\n".join(L)
