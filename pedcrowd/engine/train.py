"""The training loop as plain functions: read top to bottom in one sitting.

:func:`train` builds everything from a :class:`Config` and runs the epochs;
:func:`train_one_epoch` is one pass over the loader; :func:`evaluate_model`
runs the detector over the val split and scores it with :mod:`pedcrowd.eval`.

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
from pedcrowd.engine.config import (
    Config,
    config_from_dict,
    config_to_dict,
    save_config,
)
from pedcrowd.engine.curves import write_run_curves
from pedcrowd.engine.inference import configure_postprocess, run_detector
from pedcrowd.engine.loop import (  # noqa: F401 - train_one_epoch, make_loader re-exported
    Diverged,
    EpochState,
    amp_dtype,
    make_loader,
    train_one_epoch,
)
from pedcrowd.engine.metrics import MetricsLog, to_jsonable
from pedcrowd.engine.reporter import Reporter
from pedcrowd.engine.schedule import build_optimizer, build_scheduler
from pedcrowd.engine.signals import Interrupted, StopOnSignal
from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import copy_file_atomic, write_text_atomic
from pedcrowd.formats.detections import output_to_xywh, results_entries
from pedcrowd.formats.registry import dataset_format
from pedcrowd.model.config import PostprocessConfig

PRIMARY_SETUP = "Reasonable"


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python (the model init and samplers draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - legacy global RNG, for third-party code
    torch.manual_seed(seed)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (equal digests = equal weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class EvaluationStopped(Exception):  # noqa: N818 - what happened, not an error
    """``should_stop`` returned True during :func:`predict`."""


def predict(
    model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 4,
    should_stop: Callable[[], bool] | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Detections of ``model`` on every image of ``dataset`` (eval mode, no augmentation),
    through the inference loop ``pedcrowd infer`` runs too (:func:`run_detector`).

    Returns:
        image id -> (boxes [D, 4] float64 ``x, y, w, h``, scores [D]) in the
        pixels of the dataset's records (the model maps its resize back), the
        input form of :func:`pedcrowd.eval.evaluate`.
    """
    dets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    items = (dataset[i] for i in range(len(dataset)))
    for batch in run_detector(model, items, lambda item: item[0], device=device,
                              batch_size=batch_size):
        for (_, target), out in batch:
            dets[int(target["image_id"])] = output_to_xywh(out)
        if should_stop is not None and should_stop():
            raise EvaluationStopped
    return dets


def detections_to_json(dets: dict[int, tuple[np.ndarray, np.ndarray]], records) -> list[dict]:
    """The standard results format (with ``file_name``), one entry per box."""
    names = {int(r.id): r.file_name for r in records}
    out = []
    for image_id in sorted(dets):
        # unrounded, so that evaluating this file reproduces val_eval.json exactly
        out.extend(results_entries(image_id, names.get(image_id, ""), *dets[image_id]))
    return out


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
    from pedcrowd.eval import evaluate

    configure_postprocess(unwrap(model), postprocess)
    dets = predict(unwrap(model), dataset, device, batch_size=batch_size, should_stop=should_stop)
    report = evaluate(dataset.records, dets, protocol=protocol)
    return dets, report


def _report_mrs(report) -> dict[str, float | None]:
    out = {}
    for name, res in report.results.items():
        mr = getattr(res, "mr", None)
        out[name] = None if mr is None or not math.isfinite(mr) else float(mr)
    return out


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(to_jsonable(data)))


