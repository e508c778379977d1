"""The crowd benchmark (issue 16): every technique, the same detector, the same budget, several seeds.

Each row of :data:`ROWS` is ``pedcrowd train`` options on top of
``configs/crowd_benchmark.yaml`` (the CPU demo's recipe on the "crowded"
synthetic preset). A row whose options this checkout does not know (a loss
term, a config key that has not landed) is reported as *unavailable* and
skipped. Test-time rows (soft-NMS) train nothing: they re-run inference of the
baseline's weights with other post-processing.

Per run the script trains in-process with the functions ``pedcrowd train``
calls (same config loading, presets and overrides), into
``OUT/runs/ROW/seedK``. Resuming: a run with ``done.json`` whose config digest
matches is reused; a run killed after a checkpoint is continued from its
``last.pt`` (``--resume``); one killed before any checkpoint is redone from
scratch; a finished run of a different configuration is moved aside to
``*.stale-N`` and redone. Nothing is counted that did not finish.

Then :mod:`crowd_benchmark_report` evaluates everything (``pedcrowd compare``
statistics, seed means and spread, paired bootstrap intervals, background
false positives, timings, ``pedcrowd analyze`` where it exists) and writes
``docs/RESULTS.md`` with its plots.

Usage::

    # docs/RESULTS.md: every row, 3 seeds, 250 steps each from the demo's backbone,
    # two runs at a time (about 65 min on 2 cores, after a demo training)
    python scripts/crowd_benchmark.py --iters 250 --jobs 2 --set schedule.warmup_iters=50 \
        --backbone-from runs/demo/last.pt --reading docs/results_reading.md
    python scripts/crowd_benchmark.py --rows none,nms_roi,rep --seeds 2 --minutes 2
    python scripts/crowd_benchmark.py --list                # rows and their availability
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# its sibling script: python puts scripts/ on sys.path when it runs this file
import crowd_benchmark_report as report

from pedcrowd.engine.config import apply_overrides, config_to_dict, load_config, resolve_config
from pedcrowd.errors import PedcrowdError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "crowd_benchmark.yaml"


@dataclass(frozen=True)
class Row:
    """One technique.

    Attributes:
        name: the row's label (and folder name).
        loss: ``pedcrowd train --loss`` preset, or None.
        sets: config overrides (``--set``; ``--cls-loss X`` is ``loss.cls=X``, ``--box-loss``
            ``loss.box``, ``--sampler`` ``loss.sampler``).
        note: what the row is.
        test_time: re-evaluate the weights of row ``base`` with ``sets`` applied (no training).
        training_only: the technique changes nothing at inference (its inference time
            should equal the baseline's).
    """

    name: str
    loss: str | None
    sets: tuple[str, ...]
    note: str
    test_time: bool = False
    base: str = "none"
    training_only: bool = True

    def command(self) -> str:
        """The ``pedcrowd train`` options of the row (without the benchmark's budget)."""
        if self.test_time:
            return f"(weights of {self.base}) " + " ".join(f"--set {s}" for s in self.sets)
        parts = ([f"--loss {self.loss}"] if self.loss else []) + [f"--set {s}" for s in self.sets]
        return " ".join(parts) or "(defaults)"


ROWS: tuple[Row, ...] = (
    Row("none", "none", (), "baseline: torchvision's losses, background images kept"),
    Row("nms_roi", "nms", ("loss.nms.stage=roi",), "NMS-Loss at the RoI stage (pedcrowd's adaptation)"),
    Row("nms_rpn", "nms", ("loss.nms.stage=rpn",), "NMS-Loss at the RPN stage (the official code's)"),
    Row("rep", "rep", (), "Repulsion Loss (alpha = beta = 0.5)"),
    Row("nms+rep", "nms+rep", (), "NMS-Loss (RoI stage) + Repulsion Loss"),
    Row("focal", None, ("loss.cls=focal",), "focal loss (RoI classification)"),
    Row("ohem", None, ("loss.sampler=ohem",), "OHEM RoI sampling"),
    Row("ghm", None, ("loss.cls=ghm", "loss.box=ghm"), "GHM-C + GHM-R"),
    Row("pisa", None, ("loss.sampler=pisa",), "PISA (prime-sample reweighting)"),
    Row("qfl", None, ("loss.cls=qfl",), "quality focal loss"),
    # --box-loss kl is loss.box=kl plus the head that predicts the variances
    Row("kl+vv", None, ("loss.box=kl", "model.box_std_head=true", "postprocess.var_voting=true"),
        "KL-Loss head + variance voting (Softer-NMS)", training_only=False),
    Row("softnms", None, ("postprocess.nms=soft-gaussian",),
        "soft-NMS (Gaussian) at test time on the baseline's weights", test_time=True,
        training_only=False),
    # FCOS as configs/fcos_cpu_demo.yaml: 2 conv layers per head branch on the CPU, lr 0.02
    # (at the Faster R-CNN demo's 0.08 FCOS's focal loss spikes and DW collapses)
    Row("fcos", None, ("model.arch=fcos", "model.fcos_num_convs=2", "optim.lr=0.02"),
        "FCOS (one stage)", training_only=False),
    Row("fcos+dw", None, ("model.arch=fcos", "model.fcos_num_convs=2", "optim.lr=0.02",
                          "model.assigner=dw"),
        "FCOS + Dual Weighting", training_only=False),
    Row("bg_drop", None, ("data.background.policy=drop",), "background-only training images dropped"),
    Row("bg_ratio", None, ("data.background.policy=ratio", "data.background.ratio=0.5"),
        "half of the background-only training images kept"),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


# ----------------------------------------------------------------------------- configs


def base_config(args: argparse.Namespace):
    """The benchmark's config (data, sizes, budget-free) with ``--set`` applied."""
    sets = [f"data.root={args.out / 'data'}"]
    if args.train_images is not None:
        sets.append(f"synth.train_images={args.train_images}")
    if args.val_images is not None:
        sets.append(f"synth.val_images={args.val_images}")
    cfg = resolve_config(args.config, overrides=[*sets, *args.set])
    if cfg.synth is None:
        raise PedcrowdError(f"{args.config}: the benchmark needs a synth: section (its data)")
    return cfg


def row_config(base, row: Row, *, seed: int, epochs: int, eval_every: int):
    """``base`` + the row's options + seed and budget, resolved as ``pedcrowd train`` resolves
    its options; PedcrowdError if the row is not available."""
    budget = [f"train.seed={seed}", f"data.seed={seed}", f"train.epochs={epochs}",
              f"train.eval_every={eval_every}"]
    return resolve_config(base, loss=row.loss, overrides=[*row.sets, *budget])


def availability(base, row: Row) -> str | None:
    """None when the row's options load on this checkout, else why not (one line)."""
    try:
        row_config(base, row, seed=0, epochs=1, eval_every=1)
    except PedcrowdError as e:
        return str(e)
    return None


# Config keys added after benchmark runs were made, with their defaults: left out of the
# digest at those defaults, so that the earlier runs (the same training) are reused.
LATER_KEYS = {"loss.cls_weight": 1.0, "loss.box_weight": 1.0, "loss.rpn_cls_weight": 1.0,
              "loss.rpn_box_weight": 1.0}


def config_digest(cfg) -> str:
    """sha256 (16 hex) of the resolved config without its run directory."""
    d = config_to_dict(cfg)
    d.get("train", {}).pop("out_dir", None)
    for key in LATER_KEYS:  # at their defaults, as runs made before they existed
        section, _, name = key.partition(".")
        if d.get(section, {}).get(name) == LATER_KEYS[key]:
            del d[section][name]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def prepare_backbone(args: argparse.Namespace, log) -> Path | None:
    """The backbone every row starts from (``--backbone-from``), as ``OUT/backbone-SHA.pt``.

    ``demo``: the CPU demo (``pedcrowd train``'s defaults, on its own default-preset
    synthetic data in ``OUT/pretrain_data``) trained once into ``OUT/pretrain``;
    a path: that checkpoint; ``none``: every row from scratch. Only the backbone
    and FPN tensors are kept, so every row (FCOS too) trains its heads with its
    own technique, as the papers' detectors start from ImageNet weights. The
    file name carries the source's hash, so runs from another backbone are
    never reused.
    """
    if args.backbone_from == "none":
        return None
    if args.backbone_from == "demo":
        from pedcrowd.data.synth import ensure_synth

        cfg = load_config(None, [f"data.root={args.out / 'pretrain_data'}"])
        ensure_synth(cfg.data.root, cfg.synth)
        source = args.out / "pretrain" / "last.pt"
        if not (args.out / "pretrain" / "done.json").is_file():
            log(f"pretraining the demo detector into {source.parent} (--backbone-from demo)")
        run_training(cfg, source.parent, log)
    else:
        source = Path(args.backbone_from).resolve()
        if not source.is_file():
            raise PedcrowdError(f"--backbone-from: {source} is not a file")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    target = args.out / f"backbone-{digest}.pt"
    if not target.is_file():
        import torch

        from pedcrowd.safeload import load_tensor_file

        obj = load_tensor_file(source, "--backbone-from")
        state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
        backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
        if not backbone:
            raise PedcrowdError(f"--backbone-from: {source} holds no backbone.* tensors")
        tmp = target.with_suffix(".tmp")
        torch.save({"model": backbone, "source": str(source)}, tmp)
        tmp.replace(target)
        log(f"backbone: {len(backbone)} tensors of {source} -> {target}")
    return target


def with_backbone(base, path: Path | None):
    """``base`` starting from the backbone file (``model.weights``), or unchanged."""
    if path is None:
        return base
    return apply_overrides(base, [f"model.weights={path}"])


# ----------------------------------------------------------------------------- budget


def iters_per_epoch(cfg) -> int:
    """Training steps of one epoch under ``cfg`` (its background policy included)."""
    from pedcrowd.data.config import build_dataset

    return len(build_dataset(cfg.data, "train", train=True)) // cfg.train.batch_size


def calibrate_step_s(base, out: Path, steps: int = 6) -> float:
    """Median seconds of a baseline training step (after one warm-up step), cached in
    ``OUT/calibration.json`` so that a resumed benchmark keeps its budget."""
    path = out / "calibration.json"
    if path.is_file():
        return float(json.loads(path.read_text())["step_s"])
    import itertools
    import statistics

    import torch

    from pedcrowd.engine.distributed import DistInfo
    from pedcrowd.engine.loop import make_loader, train_one_epoch
    from pedcrowd.engine.train import build_training

    cfg = row_config(base, ROW_BY_NAME["none"], seed=0, epochs=1, eval_every=1)
    device = torch.device("cpu") if cfg.train.device == "cpu" or not torch.cuda.is_available() \
        else torch.device("cuda")
    t = build_training(cfg, device)  # the model with its losses, optimiser, scheduler, data
    loader = make_loader(t.train_set, cfg.train.batch_size, 0, 0, 0, DistInfo())
    result = train_one_epoch(t.model, t.optimizer, t.scheduler, t.scaler,
                             itertools.islice(loader, steps + 1), device, 0)
    times = [r["step_s"] for r in result.records]
    step_s = statistics.median(times[1:] or times)
    path.write_text(json.dumps({"step_s": step_s, "steps": len(times)}) + "\n")
    return step_s


# ----------------------------------------------------------------------------- runs


def _move_aside(run_dir: Path) -> Path:
    n = 1
    while (stale := run_dir.with_name(f"{run_dir.name}.stale-{n}")).exists():
        n += 1
    run_dir.rename(stale)
    return stale


def run_training(cfg, run_dir: Path, log) -> dict:
    """Train ``cfg`` into ``run_dir`` unless it is already complete; returns its done.json."""
    from pedcrowd.engine.train import train

    digest = config_digest(cfg)
    done = run_dir / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("digest") == digest:
            return info | {"reused": True}
        log(f"{run_dir}: finished with another configuration; moved to {_move_aside(run_dir)}")
    resume = False
    if (run_dir / "last.pt").is_file():
        same = (run_dir / "config.yaml").is_file() and config_digest(
            load_config(run_dir / "config.yaml")) == digest
        if same:
            resume = True
            log(f"{run_dir}: interrupted run, continuing from its last.pt")
        else:
            log(f"{run_dir}: interrupted run of another configuration; moved to "
                f"{_move_aside(run_dir)}")
    elif run_dir.exists():  # killed before its first checkpoint: nothing to continue
        log(f"{run_dir}: interrupted before its first checkpoint, redone from scratch")
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    summary = train(cfg, run_dir, resume=resume)
    expected = cfg.train.epochs
    if summary.get("epochs") != expected or summary.get("final_mr") is None:
        raise PedcrowdError(f"{run_dir}: training ended without its final evaluation")
    info = {
        "digest": digest, "iterations": summary["iterations"], "epochs": summary["epochs"],
        "wall_s": time.perf_counter() - t0, "resumed": resume, "final_mr": summary["final_mr"],
    }
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info | {"reused": False}


def run_test_time(base_run: Path, sets: tuple[str, ...], run_dir: Path, log) -> dict:
    """Detections of ``base_run``'s weights on the val split with ``sets`` applied."""
    detect_checkpoint = report.detect_checkpoint
    base_done = json.loads((base_run / "done.json").read_text())
    digest = hashlib.sha256(json.dumps([base_done["digest"], list(sets)]).encode()).hexdigest()[:16]
    done = run_dir / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("digest") == digest:
        return json.loads(done.read_text()) | {"reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    det_json, seconds, n = detect_checkpoint(base_run, sets)
    (run_dir / "val_dets.json").write_text(json.dumps(det_json))
    info = {"digest": digest, "base": str(base_run), "sets": list(sets), "infer_s": seconds,
            "images": n, "iterations": base_done["iterations"]}
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info | {"reused": False}


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_path(args: argparse.Namespace, row: Row, seed: int) -> Path:
    return args.out / "runs" / row.name / f"seed{seed}"


def _row_failed(row: Row, seed: int, error: Exception, results: dict, unavailable: dict, log) -> None:
    log(f"{row.name} seed {seed}: failed ({error}); row skipped")
    unavailable[row.name] = f"failed: {error}"
    results.pop(row.name, None)


def train_parallel(args: argparse.Namespace, rows: list[Row], results: dict, unavailable: dict,
                   log) -> None:
    """Every (row, seed) run in ``--jobs`` child processes at once (``OMP_NUM_THREADS`` = the
    CPU's cores / jobs each); a child's output goes to ``OUT/runs/ROW/seedK.log``.

    Several small CPU trainings side by side keep the cores busier than one
    two-thread training (the detector's convolutions are too small to use
    two threads well: two one-thread demo runs side by side took 8.7 min each,
    one two-thread run about 7). The same resume rules hold: each child runs
    :func:`run_training` for its one run.
    """
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def one(row: Row, seed: int) -> dict:
        run_dir = run_path(args, row, seed)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log(f"{row.name} seed {seed}: training into {run_dir} (log: {run_dir}.log)")
        with open(f"{run_dir}.log", "w") as out:
            proc = subprocess.run(
                [sys.executable, __file__, *args.argv, "--run-one", f"{row.name}:{seed}"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        tail = Path(f"{run_dir}.log").read_text(errors="replace").strip().splitlines()[-1:]
        if proc.returncode != 0:
            raise PedcrowdError(tail[0] if tail else f"exit code {proc.returncode}")
        return {"dir": str(run_dir), **json.loads(tail[0])}  # run_one's last line

    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(one, row, seed): (row, seed) for row in rows for seed in range(args.seeds)}
        for future in as_completed(futures):
            row, seed = futures[future]
            if future.cancelled():
                continue
            try:
                info = future.result()
            except PedcrowdError as e:
                if row.name == "none":
                    for other in futures:
                        other.cancel()
                    raise
                if row.name in results:
                    _row_failed(row, seed, e, results, unavailable, log)
                    for other, (r, _) in futures.items():  # its seeds not started yet
                        if r.name == row.name:
                            other.cancel()
                continue
            log(f"{row.name} seed {seed}: {'reused' if info.get('reused') else 'done'}")
            if row.name in results:
                results[row.name][seed] = info


def run_one(args: argparse.Namespace) -> int:
    """``--run-one ROW:SEED`` (a child of :func:`train_parallel`): that run; its done.json
    (and whether it was reused) as the last line of stdout."""
    name, _, seed = args.run_one.rpartition(":")
    row = ROW_BY_NAME[name]

    base = with_backbone(base_config(args), prepare_backbone(args, log))  # made by the parent
    ipe = iters_per_epoch(row_config(base, ROW_BY_NAME["none"], seed=0, epochs=1, eval_every=1))
    epochs, eval_every = budget_epochs(args, base, ipe)[:2]
    cfg = row_config(base, row, seed=int(seed), epochs=epochs, eval_every=eval_every)
    info = run_training(cfg, run_path(args, row, int(seed)), log)
    print(json.dumps(info), flush=True)
    return 0


def budget_epochs(args: argparse.Namespace, base, ipe: int) -> tuple[int, int, int, float | None]:
    """(epochs, eval_every, asked steps, calibrated step seconds) of every run."""
    if args.minutes is not None:
        step_s = calibrate_step_s(base, args.out)
        target = max(1, int(args.minutes * 60 / step_s))
    else:
        step_s, target = None, args.iters if args.iters is not None else ipe
    epochs = max(1, round(target / ipe))
    eval_every = args.eval_every if 0 < args.eval_every < epochs else epochs
    return epochs, eval_every, target, step_s


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "crowd_benchmark",
                   help="benchmark folder: data/, runs/ROW/seedK/, report.json")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--rows", default="all", help="comma-separated row names, or all")
    p.add_argument("--seeds", type=int, default=3, help="seeds per row (0 .. N-1)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, default=None,
                        help="training steps per run, rounded to whole epochs (default: one epoch)")
    budget.add_argument("--minutes", type=float, default=None,
                        help="training minutes per run: steps from a measured baseline step time")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N epochs too (0: only after the last; the curves' MR points)")
    p.add_argument("--train-images", type=int, default=None, help="override synth.train_images")
    p.add_argument("--val-images", type=int, default=None, help="override synth.val_images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--time-images", type=int, default=50, help="val images of the inference timing")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "RESULTS.md",
                   help="the report (its plots go to RESULTS_DIR/results/)")
    p.add_argument("--note", default="", help="a sentence put at the top of the report")
    p.add_argument("--reading", type=Path, default=None,
                   help="a Markdown file put at the top of the report (the hand-written summary)")
    p.add_argument("--list", action="store_true", help="print the rows and their availability")
    p.add_argument("--backbone-from", default="demo", metavar="demo|none|CKPT",
                   help="the backbone + FPN every row starts from: demo (train the CPU demo once, "
                        "on its own data), none (from scratch) or a pedcrowd checkpoint")
    p.add_argument("--jobs", type=int, default=1,
                   help="training runs at once, each in its own process with cores/jobs threads "
                        "(2 on a 2-core CPU gets more done than 1)")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # ROW:SEED, for --jobs
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.reading is not None and not args.reading.is_file():
        p.error(f"--reading: {args.reading} is not a file")
    return args


def select_rows(spec: str) -> list[Row]:
    if spec == "all":
        return list(ROWS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROW_BY_NAME]
    if unknown:
        raise PedcrowdError(f"--rows: unknown row(s) {', '.join(unknown)} "
                            f"(known: {', '.join(ROW_BY_NAME)})")
    rows = [ROW_BY_NAME[n] for n in names]
    if "none" not in names:  # every difference is against the baseline
        rows.insert(0, ROW_BY_NAME["none"])
    for r in list(rows):
        if r.test_time and r.base not in {x.name for x in rows}:
            rows.insert(0, ROW_BY_NAME[r.base])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()

    try:
        if args.run_one is not None:
            return run_one(args)
        rows = select_rows(args.rows)
        base = base_config(args)
        unavailable = {r.name: why for r in rows if (why := availability(base, r)) is not None}
        if args.list:
            for r in ROWS:
                why = availability(base, r)
                print(f"{r.name:10s} {'unavailable: ' + why if why else 'available':60.60s} {r.command()}")
            return 0
        for name, why in unavailable.items():
            log(f"row {name}: unavailable on this checkout ({why}); skipped")
        if "none" in unavailable:
            raise PedcrowdError("the baseline row does not load; nothing to compare against")
        rows = [r for r in rows if r.name not in unavailable]

        from pedcrowd.data.synth import ensure_synth

        args.out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        summary = ensure_synth(base.data.root, base.synth)
        log(f"data: {base.data.root} ({'reused' if summary.reused else 'generated'}, "
            f"{time.perf_counter() - t0:.0f} s)")
        base = with_backbone(base, prepare_backbone(args, log))

        ipe = iters_per_epoch(row_config(base, ROW_BY_NAME["none"], seed=0, epochs=1, eval_every=1))
        epochs, eval_every, target, step_s = budget_epochs(args, base, ipe)
        if step_s is not None:
            log(f"budget: {args.minutes} min at {step_s:.3f} s/step -> {target} steps")
        log(f"budget: {epochs} epoch(s) of {ipe} steps per run (asked {target} steps)")

        results: dict[str, dict[int, dict]] = {r.name: {} for r in rows}
        t_runs = time.perf_counter()
        trained = [r for r in rows if not r.test_time]
        if args.jobs > 1:
            train_parallel(args, trained, results, unavailable, log)
        else:
            for row in trained:
                for seed in range(args.seeds):
                    cfg = row_config(base, row, seed=seed, epochs=epochs, eval_every=eval_every)
                    run_dir = run_path(args, row, seed)
                    log(f"{row.name} seed {seed}: training ({epochs} epochs) into {run_dir}")
                    try:
                        info = run_training(cfg, run_dir, log)
                    except PedcrowdError as e:  # one broken technique does not stop the others
                        if row.name == "none":
                            raise
                        _row_failed(row, seed, e, results, unavailable, log)
                        break
                    log(f"{row.name} seed {seed}: {'reused' if info.get('reused') else 'done'}")
                    results[row.name][seed] = {"dir": str(run_dir), **info}
        for row in (r for r in rows if r.test_time):
            if row.base not in results or row.base in unavailable:
                unavailable[row.name] = f"its base row {row.base} failed"
                del results[row.name]
                continue
            for seed in range(args.seeds):
                run_dir = run_path(args, row, seed)
                try:
                    info = run_test_time(run_path(args, ROW_BY_NAME[row.base], seed), row.sets,
                                         run_dir, log)
                except PedcrowdError as e:
                    _row_failed(row, seed, e, results, unavailable, log)
                    break
                log(f"{row.name} seed {seed}: {'reused' if info.get('reused') else 'done'}")
                results[row.name][seed] = {"dir": str(run_dir), **info}
        rows = [r for r in rows if r.name in results]
        runs_s = time.perf_counter() - t_runs

        report.write_report(args, base, rows, unavailable, results, budget={
            "epochs": epochs, "iters_per_epoch": ipe, "asked_steps": target,
            "calibrated_step_s": step_s, "eval_every": eval_every,
            # each run's own training time (a reused run counts the time it took when it ran)
            "runs_wall_s": sum(info.get("wall_s", 0.0) for seeds in results.values()
                               for info in seeds.values()),
            "invocation_wall_s": runs_s,
        }, log=log)
    except PedcrowdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
