"""MOTChallenge sequences (MOT17, MOT20): ``seqinfo.ini``, ``img1/``, ``gt/gt.txt``, ``det/det.txt``.

A sequence folder, or a folder of them (``MOT17/train``), is one data set: one
record per image present in the sequence's ``imDir`` (all ``seqLength`` frames
when it holds them all), named ``SEQ/img1/000001.jpg`` relative to the folder
that holds the sequences, so that frames of different sequences never share a
name.

``gt.txt`` rows: ``frame, id, x, y, w, h, flag, class, visibility`` (pixels,
top-left corner). How they become pedcrowd objects (MOT16 paper, Milan et al.
2016, Table 4 and Sec. 4):

* class 1 (pedestrian) with flag 1: a pedestrian, ``visibility`` its visible ratio;
* classes 2 (person on vehicle), 7 (static person), 8 (distractor), 12
  (reflection), 13 (crowd) and class-1 rows with flag 0: ignore regions;
* every other class (vehicles, occluders): dropped;
* boxes are clipped to the image; a box with nothing left inside is dropped.

``det.txt`` rows: ``frame, id, x, y, w, h, score, ...`` (the public detections,
one file per sequence); :func:`read_mot_detections` maps them onto the records.
"""

from __future__ import annotations

import configparser
import logging
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import existing_path, regular_file
from pedcrowd.formats.records import IGNORE_REGION, PEDESTRIAN, ImageRecord

log = logging.getLogger(__name__)

PEDESTRIAN_CLASS = 1
IGNORED_CLASSES = (2, 7, 8, 12, 13)  # person on vehicle, static person, distractor, reflection, crowd
GT_COLUMNS = 9
DET_COLUMNS = 7  # frame, id, x, y, w, h, score (MOT17 adds -1, -1, -1)


def is_sequence(path: Path) -> bool:
    return (path / "seqinfo.ini").is_file()


def sequence_folders(path: Path) -> list[Path]:
    """``[path]`` for a sequence folder, else its sub-folders that are sequences, sorted by name."""
    if is_sequence(path):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and is_sequence(p)) if path.is_dir() else []


def is_mot_folder(path: Path) -> bool:
    """Whether ``path`` is a MOTChallenge sequence or a folder of them (the registry's ``claims``)."""
    return bool(sequence_folders(path))


def read_seqinfo(seq: Path) -> dict[str, str]:
    """The ``[Sequence]`` section of ``seq/seqinfo.ini`` (name, imDir, seqLength, imWidth, ...)."""
    path = seq / "seqinfo.ini"
    parser = configparser.ConfigParser()
    try:
        parser.read_string(regular_file(path).read_text())
        info = dict(parser["Sequence"])
    except (configparser.Error, KeyError, UnicodeDecodeError) as e:
        raise PedcrowdError(f"{path}: not a MOTChallenge seqinfo.ini ({type(e).__name__})") from None
    for key in ("imdir", "imwidth", "imheight"):
        if key not in info:
            raise PedcrowdError(f"{path}: no '{key}' entry in [Sequence]")
    for key in ("imwidth", "imheight"):
        if not info[key].isdigit() or int(info[key]) < 1:
            raise PedcrowdError(f"{path}: {key}={info[key]!r} is not a positive integer")
    return info


def parse_rows(path: Path, min_columns: int) -> np.ndarray:
    """The comma-separated numbers of a MOT text file, [n, columns] float64 (columns >= ``min_columns``)."""
    lines = [ln for ln in regular_file(path).read_text().splitlines() if ln.strip()]
    if not lines:
        return np.zeros((0, min_columns))
    widths = {len(ln.split(",")) for ln in lines}
    if len(widths) != 1 or min(widths) < min_columns:
        bad = next(i for i, ln in enumerate(lines) if len(ln.split(",")) != len(lines[0].split(","))
                   or len(ln.split(",")) < min_columns)
        raise PedcrowdError(
            f"{path}: line {bad + 1} has {len(lines[bad].split(','))} comma-separated values, "
            f"expected {min_columns} or more (the same on every line)"
        )
    try:
        rows = np.array([ln.split(",") for ln in lines], dtype=np.float64)
    except ValueError:
        raise PedcrowdError(f"{path}: a non-numeric value") from None
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise PedcrowdError(f"{path}: line {bad[0] + 1}: NaN or infinite value")
    frames = rows[:, 0]
    bad = np.flatnonzero((frames < 1) | (frames != np.round(frames)))
    if len(bad):
        raise PedcrowdError(f"{path}: line {bad[0] + 1}: frame {frames[bad[0]]:g} is not an integer >= 1")
    return rows


def frame_images(seq: Path, info: dict[str, str]) -> dict[int, str]:
    """frame number -> image name ``SEQ/imDir/NNNNNN.ext`` of the images present in ``imDir``."""
    folder = seq / info["imdir"]
    ext = info.get("imext", ".jpg").lower()
    if not folder.is_dir():
        raise PedcrowdError(f"{folder}: no image folder (seqinfo.ini imDir={info['imdir']})")
    frames = {}
    for image in folder.iterdir():
        if image.suffix.lower() == ext and image.stem.isdigit():
            frames[int(image.stem)] = f"{seq.name}/{info['imdir']}/{image.name}"
    return dict(sorted(frames.items()))


