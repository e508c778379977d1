"""The training loop as plain functions: read top to bottom in one sitting.

:func:`fit` (and :func:`train`, its summary only) claims the run directory and
runs :func:`train_epochs`: one short loop whose checkpoint, stop and evaluation
are plain ``if``s over named functions: :func:`build_training` (model with its
losses, optimiser, scheduler, scaler, data), :func:`resume_progress`,
:func:`train_epoch` (the steps of :func:`~pedcrowd.engine.loop.training_steps`,
logged, with the mid-epoch checkpoints), :func:`write_checkpoint`,
:func:`stop_requested` and :func:`evaluate_epoch` (:func:`evaluate_model` runs the
detector over the val split and scores it with :mod:`pedcrowd.eval`).

Run directory (``pedcrowd infer``/``compare`` read it; keep the names):
``config.yaml`` (resolved), ``last.pt``, ``best.pt`` (best MR^-2 Reasonable),
``metrics.jsonl``, ``val_dets.json`` (latest val detections, standard results
format), ``val_eval.json`` (latest evaluation, the ``pedcrowd eval --json``
schema), and per-epoch copies of both under ``eval/``.

Determinism: on the CPU the same seed gives the same weights, and 2 epochs
equal 1 epoch + ``resume`` 1 epoch bit for bit (except with GHM, whose moving
averages are not checkpointed and restart on a resume). The data order comes from
``DistributedSampler(seed, epoch)``, augmentations from ``(seed, epoch,
index)``, DataLoader workers from a generator seeded by ``(seed, epoch)``, and
the model's own randomness (the RPN and RoI samplers) from the global torch
RNG, whose state every checkpoint stores with numpy's and Python's.

Crash safety: ``last.pt`` is written at every epoch end and, with
``train.checkpoint_every: N``, every N iterations; a mid-epoch checkpoint
stores how many batches of its epoch were done, and a resume skips exactly
those (the sampler order depends only on ``(seed, epoch)``), so a run killed
at any point and resumed ends with the weights of an uninterrupted one. The
checkpoint before it is kept as ``prev.pt``. SIGTERM/SIGINT finish the step,
write ``last.pt`` and raise :class:`~pedcrowd.engine.signals.Interrupted`
(the CLI exits 143/130). The run directory is locked and never overwritten
(:mod:`pedcrowd.engine.rundir`). A step whose loss is not finite is skipped
with a warning (its batch and learning-rate step still count); after
``train.max_nonfinite_steps`` in a row the run stops, leaving the last
checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pedcrowd.config_check import check_config
from pedcrowd.data.config import build_dataset
from pedcrowd.data.synth import SynthInterrupted, set_lock
from pedcrowd.engine import distributed as ddp
from pedcrowd.engine import rundir
from pedcrowd.engine.checkpoint import (
    load_matching_state,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from pedcrowd.engine.config import Config, config_from_dict, config_to_dict, save_config
from pedcrowd.engine.curves import write_run_curves
from pedcrowd.engine.loop import (
    Diverged,
    EpochState,
    amp_dtype,
    make_loader,
    max_over_ranks,
    training_steps,
)
from pedcrowd.engine.metrics import MetricsLog, to_jsonable
from pedcrowd.engine.predict import (
    EvaluationStopped,
    configure_postprocess,
    detections_to_json,
    predict,
)
from pedcrowd.engine.reporter import Reporter
from pedcrowd.engine.schedule import build_optimizer, build_scheduler
from pedcrowd.engine.signals import Interrupted, StopOnSignal
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval import evaluate, report_to_json
from pedcrowd.fileio import copy_file_atomic, write_text_atomic
from pedcrowd.formats.registry import dataset_format
from pedcrowd.losses.focal import init_classifier_priors
from pedcrowd.model import build_model
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.model.detector import install_criteria

PRIMARY_SETUP = "Reasonable"


# ----------------------------------------------------------------------------- building


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python (the model init and samplers draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global RNG, for third-party code
    torch.manual_seed(seed)


def install_crowd_losses(model: torch.nn.Module, cfg: Config) -> None:
    """Give an existing detector the RPN and RoI head training criteria of ``cfg.loss`` (and
    the prior bias of a focal / QFL classifier): for trying several loss settings on one
    model; :func:`build_training_model` builds a new model's criteria once."""
    install_criteria(model, cfg.model, cfg.loss)
    init_classifier_priors(model, cfg.model.weights, cfg.loss)


