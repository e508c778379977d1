"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint is one ``torch.save`` dict: the model (unwrapped from DDP), the
optimiser, scheduler and AMP scaler states, the epoch and iteration reached,
the best MR^-2 so far, the RNG states of torch (CPU and CUDA), numpy and
Python, and the resolved config as a plain dict (so that a checkpoint alone is
enough for inference). Writing goes to a temporary file in the same folder and
then ``os.replace``, so a run killed mid-write never leaves a torn ``last.pt``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pedcrowd.errors import PedcrowdError


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU, CUDA), numpy and Python."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - user code may use the legacy global RNG
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Atomically write ``state`` (tensors, state dicts, plain values) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict written by :func:`save_checkpoint`.

    The file is ours (it stores RNG states and numpy arrays), so it is loaded
    with ``weights_only=False``: do not load checkpoints from untrusted sources.
    """
    path = Path(path)
    if not path.is_file():
        raise PedcrowdError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a torn or foreign file: say which
        raise PedcrowdError(f"{path}: not a readable checkpoint ({e})") from None


def resolve_checkpoint(path_or_run_dir: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (else ``last.pt``)."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise PedcrowdError(f"{path}: run directory has neither best.pt nor last.pt")
    if not path.is_file():
        raise PedcrowdError(f"{path}: no such checkpoint or run directory")
    return path


def load_for_inference(
    path_or_run_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any]:
    """The trained model in eval mode on ``device`` and its :class:`Config`.

    Args:
        path_or_run_dir: a ``.pt`` checkpoint, or a run directory (its ``best.pt``,
            else ``last.pt``). The config comes from the checkpoint itself.
    """
    from pedcrowd.engine.config import config_from_dict
    from pedcrowd.model import build_model

    path = resolve_checkpoint(path_or_run_dir)
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "config" not in ckpt:
        raise PedcrowdError(f"{path}: not a pedcrowd training checkpoint (no model/config)")
    cfg = config_from_dict(ckpt["config"], source=str(path))
    # The trained weights replace whatever build_model initialises, so never
    # load pretrained backbone weights here (they may not exist on this machine).
    model_cfg = cfg.model
    if hasattr(model_cfg, "weights"):
        import dataclasses

        model_cfg = dataclasses.replace(model_cfg, weights="none")
    model = build_model(model_cfg)
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    return model, cfg