def gt_objects(rows: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    """The kept ``gt.txt`` rows of one frame as record fields (boxes clipped, ``xywh``)."""
    cls, flag = rows[:, 7].astype(int), rows[:, 6]
    pedestrian = (cls == PEDESTRIAN_CLASS) & (flag == 1)
    ignored = np.isin(cls, IGNORED_CLASSES) | ((cls == PEDESTRIAN_CLASS) & (flag == 0))
    x1 = np.clip(rows[:, 2], 0, width)  # [K]
    y1 = np.clip(rows[:, 3], 0, height)
    x2 = np.clip(rows[:, 2] + rows[:, 4], 0, width)
    y2 = np.clip(rows[:, 3] + rows[:, 5], 0, height)
    keep = (pedestrian | ignored) & (x2 > x1) & (y2 > y1)
    boxes = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[keep]  # [K', 4] xywh
    return {
        "boxes": boxes,
        "categories": np.where(pedestrian[keep], PEDESTRIAN, IGNORE_REGION).astype(object),
        "ignore": ignored[keep],
        "vis_ratios": np.where(pedestrian[keep], rows[keep, 8], np.nan),
    }


def read_mot(path: str | Path) -> list[ImageRecord]:
    """Read a MOTChallenge sequence folder or a folder of sequences with ground truth.

    Returns:
        one record per image present, sequences in name order, frames in order;
        ids 1, 2, ... in that order; ``file_name`` ``SEQ/img1/000001.jpg``.
    """
    path = existing_path(path, "folder")
    seqs = sequence_folders(path)
    if not seqs:
        raise PedcrowdError(f"{path}: no MOTChallenge sequence (a folder with seqinfo.ini) here")
    records: list[ImageRecord] = []
    n_objects = 0
    for seq in seqs:
        info = read_seqinfo(seq)
        width, height = int(info["imwidth"]), int(info["imheight"])
        gt_file = seq / "gt" / "gt.txt"
        if not gt_file.is_file():
            raise PedcrowdError(f"{gt_file}: no ground truth (MOTChallenge test sequences have none)")
        rows = parse_rows(gt_file, GT_COLUMNS)
        frames = frame_images(seq, info)
        if not frames:
            raise PedcrowdError(f"{seq / info['imdir']}: no {info.get('imext', '.jpg')} frames")
        # rows grouped by frame once (a MOT20 sequence: ~2.4k frames x ~350k rows)
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        starts = np.searchsorted(rows[:, 0], list(frames), side="left")
        ends = np.searchsorted(rows[:, 0], list(frames), side="right")
        for name, a, b in zip(frames.values(), starts, ends, strict=True):
            objects = gt_objects(rows[a:b], width, height)
            k = len(objects["boxes"])
            n_objects += k
            records.append(
                ImageRecord(
                    id=len(records) + 1,
                    file_name=name,
                    boxes=objects["boxes"],
                    vis_boxes=np.full((k, 4), np.nan),
                    categories=objects["categories"],
                    ignore=objects["ignore"],
                    heights=objects["boxes"][:, 3].copy(),
                    vis_ratios=objects["vis_ratios"],
                    ann_ids=np.arange(n_objects - k + 1, n_objects + 1, dtype=np.int64),
                    crowd=np.zeros(k, dtype=bool),
                    width=width,
                    height=height,
                )
            )
    return records


def image_candidates(image_root: Path, record: ImageRecord) -> list[Path]:
    """Record names start with the sequence: the image root is the folder of the sequences,
    or the sequence folder itself (one sequence given as the root)."""
    return [image_root / record.file_name, image_root.parent / record.file_name]


def is_mot_detections(path: Path) -> bool:
    """Whether a ``.txt`` detection file is MOT's ``det.txt`` form (7 or more comma-separated
    values a line; Caltech's per-video results have 6)."""
    with open(regular_file(path), encoding="utf-8", errors="replace") as f:
        first = next((ln for ln in f if ln.strip()), "")
    return len(first.split(",")) >= DET_COLUMNS


def read_mot_detections(path: str | Path, images: list[ImageRecord]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A ``det.txt`` (one sequence) as image id -> (boxes [D, 4] xywh, scores [D]), file order.

    The sequence is the one the file sits in (``SEQ/det/det.txt``) or is named after
    (``SEQ.txt``, the MOTChallenge results layout); with ground truth of one sequence,
    that one. Rows for frames that are not among ``images`` are left out, with a note.
    """
    path = Path(path)
    by_seq: dict[str, dict[int, int]] = {}
    for im in images:
        seq, _, rest = im.file_name.partition("/")
        stem = Path(rest).stem
        if stem.isdigit():
            by_seq.setdefault(seq, {})[int(stem)] = im.id
    if not by_seq:
        raise PedcrowdError(f"{path}: MOT detections, but the ground truth is not a MOTChallenge sequence")
    names = [path.resolve().parent.parent.name, path.stem]
    seq = next((n for n in names if n in by_seq), None)
    if seq is None and len(by_seq) == 1:
        seq = next(iter(by_seq))
    if seq is None:
        raise PedcrowdError(
            f"{path}: which sequence? The ground truth holds {len(by_seq)} ({', '.join(sorted(by_seq)[:3])}, ...); "
            "give SEQ/det/det.txt or SEQ.txt, or the ground truth of that one sequence"
        )
    rows = parse_rows(path, DET_COLUMNS)
    if (rows[:, 4:6] < 0).any():
        bad = np.flatnonzero((rows[:, 4:6] < 0).any(axis=1))[0]
        raise PedcrowdError(f"{path}: line {bad + 1}: negative box size")
    frame_ids = by_seq[seq]
    ids = np.array([frame_ids.get(int(f), -1) for f in rows[:, 0]], dtype=np.int64)
    left_out = int((ids < 0).sum())
    if left_out:
        frames = len(np.unique(rows[ids < 0, 0]))
        log.warning("%s: %d detections on %d frames with no image in %s left out", path, left_out, frames, seq)
    out = {}
    for image_id in np.unique(ids[ids >= 0]):
        sel = ids == image_id
        out[int(image_id)] = (rows[sel, 2:6].copy(), rows[sel, 6].copy())
    return out