def _ensure_synth_data(root: Path, synth_cfg, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
    """Generate the synthetic data set on first use, else reuse it."""
    summary = reporter.synthesize(root, synth_cfg, should_stop)
    if not summary.reused:
        reporter.info(
            f"generated {sum(summary.images.values())} synthetic images in {root} "
            f"({summary.seconds:.0f} s, reused by later runs)"
        )


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
    cfg = _head_for_box_loss(cfg)
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
        with StopOnSignal() as stop:
            return _run(cfg, run_dir, resume, device, info, rep, stop)
    finally:
        if lock is not None:
            lock.release()
        if owns_group:
            ddp.cleanup(info)


def _head_for_box_loss(cfg: Config) -> Config:
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


def _same_on_all_ranks(run_dir: Path, info: ddp.DistInfo) -> Path:
    """Rank 0's run directory (it may have moved on to ``NAME-2``), on every rank."""
    if not info.enabled:
        return run_dir
    box = [str(run_dir)]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])


def _any_rank(info: ddp.DistInfo, device: torch.device) -> Callable[[bool], bool]:
    """``flag`` -> True when it is True on any rank (a collective under DDP; once per epoch,
    the training steps reduce their flags with :func:`_max_over_ranks`)."""
    if not info.enabled:
        return lambda flag: flag
    reduce = _max_over_ranks(info)

    def any_rank(flag: bool) -> bool:
        return bool(reduce(torch.full((1,), float(flag), device=device)).item() > 0)

    return any_rank


