"""Detection results: the standard results JSON list and Caltech result trees.

The JSON list is ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``
(``file_name`` may replace ``image_id``). As in the official ``loadRes`` +
evaluator, entries whose ``category_id`` is not 1 are skipped, and the file
order is kept within each image (it breaks score ties).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from pathlib import Path

import numpy as np

from pedcrowd.box_np import xyxy_to_xywh
from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import existing_path, json_list_chunks, load_json
from pedcrowd.formats import validate
from pedcrowd.formats.caltech import frame_key, read_caltech_results
from pedcrowd.formats.mot import is_mot_detections, read_mot_detections
from pedcrowd.formats.records import ImageRecord

log = logging.getLogger(__name__)

Detections = dict[int, tuple[np.ndarray, np.ndarray]]


class AmbiguousFileName(PedcrowdError):
    """A file name that only matches through a base name (or stem) several images share."""

    def __init__(self, name: str, key: str, candidates: list[str]):
        self.name, self.key, self.candidates = name, key, candidates
        shown = ", ".join(repr(c) for c in candidates[:3]) + (", ..." if len(candidates) > 3 else "")
        super().__init__(
            f"file name {name!r} is ambiguous ({len(candidates)} images are named {key!r}: {shown})"
        )


@dataclass(frozen=True)
class FileNameIndex:
    """Ground-truth images by file name; build it with :func:`file_name_index`.

    Attributes:
        names: full relative name, and each base name / stem that only one
            image has -> that image's record.
        ambiguous: base name / stem shared by several images (e.g. Caltech's
            ``I00029.jpg`` in every video) -> their full names; never in ``names``.
    """

    names: dict[str, ImageRecord]
    ambiguous: dict[str, list[str]]

    def find(self, name: str) -> ImageRecord | None:
        """The image ``name`` refers to: its full relative name, else its base name
        (or stem) if only one image has it; None if no image matches.

        Raises:
            AmbiguousFileName: ``name`` only matches through a base name or stem
                that several images share.
        """
        name = name.replace("\\", "/")
        base = name.rsplit("/", 1)[-1]
        for key in (name, base):
            record = self.names.get(key)
            if record is not None:
                return record
        for key in (name, base):
            if key in self.ambiguous:
                raise AmbiguousFileName(name, key, self.ambiguous[key])
        return None


def file_name_index(images: list[ImageRecord]) -> FileNameIndex:
    """Index ``images`` by full relative name and by unique base name (with and without extension).

    Full names always stay (they win over another image's base name); a base
    name or stem that several images share maps to none of them, so a detection
    named only by it is an error instead of landing on the first image.
    """
    by_key: dict[str, dict[str, None]] = {}  # base name / stem -> full names (ordered set)
    for im in images:
        base = im.file_name.replace("\\", "/").rsplit("/", 1)[-1]
        for key in (base, base.rsplit(".", 1)[0]):
            by_key.setdefault(key, {})[im.file_name] = None
    full = {im.file_name: im for im in images}
    names: dict[str, ImageRecord] = {}
    ambiguous: dict[str, list[str]] = {}
    for key, owners in by_key.items():
        if len(owners) == 1:
            names[key] = full[next(iter(owners))]
        elif key not in full:
            ambiguous[key] = list(owners)
    names.update(full)  # full names win over base names
    return FileNameIndex(names, ambiguous)


class ImageIds:
    """Image ids for named images (``pedcrowd infer``): the ground truth's id for
    an image it names unambiguously, else made-up ids counting up from one past
    the largest GT id (from 1 without GT), so they never clash with it.
    """

    def __init__(self, index: FileNameIndex | None = None):
        self.index = index
        ids = (int(r.id) for r in index.names.values()) if index is not None else ()
        self._next = max(ids, default=0) + 1

    def record(self, name: str) -> ImageRecord | None:
        """The GT record of image ``name``; None without GT or if it does not name it unambiguously."""
        if self.index is None:
            return None
        try:
            return self.index.find(name)
        except AmbiguousFileName:
            return None

    def assign(self, name: str) -> tuple[int, ImageRecord | None]:
        """(image id, GT record or None) for the next image, called once per image in output order."""
        record = self.record(name)
        if record is not None:
            return int(record.id), record
        image_id, self._next = self._next, self._next + 1
        return image_id, None


def _image_id_by_name(path: Path, index: FileNameIndex, i: int, name: str) -> int:
    try:
        record = index.find(name)
    except AmbiguousFileName as e:
        raise PedcrowdError(
            f"{path}: detection {i}: {e}; use the path relative to the image root"
        ) from None
    if record is None:
        raise PedcrowdError(f"{path}: detection {i} is for unknown image {name!r}")
    return record.id


def results_entries(
    image_id: int, file_name: str, boxes_xywh: np.ndarray, scores: np.ndarray
) -> list[dict]:
    """One image's detections as results-format entries, one per box.

    ``{"image_id", "category_id": 1, "bbox": [x, y, w, h], "score", "file_name"}``
    with the values unrounded (Python floats of the float64 inputs), so that
    evaluating the entries reproduces an evaluation of the arrays exactly.

    Args:
        boxes_xywh: [D, 4] ``x, y, w, h`` (see :func:`output_to_xywh` for model output).
        scores: [D].
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4).tolist()
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "bbox": box,
            "score": score,
            "file_name": file_name,
        }
        for box, score in zip(boxes, np.asarray(scores, dtype=np.float64).tolist(), strict=True)
    ]


