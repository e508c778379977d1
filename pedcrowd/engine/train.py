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
equal 1 epoch + ``resume`` 1 epoch bit for bit. The data order comes from
``DistributedSampler(seed, epoch)``, augmentations from ``(seed, epoch,
index)``, DataLoader workers from a generator seeded by ``(seed, epoch)``, and
the model's own randomness (the RPN and RoI samplers) from the global torch
RNG, whose state every checkpoint stores with numpy's and Python's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader, DistributedSampler

from pedcrowd.engine import distributed as ddp
from pedcrowd.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from pedcrowd.engine.config import Config, config_to_dict, save_config
from pedcrowd.engine.inference import configure_postprocess, run_detector
from pedcrowd.engine.metrics import MetricsLog, to_jsonable
from pedcrowd.engine.schedule import build_optimizer, build_scheduler
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats._io import write_text_atomic
from pedcrowd.formats.detections import output_to_xywh, results_entries
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


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def make_loader(
    dataset, batch_size: int, num_workers: int, seed: int, epoch: int,
    info: ddp.DistInfo, shuffle: bool = True,
) -> DataLoader:
    """The epoch's DataLoader; its order and worker seeds depend only on (seed, epoch)."""
    if hasattr(dataset, "set_epoch"):  # augmentations are seeded by (seed, epoch, index)
        dataset.set_epoch(epoch)
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=dataset.collate_fn, generator=generator,
        drop_last=True, pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    loader: Iterable,
    device: torch.device,
    epoch: int,
    *,
    iteration: int = 0,
    amp: bool = False,
    grad_clip: float | None = None,
    log_every: int = 20,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    world_size: int = 1,
) -> tuple[int, dict[str, float]]:
    """One pass over ``loader``; returns the next global iteration and mean losses.

    Args:
        loader: yields ``(images, targets)``: lists of [3, H, W] tensors and
            torchvision target dicts (``boxes`` [K, 4] xyxy, ``labels`` [K],
            ``ignore_boxes`` [M, 4]).
        iteration: global iteration at the start of the epoch (for the logs).
        on_step: called after every step with the step's record (losses, lr,
            images/s, data wait); the record is logged when ``log`` is True.
    """
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    use_amp = amp and device.type == "cuda"
    end = time.perf_counter()
    for images, targets in loader:
        data_wait = time.perf_counter() - end
        images, targets = _to_device(list(images), list(targets), device)
        with torch.autocast(device.type, enabled=use_amp):
            loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        total = sum(values.values())
        if not math.isfinite(total):
            raise PedcrowdError(
                f"training diverged at epoch {epoch + 1}, iteration {iteration}: loss is {total} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in values.items())}); lower optim.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None and grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_time = time.perf_counter() - end
        end = time.perf_counter()

        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        iteration += 1
        if on_step is not None:
            record = {
                "epoch": epoch + 1, "iter": iteration, "lr": lr, "loss": total, **values,
                "images_per_s": len(images) * world_size / max(step_time, 1e-9),
                "step_s": step_time, "data_wait_s": data_wait,
                "log": iteration % log_every == 0,
            }
            on_step(record)
    means = {k: v / max(steps, 1) for k, v in sums.items()}
    return iteration, means


def predict(
    model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 4,
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
):
    """Detect on ``dataset`` (the val split) and score with the pedcrowd evaluator.

    ``postprocess`` (the config's section; None keeps the model's) is set on the
    model first.

    Returns:
        (detections, report): image id -> (boxes [D, 4] xywh, scores [D]), and the
        evaluator's report (``report.results[setup].mr``).
    """
    from pedcrowd.eval import evaluate

    configure_postprocess(unwrap(model), postprocess)
    dets = predict(unwrap(model), dataset, device, batch_size=batch_size)
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


def _ensure_synth_data(root: Path, synth_cfg, console: Console) -> None:
    """Generate the synthetic data set on first use (with a progress bar), else reuse it."""
    from pedcrowd.data.synth import ensure_synth

    with Progress(
        TextColumn(f"generating synthetic crowds in {root}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("synth", total=synth_cfg.train_images + synth_cfg.val_images)
        summary = ensure_synth(
            root, synth_cfg, progress=lambda done, total: bar.update(task, completed=done)
        )
    if not summary.reused:
        console.log(
            f"generated {sum(summary.images.values())} synthetic images in {root} "
            f"({summary.seconds:.0f} s, reused by later runs)"
        )


def fit(
    cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
    console: Console | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the model described by ``cfg``; returns the trained model and the summary.

    Args:
        out_dir: the run directory (default ``cfg.train.out_dir``).
        resume: continue from ``out_dir/last.pt`` (model, optimiser, scheduler,
            scaler, epoch, iteration, best MR and every RNG state).
    """
    from pedcrowd.data.config import build_dataset
    from pedcrowd.model import build_model

    console = console or Console(stderr=True)
    tcfg = cfg.train
    run_dir = Path(out_dir if out_dir is not None else tcfg.out_dir)
    # the saved config names the directory it was really written to
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(tcfg, out_dir=str(run_dir)))
    device = ddp.resolve_device(tcfg.device, ddp.local_rank_from_env())
    if resume and not (run_dir / "last.pt").is_file():
        raise PedcrowdError(f"{run_dir}: --resume given but there is no last.pt to resume from")
    owns_group = not torch.distributed.is_initialized()
    info = ddp.init_distributed(device)
    owns_group = owns_group and info.enabled  # destroy at the end what this call created
    log: MetricsLog | None = None
    try:  # on any failure too: flush the metrics log, destroy the group this call created
        main = info.is_main

        if cfg.synth is not None:
            if main:
                _ensure_synth_data(Path(cfg.data.root), cfg.synth, console)
            ddp.barrier(info)

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
            )
        iters_per_epoch = len(train_set) // (tcfg.batch_size * info.world_size)
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.schedule, iters_per_epoch, tcfg.epochs)
        scaler = torch.amp.GradScaler(device.type, enabled=tcfg.amp and device.type == "cuda")

        start_epoch, iteration, best_mr, history = 0, 0, math.inf, []
        if resume:
            ckpt = load_checkpoint(run_dir / "last.pt", map_location=device)
            unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, iteration = ckpt["epoch"], ckpt["iteration"]
            best_mr = ckpt.get("best_mr", math.inf)
            history = ckpt.get("history", [])
            rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
            if info.rank < len(rngs):  # a resume on more processes starts the new ranks fresh
                set_rng_state(rngs[info.rank])

        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        log = MetricsLog(run_dir, enabled=main)
        cfg_dict = config_to_dict(cfg)
        protocol = "caltech" if cfg.data.format == "caltech" else "citypersons"
        t0 = time.perf_counter()

        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[losses]}"),
            console=console, disable=not main, refresh_per_second=4,
        )
        with progress:
            task = progress.add_task(
                "train", total=iters_per_epoch * tcfg.epochs, completed=iteration,
                epoch=f"{start_epoch + 1}/{tcfg.epochs}", speed="", losses="",
            )

            def on_step(record: dict[str, Any]) -> None:
                losses = " ".join(
                    f"{k.removeprefix('loss_')}={v:.3f}" for k, v in record.items()
                    if k.startswith("loss") or k.startswith("crowd")
                )
                progress.update(
                    task, advance=1, speed=f"{record['images_per_s']:.1f} img/s",
                    losses=f"lr={record['lr']:.2e} {losses}",
                )
                if record.pop("log"):
                    log.write({"kind": "train", **record})
                    if main and not console.is_terminal:  # no live bar in a log file: one line
                        console.log(
                            f"epoch {record['epoch']} iter {record['iter']}/{progress.tasks[0].total} "
                            f"{record['images_per_s']:.1f} img/s data wait {record['data_wait_s']:.3f}s "
                            f"lr={record['lr']:.2e} {losses}"
                        )

            for epoch in range(start_epoch, tcfg.epochs):
                progress.update(task, epoch=f"{epoch + 1}/{tcfg.epochs}")
                loader = make_loader(
                    train_set, tcfg.batch_size, cfg.data.num_workers, tcfg.seed, epoch, info
                )
                iteration, means = train_one_epoch(
                    model, optimizer, scheduler, scaler, loader, device, epoch,
                    iteration=iteration, amp=tcfg.amp, grad_clip=cfg.optim.grad_clip,
                    log_every=tcfg.log_every, on_step=on_step, world_size=info.world_size,
                )
                means = ddp.all_mean(means, info, device)
                entry: dict[str, Any] = {"epoch": epoch + 1, "iter": iteration, "train": means}
                last = epoch + 1 == tcfg.epochs
                is_best = False
                if main and (last or (tcfg.eval_every > 0 and (epoch + 1) % tcfg.eval_every == 0)):
                    progress.update(task, losses="evaluating on val ...")
                    dets, report = evaluate_model(
                        model, val_set, device, protocol=protocol, postprocess=cfg.postprocess
                    )
                    mrs = _report_mrs(report)
                    entry["mr"] = mrs
                    log.write({"kind": "eval", "epoch": epoch + 1, "iter": iteration, "mr": mrs})
                    _write_eval_files(run_dir, epoch + 1, dets, report, val_set.records)
                    primary = mrs.get(PRIMARY_SETUP)
                    if primary is not None and primary < best_mr:
                        best_mr, is_best = primary, True
                    console.log(
                        f"epoch {epoch + 1}: MR^-2 " + ", ".join(
                            f"{k} {100 * v:.2f}%" if v is not None else f"{k} n/a"
                            for k, v in mrs.items()
                        )
                    )
                history.append(entry)
                # Every rank's RNG state, so that a DDP run resumes exactly too.
                rngs = _gather_rng(info)
                if main:
                    save_checkpoint(
                        run_dir / "last.pt", model=unwrap(model).state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        scaler=scaler.state_dict(), epoch=epoch + 1, iteration=iteration,
                        best_mr=best_mr, history=history, rng=rngs, config=cfg_dict,
                    )
                    if is_best:
                        shutil.copyfile(run_dir / "last.pt", run_dir / ".best.pt.tmp")
                        (run_dir / ".best.pt.tmp").replace(run_dir / "best.pt")
                ddp.barrier(info)

        summary = {
            "run_dir": str(run_dir), "epochs": tcfg.epochs, "iterations": iteration,
            "wall_s": time.perf_counter() - t0, "best_mr": None if math.isinf(best_mr) else best_mr,
            "final_mr": next((h["mr"] for h in reversed(history) if "mr" in h), None),
            "history": history, "weights_digest": weights_digest(model),
            "rank": info.rank, "world_size": info.world_size,
        }
        return unwrap(model), summary
    finally:
        if log is not None:
            log.close()
        if owns_group:
            ddp.cleanup(info)


def train(cfg: Config, out_dir: str | Path | None = None, resume: bool = False,
          console: Console | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``out_dir``; returns the summary (final MR^-2 per setup, ...)."""
    return fit(cfg, out_dir, resume=resume, console=console)[1]


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
    """Give the RPN and the RoI head the training criteria of ``cfg.loss``."""
    from pedcrowd.model.detector import install_criteria

    install_criteria(model, cfg.model, cfg.loss)
