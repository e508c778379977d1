"""Expand image files, folders, glob patterns and videos into an ordered list of inputs.

Output names: a file given directly keeps its base name; files found in a
folder or by a glob are named relative to that folder (or the glob's fixed
prefix), e.g. ``frankfurt/frankfurt_000000_000294_leftImg8bit.png``.
"""

from __future__ import annotations

import glob
import os
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
    return unique


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
