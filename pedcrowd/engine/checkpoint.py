"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint is one ``torch.save`` dict: the model (unwrapped from DDP), the
optimiser, scheduler and AMP scaler states, the epoch and iteration reached,
the best MR^-2 so far, the RNG states of torch (CPU and CUDA), numpy and
Python, and the resolved config as a plain dict (so that a checkpoint alone is
enough for inference). Writing goes to a temporary file in the same folder and
then ``os.replace``, so a run killed mid-write never leaves a torn ``last.pt``.

It holds only tensors, plain containers, numbers and strings (the numpy RNG
key as an int64 tensor, Python's state as a tuple of ints), so it loads with
``torch.load(..., weights_only=True)``: :func:`load_checkpoint` refuses any
file holding other objects instead of running them (see :mod:`pedcrowd.safeload`);
:func:`convert_trusted` rewrites a trusted older one into this form.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pedcrowd.engine.config import config_from_dict
from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import temporary_beside
from pedcrowd.model import build_model
from pedcrowd.safeload import first_line, load_tensor_file, to_plain


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU, CUDA), numpy and Python."""
    kind, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - legacy global RNG
    state = {
        "torch": torch.get_rng_state(),
        # tensors and tuples of plain numbers only, so that weights_only=True loads them
        "numpy": (str(kind), torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    # a checkpoint loaded with map_location="cuda" brings these to the GPU: RNG states live on the CPU
    torch.set_rng_state(state["torch"].cpu())
    kind, key, pos, has_gauss, cached = state["numpy"]
    key = key.cpu().numpy() if torch.is_tensor(key) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: str | Path, keep_previous_as: str | None = None, **state: Any) -> None:
    """Atomically write ``state`` (tensors, state dicts, plain values) to ``path``.

    The data goes to a temporary file in the same folder, is flushed to disk,
    and is then renamed over ``path``; the temporary file is removed if
    writing fails. With ``keep_previous_as`` (a file name beside ``path``), the
    file ``path`` held so far is kept under that name first, so that a torn or
    lost ``path`` still leaves the previous good checkpoint.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp = temporary_beside(path)  # unpredictable name, O_EXCL: never a planted link
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous_as is not None and path.is_file():
            os.replace(path, path.with_name(keep_previous_as))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        # a full or read-only disk: OSError from the file, RuntimeError from torch's writer
        # ("enforce fail at inline_container.cc ... file write failed")
        if isinstance(e, OSError | RuntimeError):
            kept = "the previous checkpoint there is left as it was" if path.is_file() else "no checkpoint written"
            cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][:160]
            raise PedcrowdError(f"{path}: cannot write the checkpoint ({cause}); {kept}") from None
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process left in ``folder``.

    Only call this while holding the folder's run lock (no other writer).
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict written by :func:`save_checkpoint`, loaded with ``weights_only=True``.

    Raises:
        PedcrowdError: missing, torn, not a dict, or holding objects other than
            tensors, containers and numbers (refused; nothing in it runs).
    """
    path = Path(path)
    if not path.is_file():
        raise PedcrowdError(f"{path}: checkpoint not found")
    ckpt = load_tensor_file(path, "checkpoint", map_location=map_location)
    if not isinstance(ckpt, dict):
        raise PedcrowdError(f"checkpoint {path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


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
    path = resolve_checkpoint(path_or_run_dir)
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "config" not in ckpt:
        raise PedcrowdError(f"{path}: not a pedcrowd training checkpoint (no model/config)")
    cfg = config_from_dict(ckpt["config"], source=str(path))
    # The trained weights replace whatever build_model initialises, so never
    # load pretrained weights here (they may not exist on this machine); but build the
    # layers they imply (a pretrained start trains with frozen BatchNorm).
    model = build_model(cfg.model, load=False)
    load_matching_state(model, ckpt["model"], path)
    model.to(device).eval()
    return model, cfg


def load_matching_state(model: torch.nn.Module, state: Any, path: str | Path) -> None:
    """``model.load_state_dict(state)``, or one line naming the file when they do not fit."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise PedcrowdError(f"checkpoint {path}: its 'model' entry is not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
        raise PedcrowdError(
            f"checkpoint {path}: its weights do not match the model its config describes: "
            + "; ".join(parts)
        )
    model.load_state_dict(state)


def convert_trusted(old: str | Path, new: str | Path) -> dict[str, Any]:
    """Load ``old`` with the full (unsafe) unpickler and write its plain form to ``new``.

    Only for files the user trusts: loading ``old`` can run code in it. The
    result is written atomically and read back with ``weights_only=True``.
    Returns the converted object (a dict for checkpoints).
    """
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise PedcrowdError(f"{old}: no such checkpoint")
    if new.is_dir():
        raise PedcrowdError(f"{new}: is a folder; give the file name of the converted checkpoint")
    if new.resolve() == old.resolve():
        raise PedcrowdError(f"{new}: write the converted checkpoint to a new file, not over {old}")
    try:
        obj = torch.load(old, map_location="cpu", weights_only=False)
    except Exception as e:
        raise PedcrowdError(f"{old}: not a readable checkpoint ({first_line(str(e))})") from None
    plain = to_plain(obj, where=str(old))
    if not isinstance(plain, dict):
        raise PedcrowdError(f"{old}: holds a {type(obj).__name__}, expected a dict (checkpoint or state dict)")
    save_checkpoint(new, **plain)
    load_tensor_file(new, "converted checkpoint")  # proves it now loads safely
    return plain