def output_to_xywh(output: dict) -> tuple[np.ndarray, np.ndarray]:
    """A torchvision detection output (``boxes`` [D, 4] xyxy and ``scores`` [D]
    tensors) -> (boxes [D, 4] float64 ``x, y, w, h``, scores [D] float64)."""
    boxes = output["boxes"].detach().cpu().double().numpy()
    scores = output["scores"].detach().cpu().double().numpy()
    return xyxy_to_xywh(boxes), scores


def _check_rows(path: Path, boxes: np.ndarray, scores: np.ndarray, where: str) -> None:
    if not np.isfinite(scores).all() or not np.isfinite(boxes).all():
        raise PedcrowdError(f"{path}: {where}: NaN or infinite score or coordinate")
    if (boxes[:, 2:] < 0).any():
        raise PedcrowdError(f"{path}: {where}: negative box size")


_Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _columns(data: list) -> _Columns | None:
    """(image ids, category ids, boxes [n, 4], scores) of a well-formed slice keyed by ``image_id``;
    None if anything is unusual.

    Only plain ``int`` ids and categories take this path (a float id, even an
    integral one, goes to the slow path, which never truncates it); the
    per-entry work is C-level ``map`` calls.
    """
    try:  # one column at a time: lists of the parsed objects, no per-entry tuples
        ids, bboxes, score_list = (
            list(map(itemgetter(key), data)) for key in ("image_id", "bbox", "score")
        )
        cats = list(map(dict.get, data, repeat("category_id"), repeat(1)))
    except (KeyError, TypeError):  # a missing field or an entry that is not an object
        return None
    if not set(map(type, ids)) | set(map(type, cats)) <= {int}:
        return None  # bools, floats, strings: the slow path validates or names the entry
    if not set(map(type, bboxes)) <= {list} or not set(map(len, bboxes)) <= {4}:
        return None  # short bbox lists or other objects: the slow path names the entry
    n = len(data)
    try:  # fromiter: about twice as fast as np.array on nested lists
        image_ids = np.fromiter(ids, dtype=np.int64, count=n)
        cat_ids = np.fromiter(cats, dtype=np.int64, count=n)
        boxes = np.fromiter(chain.from_iterable(bboxes), dtype=np.float64, count=4 * n).reshape(n, 4)
        scores = np.fromiter(score_list, dtype=np.float64, count=n)
    except (TypeError, ValueError, OverflowError):
        return None  # nested lists, list scores, big ints: the slow path names the entry
    if (image_ids < 0).any() or (cat_ids < 0).any():
        return None
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()) or (boxes[:, 2:] < 0).any():
        return None
    return image_ids, cat_ids, boxes, scores


