"""Reading ``.pt`` files without running code in them, and converting trusted old ones.

``torch.save`` writes a pickle, and unpickling may call any function the file
names. pedcrowd therefore reads every ``.pt`` file (its checkpoints,
``model.weights``, torchvision state dicts) with ``torch.load(...,
weights_only=True)``, which accepts only tensors, plain containers (dict, list,
tuple), numbers, strings, booleans and None. A file holding anything else is
refused with one line; nothing in it is executed.

pedcrowd's own checkpoints hold only those types (RNG states as tensors and
tuples of ints, the config as a dict). A checkpoint written by an older
pedcrowd (numpy RNG state as an array) or by other code can be converted once,
by someone who trusts the file, with ``pedcrowd convert-checkpoint OLD NEW
--trust`` (:func:`pedcrowd.engine.checkpoint.convert_trusted`, which writes the
result with :func:`~pedcrowd.engine.checkpoint.save_checkpoint`; this module is
below the engine and imports nothing from it).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

from pedcrowd.errors import PedcrowdError

CONVERT_HINT = "if you trust its source, convert it once with `pedcrowd convert-checkpoint OLD NEW --trust`"


def load_tensor_file(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors.

    Args:
        what: how the message names the file (``"checkpoint"``, ``"model.weights"``).

    Raises:
        PedcrowdError: the file holds objects other than tensors, containers and
            numbers (refused, not executed), or is torn / not a torch file.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"Unsupported (global|class)", text)
        if "Weights only load failed" not in text or not found:  # a torn or foreign file
            detail = re.search(r"WeightsUnpickler error: \s*(.+)", text)
            raise PedcrowdError(
                f"{what} {path}: not a readable checkpoint (torn or not a torch file: "
                f"{detail.group(1).strip() if detail else first_line(text)})"
            ) from None
        name = f" ({found.group(1)})" if found.re.pattern.startswith("GLOBAL") else ""
        raise PedcrowdError(
            f"{what} {path}: refused: it holds an object other than tensors, containers and "
            f"numbers{name}, which could run code when loaded; {CONVERT_HINT}"
        ) from None
    except Exception as e:  # truncated zip, empty file, a text file, ...
        raise PedcrowdError(
            f"{what} {path}: not a readable checkpoint (torn or not a torch file: {first_line(str(e))})"
        ) from None


def first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "empty"
    return line[:200]


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with only types that ``weights_only=True`` loads.

    numpy arrays become tensors, numpy scalars Python numbers, dataclasses dicts,
    paths strings; tensors, containers, numbers and strings are kept.

    Raises:
        PedcrowdError: an object of another type, named by its key path.
    """
    import numpy as np
    import torch

    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, torch.Size | torch.dtype | torch.device):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.uint32:  # torch has no stable uint32 (numpy's MT19937 key)
            obj = obj.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name), f"{where}.{f.name}") for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, list | set):
        return [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise PedcrowdError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored safely "
        "(only tensors, containers, numbers and strings)"
    )
