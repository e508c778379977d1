"""One pass over the training data: the step, skipped non-finite steps, the epoch's loader.

:func:`training_steps` runs the steps of one pass and yields a :class:`Step` after
each (what happened: the metrics record, a warning, whether to stop), so that the
caller's loop logs and checkpoints in plain sight (:func:`pedcrowd.engine.train.fit`);
:func:`train_one_epoch` runs a whole pass and returns an :class:`EpochResult` (the
benchmarks and tests). :func:`make_loader` builds an epoch's DataLoader whose order
depends only on ``(seed, epoch)`` and can start part-way through the epoch (a
mid-epoch resume); :class:`EpochState` is what a mid-epoch checkpoint stores of the
epoch so far.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from pedcrowd.engine import distributed as ddp
from pedcrowd.engine.signals import StopOnSignal
from pedcrowd.errors import PedcrowdError


def _to_device(images: list[torch.Tensor], targets: list[dict], device: torch.device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _quiet_worker(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process (which checkpoints)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset, batch_size: int, num_workers: int, seed: int, epoch: int,
    info: ddp.DistInfo, shuffle: bool = True, skip_batches: int = 0,
) -> DataLoader:
    """The epoch's DataLoader; its order and worker seeds depend only on (seed, epoch).

    ``skip_batches``: leave out the epoch's first batches (a mid-epoch resume);
    the remaining ones are exactly those an uninterrupted epoch would still yield.
    """
    if hasattr(dataset, "set_epoch"):  # augmentations are seeded by (seed, epoch, index)
        dataset.set_epoch(epoch)
    sampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    order: Any = sampler
    if skip_batches > 0:
        order = list(sampler)[skip_batches * batch_size:]
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=num_workers,
        collate_fn=dataset.collate_fn, generator=generator,
        drop_last=True, pin_memory=torch.cuda.is_available(),
        persistent_workers=False, worker_init_fn=_quiet_worker if num_workers > 0 else None,
    )


class Diverged(PedcrowdError):
    """Too many consecutive steps with a non-finite loss."""


@dataclasses.dataclass
class EpochState:
    """What one epoch has accumulated so far (stored in mid-epoch checkpoints).

    ``sums``: loss term -> sum over the finite steps; ``steps``: batches done in
    this epoch; ``finite_steps``: how many of them had a finite loss;
    ``nonfinite_run``: non-finite steps in a row up to now.
    """

    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    steps: int = 0
    finite_steps: int = 0
    nonfinite_run: int = 0

    def means(self) -> dict[str, float]:
        return {k: v / max(self.finite_steps, 1) for k, v in self.sums.items()}


def _nonfinite_terms(values: dict[str, float]) -> str:
    bad = [f"{k}={v}" for k, v in values.items() if not math.isfinite(v)]
    return ", ".join(bad) or "the sum of finite terms overflows"


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` means on ``device``, None for float32.

    CUDA: float16, with a :class:`torch.amp.GradScaler` (every CUDA GPU runs it).
    CPU: bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16 or
    AMX-BF16; no loss scaling needed, bfloat16 has float32's range); elsewhere
    None: torch would emulate bfloat16, slower than float32, so the run trains in
    float32 (:func:`pedcrowd.engine.train.fit` says so in a warning).
    """
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_bf16():
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def max_over_ranks(flags: torch.Tensor) -> torch.Tensor:
    """In place, the elementwise max of a flag tensor over the ranks: one all-reduce
    (unchanged without a process group, a plain run)."""
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


@dataclasses.dataclass
class Step:
    """What one training step did.

    ``record``: the metrics line (epoch, iter, lr, loss and every term, images/s,
    step and data-wait seconds, ``log``: whether it goes to ``metrics.jsonl``,
    ``skipped``: a non-finite step); ``warning``: the message of a skipped step;
    ``stop``: a stop was asked for on some rank, the pass ends after this step.
    """

    record: dict[str, Any]
    warning: str | None = None
    stop: bool = False


@dataclasses.dataclass
class EpochResult:
    """What :func:`train_one_epoch` did: the next global iteration, the mean loss terms
    over the finite steps, every step's record and warning, and whether it stopped early."""

    iteration: int
    means: dict[str, float]
    records: list[dict[str, Any]]
    warnings: list[str]
    stopped: bool


def train_one_epoch(model, optimizer, scheduler, scaler, loader, device, epoch, **options) -> EpochResult:
    """One whole pass of :func:`training_steps` (same arguments); returns what happened."""
    state = options["state"] = options.get("state") or EpochState()
    steps = list(training_steps(model, optimizer, scheduler, scaler, loader, device, epoch, **options))
    return EpochResult(
        iteration=options.get("iteration", 0) + len(steps),
        means=state.means(),
        records=[s.record for s in steps],
        warnings=[s.warning for s in steps if s.warning is not None],
        stopped=bool(steps) and steps[-1].stop,
    )


