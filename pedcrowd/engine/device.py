"""The one parser of ``--device`` / ``train.device``: ``auto``, ``cpu``, ``cuda`` (and ``cuda:N``).

:func:`parse_device` checks the text without importing torch (commands check
their options before the heavy imports); :func:`resolve_device` turns it into a
``torch.device``. Training takes ``auto | cpu | cuda`` (under DDP, ``cuda`` is
the local rank's GPU); inference also takes ``cuda:N``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pedcrowd.errors import PedcrowdError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def parse_device(name: str, allow_index: bool = False) -> tuple[str, int | None]:
    """``name`` -> (``auto``/``cpu``/``cuda``, GPU index or None); torch-free.

    Raises:
        PedcrowdError: anything else (``cuda:N`` only with ``allow_index``).
    """
    if name in DEVICES:
        return name, None
    if allow_index and name.startswith("cuda:"):
        index = name[len("cuda:"):]
        if not index.isdigit():
            raise PedcrowdError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
        return "cuda", int(index)
    raise PedcrowdError(f"--device {name!r}: expected auto, cpu or cuda")


def resolve_device(name: str, local_rank: int = 0, allow_index: bool = False) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> GPU ``local_rank``
    (under DDP the local rank's GPU); ``cuda:N`` -> GPU N. CUDA without a GPU is an error."""
    import torch

    kind, index = parse_device(name, allow_index)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise PedcrowdError(f"--device {name}: no CUDA device is available (use cpu or auto)")
    return torch.device("cuda", local_rank if index is None else index)
