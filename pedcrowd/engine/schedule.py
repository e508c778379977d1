"""Optimiser and per-iteration learning-rate schedule.

The schedule is a ``LambdaLR`` stepped once per iteration: a linear warm-up
from ``warmup_factor * lr`` to ``lr`` over ``warmup_iters`` iterations, times
either a step decay (``gamma`` after each epoch listed in ``steps``, the
papers' "12 epochs, steps at 8 and 11") or a cosine decay to
``min_lr_factor * lr`` at the last iteration.
"""

from __future__ import annotations

import math

import torch

from pedcrowd.engine.config import OptimConfig, ScheduleConfig
from pedcrowd.errors import PedcrowdError


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the parameters that require grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise PedcrowdError(f"optim.name: unknown optimiser {cfg.name!r} (sgd, adamw)")


def lr_factor(iteration: int, cfg: ScheduleConfig, iters_per_epoch: int, total_iters: int) -> float:
    """Multiplier of the base lr at ``iteration`` (0-based)."""
    if cfg.warmup_iters > 0 and iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.name == "step":
        passed = sum(1 for s in cfg.steps if iteration >= s * iters_per_epoch)
        decay = cfg.gamma**passed
    elif cfg.name == "cosine":
        progress = min(iteration / max(total_iters, 1), 1.0)
        decay = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        raise PedcrowdError(f"schedule.name: unknown schedule {cfg.name!r} (step, cosine)")
    return warm * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, iters_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` (call ``.step()`` after every optimiser step)."""
    total = iters_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg, iters_per_epoch, total)
    )
