"""File helpers shared by readers, writers and commands: paths, JSON and atomic writes with clear errors."""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path
from typing import Any

from pedcrowd.errors import PedcrowdError


def existing_path(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path; PedcrowdError if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise PedcrowdError(f"{p}: no such {what}")
    return p


def regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` if it is a regular file; PedcrowdError if missing, a folder, a FIFO, a device, ...

    (Opening a FIFO would wait for a writer forever.)
    """
    p = existing_path(path, what)
    if not p.is_file():
        kind = "a folder" if p.is_dir() else "a FIFO" if p.is_fifo() else "a special file"
        raise PedcrowdError(f"{p}: is {kind}, not a {what}")
    return p


@contextlib.contextmanager
def gc_paused():
    """The cyclic garbage collector off inside (as it was before, after).

    Parsing a large JSON file creates millions of lists and dicts and no
    cycles; the collector, triggered every few hundred allocations, walks all
    of them again and again (500k detections: 1.1 s parsing with it, 0.5 s
    without).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; PedcrowdError naming the file on a missing file or bad JSON."""
    p = regular_file(path, "JSON file")
    try:
        with open(p, "rb") as f, gc_paused():
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PedcrowdError(f"{p}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise PedcrowdError(f"{p}: not a JSON file ({e})") from None


def field(entry: dict, key: str, path: Path, where: str) -> Any:
    """``entry[key]``, or PedcrowdError naming the file, the entry and the field."""
    try:
        return entry[key]
    except (KeyError, TypeError):
        raise PedcrowdError(f"{path}: {where} has no '{key}' field") from None


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename.

    A crash mid-write leaves the previous file (or none), never a torn one.
    Raises PedcrowdError naming the file when it cannot be written.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(p)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise PedcrowdError(f"{p}: cannot write ({e.strerror or e})") from None
    return p