def _max_over_ranks(info: ddp.DistInfo) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """In-place elementwise max of a flag tensor over the ranks: one all-reduce (None: no
    process group, a plain run)."""
    if not torch.distributed.is_initialized():
        return None

    def reduce(flags: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        return flags

    return reduce


def _run(
    cfg: Config, run_dir: Path, resume: bool, device: torch.device, info: ddp.DistInfo,
    rep: Reporter, stop: StopOnSignal,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The body of :func:`fit`, inside the run lock and the signal handlers."""
    from pedcrowd.data.config import build_dataset
    from pedcrowd.data.synth import SynthInterrupted, set_lock
    from pedcrowd.model import build_model

    tcfg, main = cfg.train, info.is_main
    log: MetricsLog | None = None
    held = contextlib.ExitStack()
    try:  # on any failure too: flush the metrics log, close the reporter, release the data set
        if cfg.synth is not None:
            if main:
                signalled = lambda: stop.signum is not None  # noqa: E731
                try:
                    # shared while the run reads it: another run never regenerates it underneath
                    held.enter_context(set_lock(Path(cfg.data.root), signalled))
                    _ensure_synth_data(Path(cfg.data.root), cfg.synth, rep, signalled)
                except SynthInterrupted:
                    raise Interrupted(stop.signum or signal.SIGTERM, run_dir, None, 0) from None
            ddp.barrier(info)

        if tcfg.threads is not None:  # for this process from here on (also after fit returns)
            torch.set_num_threads(tcfg.threads)
        seed_everything(tcfg.seed)
        train_set = build_dataset(cfg.data, "train", train=True)
        val_set = build_dataset(cfg.data, "val", train=False) if main else None
        if len(train_set) < tcfg.batch_size * info.world_size:
            raise PedcrowdError(
                f"data: {len(train_set)} training images, fewer than one batch "
                f"({tcfg.batch_size} x {info.world_size} processes)"
            )
        model = build_model(cfg.model)
        configure_postprocess(model, cfg.postprocess)  # fails now, not at the first evaluation
        _install_crowd_losses(model, cfg)
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
        if tcfg.amp and precision is None:
            rep.warning(f"train.amp: this {device.type.upper()} has no bfloat16 instructions "
                        "(AVX512-BF16 or AMX); training in float32")
        # loss scaling for float16 only (bfloat16 has float32's exponent range)
        scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
        cfg_dict = config_to_dict(cfg)

        start_epoch, iteration, best_mr, history, state = 0, 0, math.inf, [], EpochState()
        if resume:
            ckpt, ckpt_path, torn = rundir.load_resume_checkpoint(run_dir, map_location=device)
            if torn:
                rep.warning(torn)
            saved = config_to_dict(config_from_dict(ckpt.get("config", {}), source=str(ckpt_path)))
            for warning in rundir.check_resume_config(saved, cfg_dict, ckpt["epoch"], ckpt_path):
                rep.warning(f"resuming {ckpt_path}: {warning}")
            load_matching_state(unwrap(model), ckpt["model"], ckpt_path)
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, iteration = ckpt["epoch"], ckpt["iteration"]
            state = EpochState(**ckpt.get("epoch_state", {}))
            best_mr = ckpt.get("best_mr", math.inf)
            history = ckpt.get("history", [])
            rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
            if info.rank < len(rngs):  # a resume on more processes starts the new ranks fresh
                set_rng_state(rngs[info.rank])

        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(run_dir)  # of writes killed mid-way (we hold the lock)
            if resume:
                rundir.truncate_metrics(run_dir, iteration, eval_done=state.steps == 0)
            save_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir, enabled=main)
        protocol = dataset_format(cfg.data.format).protocol
        any_rank = _any_rank(info, device)
        t0 = time.perf_counter()

        def write_last(epoch: int, best: bool = False) -> None:
            """``last.pt`` (the one before it kept as ``prev.pt``); a collective under DDP."""
            rngs = _gather_rng(info)  # every rank's RNG state, so that a DDP run resumes exactly
            if main:
                save_checkpoint(
                    run_dir / rundir.LAST, keep_previous_as=rundir.PREV,
                    model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                    epoch=epoch, iteration=iteration, epoch_state=dataclasses.asdict(state),
                    best_mr=best_mr, history=history, rng=rngs, config=cfg_dict,
                )
                if best:
                    copy_file_atomic(run_dir / rundir.LAST, run_dir / "best.pt")
                write_run_curves(run_dir)  # curves.png follows the run, checkpoint by checkpoint
            ddp.barrier(info)

        def should_stop() -> bool:  # this process's flag; the step reduces it with the others
            return stop.signum is not None

        def interrupted() -> Interrupted:
            return Interrupted(stop.signum or signal.SIGTERM, run_dir, run_dir / rundir.LAST, iteration)

        rep.start(run_dir, cfg, iters_per_epoch * tcfg.epochs, iteration, start_epoch)
        for epoch in range(start_epoch, tcfg.epochs):
            rep.epoch(epoch + 1, tcfg.epochs)
            loader = make_loader(
                train_set, tcfg.batch_size, cfg.data.num_workers, tcfg.seed, epoch, info,
                skip_batches=state.steps,
            )

            def on_step(record: dict[str, Any], epoch: int = epoch, state: EpochState = state) -> None:
                nonlocal iteration
                rep.step(record)
                if record["log"]:
                    log.write({"kind": "train", **{k: v for k, v in record.items() if k != "log"}})
                every = tcfg.checkpoint_every
                if every > 0 and record["iter"] % every == 0 and state.steps < iters_per_epoch:
                    iteration = record["iter"]
                    write_last(epoch)  # mid-epoch: state.steps batches of this epoch are done

            iteration, means = train_one_epoch(
                model, optimizer, scheduler, scaler, loader, device, epoch,
                iteration=iteration, amp=tcfg.amp, grad_clip=cfg.optim.grad_clip,
                log_every=tcfg.log_every, on_step=on_step, world_size=info.world_size,
                state=state, max_nonfinite=tcfg.max_nonfinite_steps, should_stop=should_stop,
                reduce_flags=_max_over_ranks(info), warn=rep.warning,
            )
            if any_rank(stop.signum is not None):  # a signal: checkpoint where we are (even at
                # the epoch's last step); one collective per epoch
                write_last(epoch)
                raise interrupted()
            means = ddp.all_mean(means, info, device)
            entry: dict[str, Any] = {"epoch": epoch + 1, "iter": iteration, "train": means,
                                     "finite_steps": state.finite_steps}
            last = epoch + 1 == tcfg.epochs
            # before anything is written: a useless model never replaces the last checkpoint
            _check_trained(unwrap(model), [*history, entry], last, epoch + 1)
            is_best = False
            if main and (last or (tcfg.eval_every > 0 and (epoch + 1) % tcfg.eval_every == 0)):
                rep.evaluating()
                try:
                    dets, report = evaluate_model(
                        model, val_set, device, protocol=protocol, postprocess=cfg.postprocess,
                        # a signal ends the evaluation at the next batch (a scheduler's grace period
                        # is shorter than an evaluation); under DDP the other ranks wait in a
                        # collective, so there it finishes first
                        should_stop=None if info.enabled else (lambda: stop.signum is not None),
                    )
                except EvaluationStopped:
                    # every batch of the epoch is done: last.pt says so (a mid-epoch checkpoint at
                    # its end), and the resumed run evaluates this epoch again, the final one too
                    write_last(epoch)
                    raise interrupted() from None
                mrs = _report_mrs(report)
                entry["mr"] = mrs
                log.write({"kind": "eval", "epoch": epoch + 1, "iter": iteration, "mr": mrs})
                _write_eval_files(run_dir, epoch + 1, dets, report, val_set.records)
                primary = mrs.get(PRIMARY_SETUP)
                if primary is not None and primary < best_mr:
                    best_mr, is_best = primary, True
                rep.evaluated(epoch + 1, mrs)
            history.append(entry)
            state = EpochState(nonfinite_run=state.nonfinite_run)  # the next epoch starts empty
            write_last(epoch + 1, best=is_best)
            if any_rank(stop.signum is not None):  # a signal during the evaluation or the write
                if not last:
                    raise interrupted()
                rep.warning(f"{signal.Signals(stop.signum or signal.SIGTERM).name} arrived after the "
                            "run's last step and evaluation: the run is complete")

        summary = {
            "run_dir": str(run_dir), "epochs": tcfg.epochs, "iterations": iteration,
            "wall_s": time.perf_counter() - t0, "best_mr": None if math.isinf(best_mr) else best_mr,
            "final_mr": next((h["mr"] for h in reversed(history) if "mr" in h), None),
            "history": history, "weights_digest": weights_digest(model),
            "rank": info.rank, "world_size": info.world_size,
        }
        return unwrap(model), summary
    except Diverged as e:
        raise Diverged(f"{e}; the last checkpoint ({run_dir / rundir.LAST}) is left as it was") from None
    finally:
        rep.close()
        if log is not None:
            log.close()
        held.close()


def _check_trained(model: torch.nn.Module, history: list[dict[str, Any]], last: bool, epoch: int) -> None:
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


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
          reporter: Reporter | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir``; returns the summary (final MR^-2 per setup, ...)."""
    return fit(cfg, out_dir, resume=resume, reporter=reporter)[1]


def _gather_rng(info: ddp.DistInfo):
    state = rng_state()
    if not info.enabled:
        return state
    states = [None] * info.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _write_eval_files(run_dir: Path, epoch: int, dets, report, records) -> None:
    from pedcrowd.eval import report_to_json

    det_json = detections_to_json(dets, records)
    eval_json = report_to_json(report)
    (run_dir / "eval").mkdir(exist_ok=True)
    _write_json(run_dir / "val_dets.json", det_json)
    _write_json(run_dir / "val_eval.json", eval_json)
    _write_json(run_dir / "eval" / f"epoch{epoch:03d}_dets.json", det_json)
    _write_json(run_dir / "eval" / f"epoch{epoch:03d}_eval.json", eval_json)


def _install_crowd_losses(model: torch.nn.Module, cfg: Config) -> None:
    """Give the RPN and the RoI head the training criteria of ``cfg.loss`` (and the
    prior bias of a focal / QFL classifier)."""
    from pedcrowd.losses.focal import init_classifier_priors
    from pedcrowd.model.detector import install_criteria

    install_criteria(model, cfg.model, cfg.loss)
    init_classifier_priors(model, cfg.model.weights, cfg.loss)
