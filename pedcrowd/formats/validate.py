"""Checks of single values read from annotation and detection files.

Each returns the clean value or raises :class:`PedcrowdError` naming the file,
the item and the problem, so that a malformed file is one clear line instead
of a silently wrong number (a truncated image id, a NaN box dropped, a GT
image counted twice).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pedcrowd.errors import PedcrowdError

MAX_ID = 2**63 - 1  # ids are stored as int64


def is_integral(value: Any) -> bool:
    """An int, or a float with an integer value, within 0 .. 2^63-1 (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return False
    return 0 <= value <= MAX_ID


def integer_id(value: Any, path: Path | str, where: str, what: str = "image id") -> int:
    """An integer id (an integral float such as ``3.0`` too); never truncated.

    Raises:
        PedcrowdError: not a number, fractional, negative, or beyond int64.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PedcrowdError(f"{path}: {where}: {what} must be an integer, got {_short(value)}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise PedcrowdError(f"{path}: {where}: {what} must be an integer, got {value!r}")
    if not 0 <= value <= MAX_ID:
        raise PedcrowdError(f"{path}: {where}: {what} {_short(value)} is out of range (0 .. 2^63-1)")
    return int(value)


def category_id(value: Any, path: Path | str, where: str) -> int:
    """A ``category_id`` (integer); None, strings and lists are errors."""
    return integer_id(value, path, where, what="category_id")


def number(value: Any, path: Path | str, where: str, what: str) -> float:
    """A finite number (not a bool, string, list, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PedcrowdError(f"{path}: {where}: {what} must be a number, got {_short(value)}")
    value = float(value)
    if not math.isfinite(value):
        kind = "NaN" if math.isnan(value) else "infinite"
        raise PedcrowdError(f"{path}: {where}: {kind} {what} ({value}; numbers must be finite)")
    return value


def xywh(value: Any, path: Path | str, where: str, what: str = "bbox") -> list[float]:
    """``[x, y, w, h]``: four finite numbers, ``w, h >= 0``."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise PedcrowdError(f"{path}: {where}: '{what}' must be [x, y, w, h], got {_short(value)}")
    box = [number(v, path, where, f"'{what}' value") for v in value]
    if box[2] < 0 or box[3] < 0:
        raise PedcrowdError(f"{path}: {where}: negative box size in '{what}' {box}")
    return box


def finite_rows(arr: np.ndarray, path: Path | str, where: str, what: str = "box") -> None:
    """PedcrowdError naming the first row of ``arr`` with a NaN or infinite value."""
    bad = ~np.isfinite(arr)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
        raise PedcrowdError(
            f"{path}: {where}: {what} {row + 1} has a NaN or infinite value {arr[row].tolist()}"
        )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


MAX_COORD = 1e5  # px: a box coordinate or size beyond this is a broken file, not a person


def box_sizes(arr: np.ndarray, path: Path | str, where: str, what: str = "box") -> None:
    """PedcrowdError naming the first ``[x, y, w, h]`` row of ``arr`` with a negative size or
    a value beyond +-MAX_COORD pixels (NaN rows, "no box", pass)."""
    with np.errstate(invalid="ignore"):
        bad = (arr[:, 2:] < 0).any(axis=1) | (np.abs(arr) > MAX_COORD).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        problem = "a negative size" if (arr[row, 2:] < 0).any() else f"a value beyond {MAX_COORD:g} px"
        raise PedcrowdError(f"{path}: {where}: {what} {row + 1} has {problem} {arr[row].tolist()}")


def first_duplicate(image_ids: np.ndarray, rows: np.ndarray) -> tuple[int, int] | None:
    """Indices ``(i, j)`` of two entries with the same image id and the same row (box), or None.

    An evaluation GT listing one annotation twice would count a person twice (one of
    the two copies can never be matched: a guaranteed miss).
    """
    if len(image_ids) < 2:
        return None
    keys = [rows[:, k] for k in reversed(range(rows.shape[1]))]
    order = np.lexsort((*keys, image_ids))
    same = (np.diff(image_ids[order]) == 0) & (np.diff(rows[order], axis=0) == 0).all(axis=1)
    hits = np.flatnonzero(same)
    if not len(hits):
        return None
    i, j = sorted((int(order[hits[0]]), int(order[hits[0] + 1])))
    return i, j


def image_size(im: Any, key: str, path: Path | str, where: str) -> int | None:
    """The optional ``width`` / ``height`` of an image entry: None when absent, else a
    positive integer (an integral float such as ``2048.0`` too); zero, negative, NaN,
    fractional and non-numbers are refused naming ``path`` and the image."""
    if not isinstance(im, dict):
        raise PedcrowdError(f"{path}: {where} is not an object")
    value = im.get(key)
    if value is None:
        return None
    if not is_integral(value) or value < 1 or value > MAX_COORD:
        raise PedcrowdError(
            f"{path}: {where}: '{key}' must be a positive integer number of pixels, got {_short(value)}"
        )
    return int(value)