def build_training_model(cfg: Config) -> torch.nn.Module:
    """The detector of ``cfg.model`` (on the CPU) with its post-processing and the training
    criteria of ``cfg.loss`` installed: the model every training step runs."""
    model = build_model(cfg.model, loss=cfg.loss)
    configure_postprocess(model, cfg.postprocess)  # fails now, not at the first evaluation
    init_classifier_priors(model, cfg.model.weights, cfg.loss)
    return model


@dataclasses.dataclass
class Training:
    """What :func:`build_training` makes of a config: the model (under DDP its wrapper;
    :func:`unwrap` gives the detector), optimiser, per-iteration scheduler, AMP scaler,
    the data, and the autocast dtype ``train.amp`` means here (None: float32)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_set: Any
    val_set: Any | None
    iters_per_epoch: int
    precision: torch.dtype | None


def build_training(
    cfg: Config, device: torch.device, info: ddp.DistInfo | None = None, *, evaluate: bool = False
) -> Training:
    """Build the model with its losses, the optimiser, scheduler and scaler, and the data.

    Args:
        device: where the model trains.
        info: the process's place in a DDP job (None: a plain run); with several
            processes the model is wrapped in ``DistributedDataParallel``.
        evaluate: also build the val split (the process that evaluates).

    Raises:
        PedcrowdError: fewer training images than one batch over every process.
    """
    info = info if info is not None else ddp.DistInfo()
    tcfg = cfg.train
    train_set = build_dataset(cfg.data, "train", train=True)
    val_set = build_dataset(cfg.data, "val", train=False) if evaluate else None
    if len(train_set) < tcfg.batch_size * info.world_size:
        raise PedcrowdError(
            f"data: {len(train_set)} training images, fewer than one batch "
            f"({tcfg.batch_size} x {info.world_size} processes)"
        )
    model = build_training_model(cfg)
    model.to(device)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # every technique gives every trainable parameter a gradient at every step
            # (tests/test_precision.py, the one-step test of every technique)
            find_unused_parameters=False,
        )
    iters_per_epoch = len(train_set) // (tcfg.batch_size * info.world_size)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.schedule, iters_per_epoch, tcfg.epochs)
    precision = amp_dtype(device) if tcfg.amp else None
    # loss scaling for float16 only (bfloat16 has float32's exponent range)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    return Training(model, optimizer, scheduler, scaler, train_set, val_set, iters_per_epoch, precision)


def head_for_box_loss(cfg: Config) -> Config:
    """``cfg`` with the box head that ``loss.box`` needs: KL-Loss trains the KL head's
    variances, so ``loss.box: kl`` turns ``model.box_std_head`` on (and the saved config
    records it, so the checkpoint loads with its head); a KL head without KL-Loss would
    never train its variances, and is refused."""
    if cfg.loss.box == "kl" and not cfg.model.box_std_head:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, box_std_head=True))
    if cfg.model.box_std_head and cfg.loss.box != "kl":
        raise PedcrowdError(
            f"model.box_std_head: true needs loss.box: kl (with loss.box: {cfg.loss.box} the "
            "box variances would never be trained); use --box-loss kl or turn the head off"
        )
    return cfg


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(
    model: torch.nn.Module, dataset, device: torch.device, protocol: str = "citypersons",
    batch_size: int = 4, postprocess: PostprocessConfig | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Detect on ``dataset`` (the val split) and score with the pedcrowd evaluator.

    ``postprocess`` (the config's section; None keeps the model's) is set on the
    model first. ``should_stop`` is checked after every batch; True raises
    :class:`EvaluationStopped`.

    Returns:
        (detections, report): image id -> (boxes [D, 4] xywh, scores [D]), and the
        evaluator's report (``report.results[setup].mr``).
    """
    configure_postprocess(unwrap(model), postprocess)
    dets = predict(unwrap(model), dataset, device, batch_size=batch_size, should_stop=should_stop)
    report = evaluate(dataset.records, dets, protocol=protocol)
    return dets, report


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (equal digests = equal weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_trained(model: torch.nn.Module, history: list[dict[str, Any]], last: bool, epoch: int) -> None:
    """Diverged when the weights hold NaN/inf after ``epoch``, or when the run is over and
    none of its steps had a finite loss (every one was skipped: the weights are the
    initial ones). Either would otherwise end as a normal exit with a useless checkpoint."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise Diverged(
            f"training diverged: after epoch {epoch} the weights hold NaN or infinite values "
            f"({bad[0]}{more}); lower optim.lr or check the data"
        )
    if last and not any(h.get("finite_steps", 1) for h in history):  # older checkpoints: assume steps
        raise Diverged(
            "training ended without a single optimisation step: every step's loss was non-finite "
            "and skipped, so the weights are the untrained ones; lower optim.lr or check the data"
        )


# ----------------------------------------------------------------------------- fit


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
          reporter: Reporter | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir``; returns the summary (final MR^-2 per setup, ...)."""
    return fit(cfg, out_dir, resume=resume, reporter=reporter)[1]


def fit(
    cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
    reporter: Reporter | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the model described by ``cfg``; returns the trained model and the summary.

    Args:
        out_dir: the run directory. When given, it must not hold a run unless
            ``resume``; when None, ``cfg.train.out_dir`` is used, or the first
            free ``NAME-2``, ``NAME-3``, ... if it holds a run already.
        resume: continue from ``last.pt`` (model, optimiser, scheduler, scaler,
            epoch, iteration and position in the epoch, best MR, every RNG
            state); ``prev.pt`` when ``last.pt`` is torn. A config that changes
            the run's trajectory is refused (:func:`rundir.check_resume_config`).
        reporter: progress and messages (default: :mod:`logging` only).

    Raises:
        PedcrowdError: bad input, a locked or occupied run directory, divergence.
        Interrupted: SIGTERM/SIGINT; ``last.pt`` was written first.
    """
    check_config(cfg)  # a config built in Python: the ranges and relations the loader checks
    cfg = head_for_box_loss(cfg)
    tcfg = cfg.train
    run_dir = Path(out_dir if out_dir is not None else tcfg.out_dir)
    device = ddp.resolve_device(tcfg.device, ddp.local_rank_from_env())
    lock = None
    if int(os.environ.get("RANK", "0")) == 0:  # before any process group: rank 0 owns the directory
        run_dir, lock = rundir.claim_run_dir(run_dir, explicit=out_dir is not None, resume=resume)
    owns_group = not torch.distributed.is_initialized()
    info = ddp.DistInfo()
    try:  # on any failure too: release the lock, destroy the process group this call made
        info = ddp.init_distributed(device)
        owns_group = owns_group and info.enabled
        run_dir = _same_on_all_ranks(run_dir, info)
        # the saved config names the directory it was really written to
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(tcfg, out_dir=str(run_dir)))
        rep = reporter if (reporter is not None and info.is_main) else Reporter()
        with StopOnSignal() as signals:
            return _fit_in(cfg, run_dir, resume, device, info, rep, signals)
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            ddp.cleanup(info)


def _same_on_all_ranks(run_dir: Path, info: ddp.DistInfo) -> Path:
    """Rank 0's run directory (it may have moved on to ``NAME-2``), on every rank."""
    if not info.enabled:
        return run_dir
    box = [str(run_dir)]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])


