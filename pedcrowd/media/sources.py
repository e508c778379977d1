"""Expand image files, folders, glob patterns and videos into an ordered list of inputs.

Output names: a file given directly keeps its base name; files found in a
folder or by a glob are named relative to that folder (or the glob's fixed
prefix), e.g. ``frankfurt/frankfurt_000000_000294_leftImg8bit.png``. Names
never hold ``..`` parts (they become paths under the output folder), and inputs
that would share a name are named by their paths below their common folder.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pedcrowd.errors import PedcrowdError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
VIDEO_EXTS = frozenset({".mp4", ".avi"})


@dataclass(frozen=True)
class Source:
    """One input file: ``name`` is how it appears in the output."""

    path: Path
    name: str
    is_video: bool


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _from_folder(root: Path) -> list[Source]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            kind = _kind(path)
            if kind is not None:
                found.append(Source(path, path.relative_to(root).as_posix(), kind == "video"))
    return found


def _from_glob(text: str) -> list[Source]:
    # Names relative to the pattern's fixed prefix keep sub-folders apart.
    parts = Path(text).parts
    fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    found = []
    for match in sorted(glob.glob(text, recursive=True)):
        mpath = Path(match)
        kind = _kind(mpath)
        if mpath.is_file() and kind is not None:
            found.append(Source(mpath, mpath.relative_to(root).as_posix(), kind == "video"))
    return found


def collect_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """Expand image files, folders (recursively), glob patterns and videos.

    Args:
        inputs: paths or glob patterns (``data/**/*.png``), in the order wanted.

    Returns:
        Sources in input order (folders and globs sorted), each file once.

    Raises:
        PedcrowdError: a path that does not exist, a glob or folder with no
            image or video in it, or a file that is neither.
    """
    sources: list[Source] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = _from_folder(path)
            if not found:
                raise PedcrowdError(f"{text}: folder holds no image or video (png/jpg/jpeg/bmp/mp4/avi)")
        elif path.is_file():
            kind = _kind(path)
            if kind is None:
                raise PedcrowdError(f"{text}: not an image or video (png/jpg/jpeg/bmp/mp4/avi)")
            found = [Source(path, path.name, kind == "video")]
        elif glob.has_magic(text):
            found = _from_glob(text)
            if not found:
                raise PedcrowdError(f"{text}: pattern matches no image or video")
        else:
            raise PedcrowdError(f"{text}: no such file or folder")
        sources.extend(found)
    seen: set[Path] = set()
    unique = []
    for s in sources:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    return _distinct_names([Source(s.path, _contained(s.name, s.path), s.is_video) for s in unique])


def _contained(name: str, path: Path) -> str:
    """``name`` as a relative path without ``..`` parts: output files are written under
    the output folder by name (``OUT/vis/NAME``), so a name from a glob such as
    ``*/../../x/*.png`` must not climb out of it."""
    parts = [p for p in posixpath.normpath(name).split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or path.name


def _distinct_names(sources: list[Source]) -> list[Source]:
    """Sources whose names are all different: files sharing a name (``a/x.png b/x.png``
    given one by one) are named by their paths below the folder they have in common,
    so that neither overwrites the other's drawing nor shares its ``file_name``."""
    groups: dict[str, list[Source]] = defaultdict(list)
    for s in sources:
        groups[s.name].append(s)
    taken = {name for name, group in groups.items() if len(group) == 1}
    renamed: dict[Path, str] = {}
    for group in groups.values():
        if len(group) == 1:
            continue
        common = Path(os.path.commonpath([str(s.path.resolve().parent) for s in group]))
        for s in group:
            new = s.path.resolve().relative_to(common).as_posix()
            stem, suffix, n = new[: -len(s.path.suffix) or None], s.path.suffix, 2
            while new in taken:  # an unlikely clash with another input's name
                new, n = f"{stem}~{n}{suffix}", n + 1
            taken.add(new)
            renamed[s.path] = new
    return [Source(s.path, renamed.get(s.path, s.name), s.is_video) for s in sources]


def count_frames(sources: Sequence[Source]) -> int:
    """Images plus (approximate, from the container header) video frames.

    A video that cannot be opened counts 0 (the decoder reports it as skipped,
    like an unreadable image).
    """
    import cv2

    total = 0
    for s in sources:
        if s.is_video:
            cap = cv2.VideoCapture(str(s.path))
            if cap.isOpened():
                total += max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            cap.release()
        else:
            total += 1
    return total