def training_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
    loader: Iterable, device: torch.device, epoch: int, *, iteration: int = 0, amp: bool = False,
    grad_clip: float | None = None, log_every: int = 20, world_size: int = 1,
    state: EpochState | None = None, max_nonfinite: int = 5, signals: StopOnSignal | None = None,
) -> Iterator[Step]:
    """The steps of one pass over ``loader``, each yielded as a :class:`Step` once done.

    One host read per step: the loss terms, the gradient norm (when clipped) and
    the step's flags (non-finite, stop) go to the host together, as one tensor,
    after the backward pass; nothing else in the loop waits for the device (a
    float16 :class:`GradScaler`'s ``step`` reads its own inf flag once more).
    A step with a non-finite loss has run its backward pass too; its gradients
    are dropped. Under DDP the flags are reduced over the ranks with the same
    read (:func:`max_over_ranks`), so that every rank skips the same steps and
    stops at the same one.

    Args:
        loader: yields ``(images, targets)``: lists of [3, H, W] tensors and
            torchvision target dicts (``boxes`` [K, 4] xyxy, ``labels`` [K],
            ``ignore_boxes`` [M, 4]).
        iteration: global iteration at the start of the epoch (for the logs).
        amp: autocast in :func:`amp_dtype`'s precision (a no-op where that is None).
        state: the epoch's running sums (continued from a mid-epoch checkpoint;
            updated in place).
        max_nonfinite: a step with a non-finite loss (or gradient norm) is
            skipped with a warning (no optimiser update; the lr schedule still
            advances); this many in a row raise :class:`Diverged`.
        signals: this process's "stop now" (a signal caught), read every step;
            a stop on any rank ends the pass after the step.
    """
    model.train()
    state = state if state is not None else EpochState()
    dtype = amp_dtype(device) if amp else None
    end = time.perf_counter()
    for images, targets in loader:
        data_wait = time.perf_counter() - end
        images, targets = _to_device(list(images), list(targets), device)
        values, total, bad, stop, unscaled = _forward_backward(
            model, optimizer, scaler, images, targets, device, dtype, grad_clip, signals
        )
        warning = None  # a skipped step's; Diverged after max_nonfinite in a row
        if bad:
            warning = _skip_step(optimizer, scaler, unscaled, state, values, epoch, iteration, max_nonfinite)
        else:
            _apply_step(optimizer, scaler, state, values)
        lr = optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # torch warns when a skipped first step precedes this
            warnings.simplefilter("ignore", UserWarning)
            scheduler.step()
        # no device synchronisation: the host read above waited for this step's forward and
        # backward; its optimiser step is counted in the next step's time (steady state)
        step_time = time.perf_counter() - end
        end = time.perf_counter()
        state.steps += 1
        iteration += 1
        record = {
            "epoch": epoch + 1, "iter": iteration, "lr": lr, "loss": total, **values,
            "images_per_s": len(images) * world_size / max(step_time, 1e-9),
            "step_s": step_time, "data_wait_s": data_wait,
            "log": iteration % log_every == 0, "skipped": bad,
        }
        yield Step(record, warning, stop)
        if stop:
            break


def _forward_backward(model, optimizer, scaler, images, targets, device, dtype, grad_clip,
                      signals: StopOnSignal | None):
    """Forward, backward, clipping and the step's one host read.

    Returns:
        (loss term -> value, with ``grad_norm`` when the step is bad and the norm is not
        finite; the sum of the terms; bad: a non-finite loss or gradient norm on some
        rank; stop: a stop asked for on some rank; unscaled: the scaler has unscaled
        the gradients).
    """
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss_dict = model(images, targets)
    names = list(loss_dict)
    terms = torch.stack([v.detach().float() for v in loss_dict.values()])  # [T]
    loss = sum(loss_dict.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    checked = [terms]
    unscaled = False
    if grad_clip is not None and grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        unscaled = True
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if not scaler.is_enabled():  # (a GradScaler skips inf gradients itself)
            checked.append(norm.detach().float().reshape(1))
    flags = torch.stack([
        (~torch.isfinite(torch.cat(checked)).all()).float(),
        # read after the backward pass: a signal during this step stops after it
        torch.full((), float(signals is not None and signals.signum is not None), device=terms.device),
    ])  # [2] non-finite, stop
    host = torch.cat([*checked, max_over_ranks(flags)]).tolist()  # the step's one host read
    values = dict(zip(names, host[: len(names)], strict=True))
    total = sum(values.values())
    bad, stop = host[-2] > 0 or not math.isfinite(total), host[-1] > 0
    if bad and len(checked) > 1 and not math.isfinite(host[len(names)]):
        values = {**values, "grad_norm": host[len(names)]}
    return values, total, bad, stop, unscaled


def _skip_step(optimizer, scaler, unscaled: bool, state: EpochState, values: dict[str, float],
               epoch: int, iteration: int, max_nonfinite: int) -> str:
    """Drop a non-finite step's gradients; its warning, or :class:`Diverged` after
    ``max_nonfinite`` in a row."""
    if scaler.is_enabled():  # an update() ends the step for the scaler (and lowers the scale);
        if not unscaled:  # unscale_ before the gradients are cleared, or it records no inf
            scaler.unscale_(optimizer)  # check and update() raises
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    state.nonfinite_run += 1
    where = f"epoch {epoch + 1}, iteration {iteration + 1}"
    if state.nonfinite_run >= max_nonfinite:
        raise Diverged(
            f"training diverged at {where}: {state.nonfinite_run} steps in a row with a "
            f"non-finite loss ({_nonfinite_terms(values)}); lower optim.lr or check the data"
        )
    return (f"{where}: non-finite loss ({_nonfinite_terms(values)}); step skipped "
            f"({state.nonfinite_run} in a row, stopping at {max_nonfinite})")


def _apply_step(optimizer, scaler, state: EpochState, values: dict[str, float]) -> None:
    """The optimiser (and scaler) step of a finite step; its terms join the epoch's sums."""
    scaler.step(optimizer)
    scaler.update()
    state.nonfinite_run = 0
    state.finite_steps += 1
    for k, v in values.items():
        state.sums[k] = state.sums.get(k, 0.0) + v