@dataclasses.dataclass
class Progress:
    """Where a run stands (with the :class:`Training` states, what ``last.pt`` stores):
    epochs done, global iteration, best MR^-2 Reasonable, one history entry per epoch,
    and the current epoch so far (a mid-epoch checkpoint's batches done)."""

    epoch: int = 0
    iteration: int = 0
    best_mr: float = math.inf
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    state: EpochState = dataclasses.field(default_factory=EpochState)


@dataclasses.dataclass
class Run:
    """One :func:`fit` inside its run lock and signal handlers: the config, where it
    writes, how it reports, what it trains and how far it is."""

    cfg: Config
    run_dir: Path
    device: torch.device
    info: ddp.DistInfo
    rep: Reporter
    signals: StopOnSignal
    training: Training
    progress: Progress = dataclasses.field(default_factory=Progress)
    log: MetricsLog | None = None

    @property
    def cfg_dict(self) -> dict[str, Any]:
        return config_to_dict(self.cfg)


def _fit_in(
    cfg: Config, run_dir: Path, resume: bool, device: torch.device, info: ddp.DistInfo,
    rep: Reporter, signals: StopOnSignal,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The body of :func:`fit`, inside the run lock and the signal handlers."""
    run: Run | None = None
    held = contextlib.ExitStack()
    try:  # on any failure too: flush the metrics log, close the reporter, release the data set
        prepare_data(cfg, run_dir, info, rep, signals, held)
        training = setup_training(cfg, device, info, rep)
        run = Run(cfg, run_dir, device, info, rep, signals, training)
        if resume:
            run.progress = resume_progress(run)
        start_run_dir(run, resume)
        t0 = time.perf_counter()
        rep.start(run_dir, cfg, training.iters_per_epoch * cfg.train.epochs, run.progress.iteration,
                  run.progress.epoch)
        train_epochs(run)
        return unwrap(training.model), run_summary(run, time.perf_counter() - t0)
    except Diverged as e:
        raise Diverged(f"{e}; the last checkpoint ({run_dir / rundir.LAST}) is left as it was") from None
    finally:
        rep.close()
        if run is not None and run.log is not None:
            run.log.close()
        held.close()


def prepare_data(cfg: Config, run_dir: Path, info: ddp.DistInfo, rep: Reporter,
                 signals: StopOnSignal, held: contextlib.ExitStack) -> None:
    """Generate the synthetic data set on first use (rank 0; the others wait), and hold
    its shared lock in ``held`` while the run reads it (another run never regenerates
    it underneath). A signal during the generation stops with :class:`Interrupted`."""
    if cfg.synth is None:
        return
    if info.is_main:
        signalled = lambda: signals.signum is not None  # noqa: E731
        root = Path(cfg.data.root)
        try:
            held.enter_context(set_lock(root, signalled))
            summary = rep.synthesize(root, cfg.synth, signalled)
        except SynthInterrupted:
            raise Interrupted(signals.signum or signal.SIGTERM, run_dir, None, 0) from None
        if not summary.reused:
            rep.info(
                f"generated {sum(summary.images.values())} synthetic images in {root} "
                f"({summary.seconds:.0f} s, reused by later runs)"
            )
    ddp.barrier(info)


def setup_training(cfg: Config, device: torch.device, info: ddp.DistInfo, rep: Reporter) -> Training:
    """Threads, seeds, then :func:`build_training` (rank 0 also builds the val split)."""
    if cfg.train.threads is not None:  # for this process from here on (also after fit returns)
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    training = build_training(cfg, device, info, evaluate=info.is_main)
    if cfg.train.amp and training.precision is None:
        rep.warning(f"train.amp: this {device.type.upper()} has no bfloat16 instructions "
                    "(AVX512-BF16 or AMX); training in float32")
    return training


def resume_progress(run: Run) -> Progress:
    """Load ``last.pt`` (``prev.pt`` when torn) into the run's model, optimiser, scheduler,
    scaler and RNGs; returns the progress it stores. A resume on more processes than the
    checkpoint's starts the new ranks' RNGs fresh."""
    t = run.training
    ckpt, ckpt_path, torn = rundir.load_resume_checkpoint(run.run_dir, map_location=run.device)
    if torn:
        run.rep.warning(torn)
    saved = config_to_dict(config_from_dict(ckpt.get("config", {}), source=str(ckpt_path)))
    for warning in rundir.check_resume_config(saved, run.cfg_dict, ckpt["epoch"], ckpt_path):
        run.rep.warning(f"resuming {ckpt_path}: {warning}")
    load_matching_state(unwrap(t.model), ckpt["model"], ckpt_path)
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.scheduler.load_state_dict(ckpt["scheduler"])
    t.scaler.load_state_dict(ckpt["scaler"])
    progress = Progress(
        epoch=ckpt["epoch"], iteration=ckpt["iteration"], best_mr=ckpt.get("best_mr", math.inf),
        history=ckpt.get("history", []), state=EpochState(**ckpt.get("epoch_state", {})),
    )
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    if run.info.rank < len(rngs):
        set_rng_state(rngs[run.info.rank])
    return progress


def start_run_dir(run: Run, resume: bool) -> None:
    """Rank 0: the run directory without stale temporaries, its metrics cut back to the
    checkpoint on a resume, the resolved ``config.yaml``; then the metrics log opens."""
    if run.info.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run.run_dir)  # of writes killed mid-way (we hold the lock)
        if resume:
            rundir.truncate_metrics(run.run_dir, run.progress.iteration,
                                    eval_done=run.progress.state.steps == 0)
        save_config(run.cfg, run.run_dir / "config.yaml")
    run.log = MetricsLog(run.run_dir, enabled=run.info.is_main)


# ----------------------------------------------------------------------------- the loop


def train_epochs(run: Run) -> None:
    """The epochs from where the run stands to ``train.epochs``: train, stop on a signal,
    check, evaluate, checkpoint."""
    epochs, p = run.cfg.train.epochs, run.progress
    for epoch in range(p.epoch, epochs):
        run.rep.epoch(epoch + 1, epochs)
        means = train_epoch(run, epoch)
        if stop_requested(run):  # a signal: checkpoint where we are (even at the epoch's last step)
            write_checkpoint(run, epoch)
            raise interrupted(run)
        means = ddp.all_mean(means, run.info, run.device)
        entry: dict[str, Any] = {"epoch": epoch + 1, "iter": p.iteration, "train": means,
                                 "finite_steps": p.state.finite_steps}
        last = epoch + 1 == epochs
        # before anything is written: a useless model never replaces the last checkpoint
        check_trained(unwrap(run.training.model), [*p.history, entry], last, epoch + 1)
        is_best = False
        if run.info.is_main and (last or evaluation_due(run.cfg.train.eval_every, epoch)):
            is_best = evaluate_epoch(run, epoch, entry)
        p.history.append(entry)
        p.state = EpochState(nonfinite_run=p.state.nonfinite_run)  # the next epoch starts empty
        write_checkpoint(run, epoch + 1, best=is_best)
        if stop_requested(run):  # a signal during the evaluation or the write
            if not last:
                raise interrupted(run)
            run.rep.warning(f"{signal.Signals(run.signals.signum or signal.SIGTERM).name} arrived "
                            "after the run's last step and evaluation: the run is complete")


def train_epoch(run: Run, epoch: int) -> dict[str, float]:
    """One pass over the training data (the rest of it after a mid-epoch resume): every step
    reported and logged, ``last.pt`` every ``train.checkpoint_every`` iterations. Returns
    this process's mean loss terms."""
    tcfg, t, p = run.cfg.train, run.training, run.progress
    loader = make_loader(t.train_set, tcfg.batch_size, run.cfg.data.num_workers, tcfg.seed, epoch,
                         run.info, skip_batches=p.state.steps)
    steps = training_steps(
        t.model, t.optimizer, t.scheduler, t.scaler, loader, run.device, epoch,
        iteration=p.iteration, amp=tcfg.amp, grad_clip=run.cfg.optim.grad_clip,
        log_every=tcfg.log_every, world_size=run.info.world_size, state=p.state,
        max_nonfinite=tcfg.max_nonfinite_steps, signals=run.signals,
    )
    for step in steps:
        p.iteration = step.record["iter"]
        if step.warning is not None:
            run.rep.warning(step.warning)
        run.rep.step(step.record)
        if step.record["log"]:
            run.log.write({"kind": "train", **{k: v for k, v in step.record.items() if k != "log"}})
        every = tcfg.checkpoint_every
        if every > 0 and p.iteration % every == 0 and p.state.steps < t.iters_per_epoch:
            write_checkpoint(run, epoch)  # mid-epoch: p.state.steps batches of this epoch are done
    return p.state.means()


def evaluation_due(eval_every: int, epoch: int) -> bool:
    """Whether ``train.eval_every`` asks for an evaluation after ``epoch`` (0-based)."""
    return eval_every > 0 and (epoch + 1) % eval_every == 0


def evaluate_epoch(run: Run, epoch: int, entry: dict[str, Any]) -> bool:
    """Evaluate on the val split after ``epoch``: the MR^-2 go into ``entry`` and the log,
    the detections and report into the run directory. Returns whether it is the best
    Reasonable so far. A signal ends the evaluation at the next batch (a scheduler's grace
    period is shorter than an evaluation) with a checkpoint; under DDP the other ranks wait
    in a collective, so there it finishes first."""
    t, p = run.training, run.progress
    run.rep.evaluating()
    try:
        dets, report = evaluate_model(
            t.model, t.val_set, run.device, protocol=dataset_format(run.cfg.data.format).protocol,
            postprocess=run.cfg.postprocess,
            should_stop=None if run.info.enabled else (lambda: run.signals.signum is not None),
        )
    except EvaluationStopped:
        # every batch of the epoch is done: last.pt says so (a mid-epoch checkpoint at
        # its end), and the resumed run evaluates this epoch again, the final one too
        write_checkpoint(run, epoch)
        raise interrupted(run) from None
    mrs = _report_mrs(report)
    entry["mr"] = mrs
    run.log.write({"kind": "eval", "epoch": epoch + 1, "iter": p.iteration, "mr": mrs})
    _write_eval_files(run.run_dir, epoch + 1, dets, report, t.val_set.records)
    primary = mrs.get(PRIMARY_SETUP)
    is_best = primary is not None and primary < p.best_mr
    if is_best:
        p.best_mr = primary
    run.rep.evaluated(epoch + 1, mrs)
    return is_best


def write_checkpoint(run: Run, epoch: int, best: bool = False) -> None:
    """``last.pt`` (the one before it kept as ``prev.pt``; ``best`` also copies it to
    ``best.pt``) and the curves; a collective under DDP (every rank's RNG state goes in,
    so that a DDP run resumes exactly)."""
    t, p = run.training, run.progress
    rngs = _gather_rng(run.info)
    if run.info.is_main:
        save_checkpoint(
            run.run_dir / rundir.LAST, keep_previous_as=rundir.PREV,
            model=unwrap(t.model).state_dict(), optimizer=t.optimizer.state_dict(),
            scheduler=t.scheduler.state_dict(), scaler=t.scaler.state_dict(),
            epoch=epoch, iteration=p.iteration, epoch_state=dataclasses.asdict(p.state),
            best_mr=p.best_mr, history=p.history, rng=rngs, config=run.cfg_dict,
        )
        if best:
            copy_file_atomic(run.run_dir / rundir.LAST, run.run_dir / "best.pt")
        write_run_curves(run.run_dir)  # curves.png follows the run, checkpoint by checkpoint
    ddp.barrier(run.info)


def stop_requested(run: Run) -> bool:
    """Whether a signal was caught on any rank (a collective under DDP; once per epoch,
    the steps reduce their own flag with their loss read)."""
    flag = run.signals.signum is not None
    if not run.info.enabled:
        return flag
    return bool(max_over_ranks(torch.full((1,), float(flag), device=run.device)).item() > 0)


def interrupted(run: Run) -> Interrupted:
    """The exception that ends a run stopped by a signal, naming its ``last.pt``."""
    return Interrupted(run.signals.signum or signal.SIGTERM, run.run_dir, run.run_dir / rundir.LAST,
                       run.progress.iteration)


def run_summary(run: Run, wall_s: float) -> dict[str, Any]:
    """What :func:`fit` returns besides the model (``pedcrowd train --json`` prints it)."""
    p = run.progress
    return {
        "run_dir": str(run.run_dir), "epochs": run.cfg.train.epochs, "iterations": p.iteration,
        "wall_s": wall_s, "best_mr": None if math.isinf(p.best_mr) else p.best_mr,
        "final_mr": next((h["mr"] for h in reversed(p.history) if "mr" in h), None),
        "history": p.history, "weights_digest": weights_digest(run.training.model),
        "rank": run.info.rank, "world_size": run.info.world_size,
    }


def _report_mrs(report) -> dict[str, float | None]:
    out = {}
    for name, res in report.results.items():
        mr = getattr(res, "mr", None)
        out[name] = None if mr is None or not math.isfinite(mr) else float(mr)
    return out


def _gather_rng(info: ddp.DistInfo):
    state = rng_state()
    if not info.enabled:
        return state
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(to_jsonable(data)))


def _write_eval_files(run_dir: Path, epoch: int, dets, report, records) -> None:
    det_json = detections_to_json(dets, records)
    eval_json = report_to_json(report)
    (run_dir / "eval").mkdir(exist_ok=True)
    _write_json(run_dir / "val_dets.json", det_json)
    _write_json(run_dir / "val_eval.json", eval_json)
    _write_json(run_dir / "eval" / f"epoch{epoch:03d}_dets.json", det_json)
    _write_json(run_dir / "eval" / f"epoch{epoch:03d}_eval.json", eval_json)