def _warn_other_category(categories: list[int]) -> None:
    """Every detection has a category_id other than 1: evaluated as no detections at all."""
    shown = ", ".join(map(str, categories[:5])) + (", ..." if len(categories) > 5 else "")
    log.warning(
        "warning: every detection has category_id %s, none the pedestrian's 1: they are all "
        "skipped and the evaluation sees no detections", shown,
    )


def _group(parts: list[_Columns], images: list[ImageRecord]) -> Detections | None:
    """The slices' columns -> image id -> (boxes, scores) in file order; None for an unknown image id."""
    if not parts:
        return {}
    image_ids, cat_ids, boxes, scores = (np.concatenate(col) for col in zip(*parts, strict=True))
    known = np.array(sorted(im.id for im in images), dtype=np.int64)
    keep = cat_ids == 1
    if len(keep) and not keep.any():
        _warn_other_category(sorted(set(cat_ids.tolist())))
    image_ids, boxes, scores = image_ids[keep], boxes[keep], scores[keep]
    if not np.isin(image_ids, known).all():
        return None
    if not len(image_ids):
        return {}
    order = np.argsort(image_ids, kind="stable")  # stable: keeps file order inside an image
    image_ids, boxes, scores = image_ids[order], boxes[order], scores[order]
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    ends = list(starts[1:]) + [len(image_ids)]
    return {int(image_ids[a]): (boxes[a:b], scores[a:b]) for a, b in zip(starts, ends, strict=True)}


def _read_fast(path: Path, images: list[ImageRecord]) -> Detections | None:
    """Column-wise read of a well-formed list, a slice at a time (:func:`json_list_chunks`);
    None if anything is unusual (the caller then reads it entry by entry).

    Entries are re-keyed by ``file_name`` when the first one has it (as the slow
    path). 500k entries (46 MiB): about 0.55 s with the parsing in a fresh
    process; the slices keep the peak memory ~145 MiB below one ``json.load``.
    """
    parts: list[_Columns] = []
    by_name, seen = None, 0
    for chunk in json_list_chunks(path, "detections"):
        if by_name is None:
            by_name = bool(chunk) and isinstance(chunk[0], dict) and "file_name" in chunk[0]
        if by_name:
            chunk = _ids_from_file_names(path, chunk, images, first=seen)
        seen += len(chunk)
        cols = _columns(chunk)
        if cols is None:
            return None
        parts.append(cols)
    return _group(parts, images)


def _ids_from_file_names(path: Path, data: list, images: list[ImageRecord], first: int = 0) -> list:
    """Re-key entries that carry ``file_name`` by the GT's id for that name.

    A file name is the identity two tools share (``pedcrowd infer`` numbers the
    images it reads 1..N, which need not be the GT's ids), so it wins over
    ``image_id`` whenever an entry has one. ``first``: the index of ``data[0]``
    in the file (for messages).
    """
    index = file_name_index(images)
    out = []
    for i, d in enumerate(data, start=first):
        if isinstance(d, dict) and "file_name" in d:
            name = str(d["file_name"]).replace("\\", "/")
            d = {**d, "image_id": _image_id_by_name(path, index, i, name)}
        out.append(d)
    return out


