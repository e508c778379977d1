"""CityPersons annotations: the official evaluation JSON and the ``.mat`` files.

``val_gt.json`` (the file the official ``eval_MR_multisetup.py`` reads) and
``anno_{train,val}.mat`` (the released annotations) describe the same objects;
both readers return identical records for the validation set, so the evaluator
gives the same numbers from either (docs/evaluation.md section "CityPersons: ground truth and detections").

Label mapping used by the official JSON (checked row by row against
``anno_val.mat``): pedestrian (1) is the only non-ignored class; ignore regions
(0), riders (2), sitting (3) and other (4) are ignored; groups (5) are ignored,
``iscrowd`` and have visible ratio 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import field, load_json, regular_file
from pedcrowd.formats import validate
from pedcrowd.formats.records import (
    GROUP,
    IGNORE_REGION,
    OTHER,
    PEDESTRIAN,
    RIDER,
    SITTING,
    ImageRecord,
)

# .mat class label -> category (annotations/README.txt).
log = logging.getLogger(__name__)

MAT_LABELS = {0: IGNORE_REGION, 1: PEDESTRIAN, 2: RIDER, 3: SITTING, 4: OTHER, 5: GROUP}

# Category names of val_gt.json's ``categories`` table -> category.
JSON_CATEGORY_NAMES = {
    "pedestrian": PEDESTRIAN,
    "rider": RIDER,
    "sitting person": SITTING,
    "other person": OTHER,
    "people group": GROUP,
    "ignore region": IGNORE_REGION,
}


def city_file_name(im_name: str) -> str:
    """``frankfurt_000000_000294_leftImg8bit.png`` -> ``frankfurt/frankfurt_000000_000294_leftImg8bit.png``."""
    return f"{im_name.split('_', 1)[0]}/{im_name}"


def read_citypersons(path: str | Path) -> list[ImageRecord]:
    """A CityPersons ``.mat`` (:func:`read_citypersons_mat`) or evaluation JSON
    (:func:`read_citypersons_json`), by suffix."""
    if Path(path).suffix.lower() == ".json":
        return read_citypersons_json(path)
    return read_citypersons_mat(path)


_PEEK_BYTES = 1 << 16


def is_citypersons_file(path: Path) -> bool:
    """A ``.mat`` file, or a JSON whose images carry ``im_name`` (the evaluation JSON;
    a COCO file names them ``file_name``). Looks at the head of the file first and
    parses it only when the head does not tell."""
    if path.suffix.lower() != ".json":
        return True
    with open(path, "rb") as f:
        head = f.read(_PEEK_BYTES)
    if b'"im_name"' in head:
        return True
    if len(head) < _PEEK_BYTES:  # the whole file: no im_name anywhere
        return False
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    return isinstance(images, list) and bool(images) and isinstance(images[0], dict) and "im_name" in images[0]


def read_citypersons_json(path: str | Path, category_id: int | None = 1) -> list[ImageRecord]:
    """Read the official CityPersons evaluation JSON (``val_gt.json``).

    Every image listed is returned (also those without annotations), sorted by
    image id. Heights and visible ratios are the file's ``height`` and
    ``vis_ratio`` fields, which the official evaluator filters on.

    Args:
        path: the JSON file with ``images``, ``annotations`` and ``categories``.
        category_id: keep only annotations of this category. The default 1 is
            what the official evaluator sees (it hard-codes ``catIds=[1]``, so
            other categories are not even ignore regions; val_gt.json has
            only category 1). None keeps all.

    Returns:
        one record per image; ``categories`` from the file's category table
        (``iscrowd`` objects are groups), ``ignore`` the file's ``ignore`` flag.
    """
    path = Path(path)
    return citypersons_json_records(load_json(path), path, category_id)


def citypersons_json_records(data: object, path: Path, category_id: int | None = 1) -> list[ImageRecord]:
    """:func:`read_citypersons_json` on already parsed JSON (``path`` only names the file in errors)."""
    if not isinstance(data, dict):
        raise PedcrowdError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    images = field(data, "images", path, "the file")
    anns = field(data, "annotations", path, "the file")
    names = {
        int(field(c, "id", path, "a category")): str(field(c, "name", path, "a category"))
        for c in data.get("categories", [])
    }
    if not isinstance(images, list) or not isinstance(anns, list):
        raise PedcrowdError(f"{path}: 'images' and 'annotations' must be lists")
    if category_id is not None:
        anns = [
            a for a in anns
            if validate.category_id(
                field(a, "category_id", path, f"annotation {_ann_name(a)}"), path, f"annotation {_ann_name(a)}"
            ) == category_id
        ]
    try:
        if not all(validate.is_integral(a["image_id"]) and validate.is_integral(a["id"]) for a in anns):
            raise ValueError("non-integer ids")  # never truncated: the slow path names the entry
        cols = _annotation_columns(anns, names)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        _raise_first_bad_annotation(anns, path)
        raise
    for key in ("bbox", "height", "vis_ratio"):
        bad = np.flatnonzero(~np.isfinite(cols[key].reshape(len(anns), -1)).all(axis=1))
        if len(bad):
            raise PedcrowdError(
                f"{path}: annotation {_ann_name(anns[bad[0]])}: NaN or infinite '{key}' {cols[key][bad[0]].tolist()}"
            )
    negative = np.flatnonzero((cols["bbox"][:, 2:] < 0).any(axis=1))
    if len(negative):
        raise PedcrowdError(
            f"{path}: annotation {_ann_name(anns[negative[0]])}: negative box size in 'bbox' "
            f"{cols['bbox'][negative[0]].tolist()}"
        )
    _refuse_repeated_annotations(path, anns, cols)
    order = np.argsort(cols["image_id"], kind="stable")  # stable: file order within an image
    cols = {k: v[order] for k, v in cols.items()}
    ids_sorted = cols["image_id"]

    ids = [validate.integer_id(field(im, "id", path, f"image {i}"), path, f"image {i}") for i, im in enumerate(images)]
    _refuse_duplicates(path, ids, [str(field(im, "im_name", path, f"image {i}")) for i, im in enumerate(images)])
    records = []
    for image_id, im in sorted(zip(ids, images, strict=True), key=lambda pair: pair[0]):
        im_name = str(im["im_name"])
        a, b = np.searchsorted(ids_sorted, image_id), np.searchsorted(ids_sorted, image_id, side="right")
        records.append(
            ImageRecord(
                id=image_id,
                file_name=city_file_name(im_name),
                boxes=cols["bbox"][a:b],
                vis_boxes=cols["vis_bbox"][a:b],
                categories=cols["category"][a:b],
                ignore=cols["ignore"][a:b],
                heights=cols["height"][a:b],
                vis_ratios=cols["vis_ratio"][a:b],
                ann_ids=cols["id"][a:b],
                crowd=cols["iscrowd"][a:b],
                width=validate.image_size(im, "width", path, f"image {image_id}"),
                height=validate.image_size(im, "height", path, f"image {image_id}"),
            )
        )
    # A set, not np.setdiff1d: its np.unique loads numpy.ma (~15 ms of `pedcrowd eval`).
    unknown = set(ids_sorted.tolist()) - {r.id for r in records}
    if unknown:
        raise PedcrowdError(f"{path}: annotation for unknown image id {min(unknown)}")
    return records


_NO_BOX = [np.nan] * 4


def _ann_name(a: object) -> str:
    return str(a.get("id", "?")) if isinstance(a, dict) else "?"


def _refuse_duplicates(path: Path, ids: list[int], names: list[str]) -> None:
    """A GT listing an image twice would count its boxes twice: refuse it."""
    for what, values in (("image id", ids), ("image", names)):
        seen: set = set()
        for v in values:
            if v in seen:
                raise PedcrowdError(f"{path}: {what} {v!r} is listed twice")
            seen.add(v)


def _refuse_repeated_annotations(path: Path, anns: list, cols: dict[str, np.ndarray]) -> None:
    """An annotation listed twice (its id repeated, as in a list appended to itself) is an
    error: the person would count twice, one copy a certain miss (the official files have
    none). Two annotations with different ids and the very same boxes are most likely the
    same, but a synthetic crowd can hold two such people: a warning names them."""
    ids = cols["id"]
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(np.diff(ids[order]) == 0)
    if len(repeated):
        raise PedcrowdError(
            f"{path}: annotation id {int(ids[order[repeated[0]]])} is listed twice: "
            "its person would be counted twice"
        )
    rows = np.column_stack([cols["bbox"], np.nan_to_num(cols["vis_bbox"], nan=-1.0), cols["vis_ratio"],
                            cols["category"] == PEDESTRIAN, cols["ignore"]])
    twice = validate.first_duplicate(cols["image_id"], rows)
    if twice is not None:
        i, j = twice
        log.warning(
            "warning: %s: annotations %s and %s of image %d are the same box %s: counted as two "
            "people, one of them can never be matched", path, _ann_name(anns[i]), _ann_name(anns[j]),
            int(cols["image_id"][i]), cols["bbox"][i].tolist(),
        )


def _rows_of_4(boxes: list) -> np.ndarray:
    """[N, 4] float64 of N ``[x, y, w, h]`` lists; ValueError for nested or short lists."""
    arr = np.array(boxes, dtype=np.float64)
    if arr.shape != (len(boxes), 4):
        raise ValueError("bbox is not [x, y, w, h]")
    return arr


def _annotation_columns(anns: list[dict], names: dict[int, str]) -> dict[str, np.ndarray]:
    """The annotation list as columns (one pass per field: ~10x faster than per-object arrays)."""
    n = len(anns)
    crowd = np.array([a.get("iscrowd", 0) for a in anns], dtype=bool)
    category_ids = [a["category_id"] for a in anns]
    categories = np.array(
        [JSON_CATEGORY_NAMES.get(names.get(int(c), "pedestrian"), OTHER) for c in category_ids], dtype=object
    ).reshape(n)
    categories[crowd] = GROUP
    return {
        "image_id": np.array([a["image_id"] for a in anns], dtype=np.int64).reshape(n),
        "bbox": _rows_of_4([a["bbox"] for a in anns]),
        "vis_bbox": np.array([a.get("vis_bbox") or _NO_BOX for a in anns], dtype=np.float64).reshape(n, 4),
        "iscrowd": crowd,
        "category": categories,
        "ignore": np.array([a.get("ignore", 0) for a in anns], dtype=bool).reshape(n),
        "height": np.array([a["height"] for a in anns], dtype=np.float64).reshape(n),
        "vis_ratio": np.array([a["vis_ratio"] for a in anns], dtype=np.float64).reshape(n),
        "id": np.array([a["id"] for a in anns], dtype=np.int64).reshape(n),
    }


def _raise_first_bad_annotation(anns: list, path: Path) -> None:
    """PedcrowdError naming the first malformed annotation (the slow path, for the message)."""
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise PedcrowdError(f"{path}: annotation {i} is not an object")
        where = f"annotation {a.get('id', i)}"
        for key in ("id", "image_id", "category_id", "bbox", "height", "vis_ratio"):
            field(a, key, path, where)
        validate.xywh(a["bbox"], path, where)
        vis = a.get("vis_bbox")
        if vis is not None and (not isinstance(vis, list) or len(vis) != 4):
            raise PedcrowdError(f"{path}: {where}: 'vis_bbox' must be [x, y, w, h]")
        validate.number(a["height"], path, where, "height")
        validate.number(a["vis_ratio"], path, where, "vis_ratio")
        validate.integer_id(a["image_id"], path, where)
        validate.integer_id(a["id"], path, where, what="annotation id")
    raise PedcrowdError(f"{path}: malformed annotations")


def _mat_string(value) -> str:
    # scipy gives a 1-element array of str (or an empty array for '').
    arr = np.asarray(value).ravel()
    return str(arr[0]) if arr.size else ""


def read_citypersons_mat(path: str | Path) -> list[ImageRecord]:
    """Read ``anno_train.mat`` / ``anno_val.mat`` (variable ``anno_<split>_aligned``).

    Image ids are the 1-based cell positions; annotation ids are numbered
    1..N over the whole file in cell and row order, which is how
    ``val_gt.json`` numbers them. The label -> ignore mapping, the group
    visible ratio 0 and ``vis_ratio`` rounded to 12 significant digits all
    follow the official ``val_gt.json``, so both files give the same results.

    Args:
        path: the ``.mat`` file; cells with ``cityname``, ``im_name`` and
            ``bbs`` [K, 10] rows ``[label, x, y, w, h, instance_id, xv, yv, wv, hv]``.
    """
    import scipy.io

    path = regular_file(path, ".mat file")
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for non-.mat input
        raise PedcrowdError(f"{path}: not a readable .mat file ({e})") from None
    keys = [k for k in mat if k.startswith("anno_") and k.endswith("_aligned")]
    if not keys:
        raise PedcrowdError(f"{path}: no 'anno_<split>_aligned' variable (not a CityPersons .mat)")
    cells = np.asarray(mat[keys[0]]).ravel()

    records = []
    next_ann_id = 1
    for i, cell in enumerate(cells):
        entry = cell[0, 0] if cell.ndim == 2 else cell
        try:
            im_name = _mat_string(entry["im_name"])
            city = _mat_string(entry["cityname"])
            bbs = np.asarray(entry["bbs"], dtype=np.float64).reshape(-1, 10)
        except (ValueError, IndexError, KeyError):
            raise PedcrowdError(f"{path}: cell {i + 1} lacks cityname/im_name/bbs") from None
        validate.finite_rows(bbs, path, f"cell {i + 1} ({im_name})")
        k = len(bbs)
        labels = bbs[:, 0].astype(int)
        if np.any((labels < 0) | (labels > 5)):
            raise PedcrowdError(f"{path}: cell {i + 1} has a class label outside 0..5")
        boxes = bbs[:, 1:5].copy()
        vis = bbs[:, 6:10].copy()
        group = labels == 5
        vis[group] = 0.0  # the official JSON writes vis_bbox [0,0,0,0] for groups
        area = boxes[:, 2] * boxes[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(area > 0, vis[:, 2] * vis[:, 3] / area, 0.0)
        # val_gt.json stores vis_ratio with 12 significant digits; round the
        # same way so that bounds such as 0.65 compare identically.
        ratios = np.array([float(f"{r:.12g}") for r in ratios])
        records.append(
            ImageRecord(
                id=i + 1,
                file_name=f"{city or im_name.split('_', 1)[0]}/{im_name}",
                boxes=boxes,
                vis_boxes=vis,
                categories=np.array([MAT_LABELS[int(lbl)] for lbl in labels], dtype=object),
                ignore=labels != 1,
                heights=boxes[:, 3].copy(),
                vis_ratios=ratios,
                ann_ids=np.arange(next_ann_id, next_ann_id + k, dtype=np.int64),
                crowd=group,
            )
        )
        next_ann_id += k
    return records
