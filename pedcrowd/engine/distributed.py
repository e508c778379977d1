"""DDP under ``torchrun``: process group from the environment, rank helpers.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; a plain ``python``/``pedcrowd`` run has none of them and is a
world of one, with no process group. Backend: nccl on CUDA, gloo on the CPU.
Rank 0 alone writes files and evaluates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pedcrowd.engine.device import resolve_device  # noqa: F401  (ddp.resolve_device in engine/train.py)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (if any).

    Idempotent: a process group that already exists is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend_for(device)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def backend_for(device: torch.device) -> str:
    """The process group backend for ``device``: NCCL on CUDA, gloo on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_rank_from_env() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Scalar logs averaged over ranks (for the progress bar and the metrics log)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