def read_detections_json(path: str | Path, images: list[ImageRecord]) -> Detections:
    """Read a results JSON list; see :func:`read_detections`."""
    path = Path(path)
    fast = _read_fast(path, images)
    if fast is not None:
        return fast
    data = load_json(path)
    if data and isinstance(data[0], dict) and "file_name" in data[0]:
        data = _ids_from_file_names(path, data, images)
    # Slow path: one entry at a time, to name the first bad entry precisely.
    known = {im.id for im in images}
    index: FileNameIndex | None = None
    per_image: dict[int, list[tuple[list, float]]] = {}
    others: set[int] = set()
    for i, d in enumerate(data):
        where = f"detection {i}"
        if not isinstance(d, dict):
            raise PedcrowdError(f"{path}: {where} is not an object")
        category = validate.category_id(d.get("category_id", 1), path, where)
        if category != 1:
            others.add(category)
            continue
        if "image_id" in d:
            image_id = validate.integer_id(d["image_id"], path, where)
            if image_id not in known:
                raise PedcrowdError(f"{path}: {where} is for unknown image id {image_id}")
        elif "file_name" in d:
            index = index if index is not None else file_name_index(images)
            name = str(d["file_name"]).replace("\\", "/")
            image_id = _image_id_by_name(path, index, i, name)
        else:
            raise PedcrowdError(f"{path}: {where} has no 'image_id' (or 'file_name') field")
        for key in ("bbox", "score"):
            if key not in d:
                raise PedcrowdError(f"{path}: {where} has no '{key}' field")
        bbox = validate.xywh(d["bbox"], path, where)
        score = validate.number(d["score"], path, where, "score")
        per_image.setdefault(int(image_id), []).append((bbox, score))
    if others and not per_image:
        _warn_other_category(sorted(others))
    out: Detections = {}
    for image_id, rows in per_image.items():
        try:
            boxes = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
            scores = np.array([r[1] for r in rows], dtype=np.float64)
        except (TypeError, ValueError):
            raise PedcrowdError(f"{path}: non-numeric bbox or score for image {image_id}") from None
        _check_rows(path, boxes, scores, f"image {image_id}")
        out[image_id] = (boxes, scores)
    return out


def read_detections(path: str | Path, images: list[ImageRecord]) -> Detections:
    """Read detections for the given images.

    Args:
        path: a results JSON list, a Caltech result tree / file
            (per-video ``setXX/VYYY.txt``, per-frame ``setXX/VYYY/I#####.txt``),
            or a MOTChallenge ``det.txt`` (:func:`pedcrowd.formats.mot.read_mot_detections`).
        images: the evaluation's images (ids and file names to match).

    Returns:
        image id -> (boxes [D, 4] float64 xywh, scores [D] float64), file order;
        images without detections are absent. Caltech frames not in ``images``
        are skipped, as the official code only loads the test frames.

    Raises:
        PedcrowdError: missing file, invalid JSON, missing field, unknown
            image, NaN score or negative size, naming the file.
    """
    p = existing_path(path, "file or folder")
    if p.is_file() and p.suffix.lower() == ".txt":
        if is_mot_detections(p):
            return read_mot_detections(p, images)
    if p.is_dir() or p.suffix.lower() == ".txt":
        return read_caltech_detections(p, images)
    return read_detections_json(p, images)


def read_caltech_detections(path: str | Path, images: list[ImageRecord]) -> Detections:
    """Read a Caltech result tree for ``images`` (matched by set, video and frame index)."""
    path = Path(path)
    results = read_caltech_results(path)
    keys = {}
    for im in images:
        key = frame_key(im.file_name)
        if key is not None:
            keys[key] = im.id
    if results and not keys:
        raise PedcrowdError(f"{path}: Caltech results, but the image names are not setXX_VYYY_I##### frames")
    out: Detections = {}
    for key, rows in results.items():
        image_id = keys.get(key)
        if image_id is None or len(rows) == 0:
            continue
        boxes, scores = rows[:, :4].copy(), rows[:, 4].copy()
        _check_rows(path, boxes, scores, f"set{key[0]:02d}/V{key[1]:03d} frame {key[2] + 1}")
        out[image_id] = (boxes, scores)
    return out
