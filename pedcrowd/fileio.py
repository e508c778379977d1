"""File helpers shared by readers, writers and commands: paths, JSON and atomic writes with clear errors."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    except RecursionError:
        raise PedcrowdError(f"{p}: invalid JSON (nested too deeply)") from None
    except OSError as e:
        raise PedcrowdError(f"{p}: cannot read ({e.strerror or e})") from None


_ELEMENT_GAP = re.compile(rb"\}\s*,\s*\{")  # between two objects of a list (or inside one)
_NOT_SPACE = re.compile(rb"\S")


def json_list_chunks(path: str | Path, what: str, chunk_bytes: int = 1 << 18) -> Iterator[list]:
    """Parse a file holding a JSON list a slice of its elements at a time (about ``chunk_bytes`` of text each).

    A caller that turns each slice into arrays before the next one is parsed
    keeps a few MB of Python objects alive instead of the whole list (500k
    detections: 350 MB), and reads them while they are still in the cache.

    The text is cut between two objects (``}, {``). Such a cut is a real gap
    between elements exactly when the text before it, closed by ``]``, parses:
    a cut inside a string or a nested object leaves something unclosed. A
    piece that does not parse grows to the next gap; after a few tries the
    rest of the list is parsed at once. The garbage collector is paused until
    the last slice (see :func:`gc_paused`).

    Raises:
        PedcrowdError naming the file: missing, not JSON (position in the
        file), or not a list (``expected a JSON list of {what}``).
    """
    p = regular_file(path, "JSON file")
    with open(p, "rb") as f:
        text = f.read()
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    if text[start : start + 1] != b"[" or text[end - 1 : end] != b"]":
        data = load_json(p)  # names the error, or parses a non-list
        if not isinstance(data, list):
            raise PedcrowdError(f"{p}: expected a JSON list of {what}")
        yield data
        return
    pos, end = start + 1, end - 1  # inside the brackets
    try:
        with gc_paused():
            while _NOT_SPACE.search(text, pos, end):
                cut, tries = end, 0
                gap = _ELEMENT_GAP.search(text, pos + chunk_bytes, end) if end - pos > 2 * chunk_bytes else None
                while gap is not None:
                    try:
                        items = json.loads(b"[" + text[pos : gap.start() + 1] + b"]")
                        cut = gap.end() - 1  # the next element's "{"
                        break
                    except json.JSONDecodeError:
                        tries += 1
                        gap = _ELEMENT_GAP.search(text, gap.end(), end) if tries < 4 else None
                if cut == end:
                    items = json.loads(b"[" + text[pos:end] + b"]")
                yield items
                del items
                pos = cut
    except RecursionError:
        raise PedcrowdError(f"{p}: invalid JSON (nested too deeply)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        load_json(p)  # the error with its position in the whole file
        raise PedcrowdError(f"{p}: invalid JSON") from None  # not reached: the whole file parsed


def to_jsonable(value: Any) -> Any:
    """``value`` with NaN/inf as None: strict JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def dumps_strict(value: Any, indent: int | None = None) -> str:
    """``json.dumps`` that never writes the bare ``NaN`` / ``Infinity`` tokens strict
    parsers reject: non-finite numbers become ``null``."""
    return json.dumps(to_jsonable(value), indent=indent, allow_nan=False)


def field(entry: dict, key: str, path: Path, where: str) -> Any:
    """``entry[key]``, or PedcrowdError naming the file, the entry and the field."""
    try:
        return entry[key]
    except (KeyError, TypeError):
        raise PedcrowdError(f"{path}: {where} has no '{key}' field") from None


def os_error_message(e: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: the path it concerns and the cause (``Read-only file system``)."""
    where = path if path is not None else (e.filename if e.filename is not None else "")
    cause = e.strerror or str(e) or type(e).__name__
    return f"{where}: {cause}" if where != "" else cause


_UMASK = os.umask(0o022)
os.umask(_UMASK)

LINK_REFUSED = "is a symbolic link; pedcrowd does not write through a link it did not create (remove it)"


def open_nofollow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``O_NOFOLLOW``) with a PedcrowdError.

    For files with predictable names that pedcrowd writes in place (``RUN/.lock``,
    ``metrics.jsonl``): a planted link would otherwise redirect the write.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PedcrowdError(f"{path}: {LINK_REFUSED}") from None
        raise PedcrowdError(f"{path}: cannot open ({e.strerror or e})") from None


def temporary_beside(path: str | Path) -> tuple[int, Path]:
    """A new file in ``path``'s folder with an unpredictable name (``O_EXCL``), for an atomic write.

    Returns its descriptor and path (``.NAME.<random>.tmp``, which
    :func:`pedcrowd.engine.checkpoint.remove_stale_temporaries` recognises). A
    fixed temporary name could be a link planted by another user.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would make outputs private
    return fd, Path(name)


def copy_file_atomic(source: str | Path, path: str | Path) -> Path:
    """Copy ``source`` to ``path`` as :func:`write_bytes_atomic` writes (streamed, not in memory)."""

    def fill(f) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    return _replace_atomic(path, fill)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a private temporary file, fsync and a rename.

    A crash mid-write leaves the previous file (or none), never a torn one; the
    rename replaces a link at ``path`` instead of writing through it. Raises
    PedcrowdError naming the file when it cannot be written (the previous file,
    if any, is left as it was).
    """
    return _replace_atomic(path, lambda f: f.write(data))


def _replace_atomic(path: str | Path, fill: Callable[[Any], object]) -> Path:
    """``fill(f)`` writes a private temporary file beside ``path``, which is then fsynced and
    renamed onto ``path``; the temporary file is removed on any failure."""
    p = Path(path)
    tmp: Path | None = None
    try:
        fd, tmp = temporary_beside(p)
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        raise PedcrowdError(f"{p}: cannot write ({e.strerror or e})") from None
    return p


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` (UTF-8)."""
    return write_bytes_atomic(path, text.encode())
