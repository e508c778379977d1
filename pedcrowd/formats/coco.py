"""COCO-style annotation JSON and the ``{"images": [...]}`` image lists.

``iscrowd`` or ``ignore`` makes an object ignored (a crowd region in COCO AP,
an ignore region in MR^-2). Optional per-object fields: ``vis_bbox``,
``vis_ratio`` and ``height`` (CityPersons-style); without them the height is
``bbox[3]`` and the visible ratio is area(vis_bbox) / area(bbox), or NaN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pedcrowd.errors import PedcrowdError
from pedcrowd.fileio import field, load_json
from pedcrowd.formats import validate
from pedcrowd.formats.records import (
    GROUP,
    IGNORE_REGION,
    OTHER,
    PEDESTRIAN,
    RIDER,
    SITTING,
    UNSURE,
    ImageRecord,
)

# Category names seen in pedestrian data sets -> pedcrowd category.
CATEGORY_NAMES = {
    "person": PEDESTRIAN,
    "pedestrian": PEDESTRIAN,
    "rider": RIDER,
    "sitting person": SITTING,
    "other person": OTHER,
    "people group": GROUP,
    "people": GROUP,
    "group": GROUP,
    "ignore": IGNORE_REGION,
    "ignore region": IGNORE_REGION,
    "mask": IGNORE_REGION,
    "person?": UNSURE,
}


def read_image_list(path: str | Path) -> list[ImageRecord]:
    """Read ``{"images": [{"id", "file_name"}, ...]}`` as empty records, in file order.

    This is the ``--images`` file that gives Caltech ground-truth caches their
    frame names (e.g. ``caltech/test_images.json``).
    """
    path = Path(path)
    data = load_json(path)
    images = field(data, "images", path, "the file") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise PedcrowdError(f"{path}: expected {{\"images\": [{{\"id\", \"file_name\"}}, ...]}}")
    records = []
    seen = set()
    for i, im in enumerate(images):
        image_id = validate.integer_id(field(im, "id", path, f"image {i}"), path, f"image {i}")
        if image_id in seen:
            raise PedcrowdError(f"{path}: duplicate image id {image_id}")
        seen.add(image_id)
        name = im.get("file_name", im.get("im_name"))
        if name is None:
            raise PedcrowdError(f"{path}: image {image_id} has no 'file_name' field")
        records.append(
            ImageRecord(
                id=image_id,
                file_name=str(name),
                width=validate.image_size(im, "width", path, f"image {image_id}"),
                height=validate.image_size(im, "height", path, f"image {image_id}"),
            )
        )
    return records


def _select_category(categories: list[dict], category: str | int | None, path: Path) -> set[int] | None:
    if category is None:
        return None
    if isinstance(category, int):
        return {category}
    ids = {int(c["id"]) for c in categories if str(c.get("name", "")).lower() == category.lower()}
    if not ids:
        names = ", ".join(repr(c.get("name")) for c in categories)
        raise PedcrowdError(f"{path}: no category named {category!r} (categories: {names})")
    return ids


def as_pedestrians(records: list[ImageRecord], split: str, options: dict) -> list[ImageRecord]:
    """Training: every object kept is of the chosen category, which is by definition
    what is trained as "pedestrian", whatever its name (e.g. "person")."""
    for record in records:
        record.categories = np.full(len(record), PEDESTRIAN, dtype=object)
    return records


def read_coco_json(path: str | Path, category: str | int | None = "person") -> list[ImageRecord]:
    """Read a COCO-style annotation file.

    Args:
        path: JSON with ``images``, ``annotations`` and (for a category by name)
            ``categories``.
        category: keep objects of this category, by name (case-insensitive) or
            id; None keeps all; ``auto``: ``person``, else ``pedestrian``, else all
            (what ``pedcrowd eval`` reads).

    Returns:
        one record per listed image, sorted by image id.
    """
    path = Path(path)
    return coco_json_records(load_json(path), path, category)


def coco_json_records(data: object, path: Path, category: str | int | None = "person") -> list[ImageRecord]:
    """:func:`read_coco_json` on already parsed JSON (``path`` only names the file in errors)."""
    if not isinstance(data, dict):
        raise PedcrowdError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    images = field(data, "images", path, "the file")
    anns = field(data, "annotations", path, "the file")
    categories = data.get("categories", [])
    if category == "auto":
        present = {str(c.get("name", "")).lower() for c in categories or []}
        category = next((n for n in ("person", "pedestrian") if n in present), None)
    keep = _select_category(categories, category, path)
    names = {int(c["id"]): str(c.get("name", "")).lower() for c in categories if "id" in c}

    if not isinstance(images, list) or not isinstance(anns, list):
        raise PedcrowdError(f"{path}: 'images' and 'annotations' must be lists")
    by_image: dict[int, list[dict]] = {}
    for i, a in enumerate(anns):
        where = f"annotation {a.get('id', i) if isinstance(a, dict) else i}"
        cat = validate.category_id(field(a, "category_id", path, where), path, where)
        if keep is None or cat in keep:
            image_id = validate.integer_id(field(a, "image_id", path, where), path, where)
            by_image.setdefault(image_id, []).append(a)

    ids = [validate.integer_id(field(im, "id", path, f"image {i}"), path, f"image {i}") for i, im in enumerate(images)]
    names_seen: set = set()
    for image_id, im in zip(ids, images, strict=True):  # a GT listing an image twice counts it twice
        name = im.get("file_name", im.get("im_name"))
        if image_id in names_seen or (name is not None and ("name", str(name)) in names_seen):
            raise PedcrowdError(f"{path}: image {image_id if image_id in names_seen else name!r} is listed twice")
        names_seen.update((image_id, ("name", str(name))))
    records = []
    for image_id, im in sorted(zip(ids, images, strict=True), key=lambda pair: pair[0]):
        name = im.get("file_name", im.get("im_name"))
        if name is None:
            raise PedcrowdError(f"{path}: image {image_id} has no 'file_name' field")
        objs = by_image.pop(image_id, [])
        k = len(objs)
        boxes = np.zeros((k, 4))
        vis = np.full((k, 4), np.nan)
        cats = np.empty(k, dtype=object)
        ignore = np.zeros(k, dtype=bool)
        crowd = np.zeros(k, dtype=bool)
        heights = np.zeros(k)
        ratios = np.full(k, np.nan)
        ids = np.zeros(k, dtype=np.int64)
        for j, a in enumerate(objs):
            where = f"annotation {a.get('id', '?')}"
            box = np.asarray(validate.xywh(field(a, "bbox", path, where), path, where), dtype=np.float64)
            boxes[j] = box
            if a.get("vis_bbox") is not None:
                vis[j] = validate.xywh(a["vis_bbox"], path, where, "vis_bbox")
            crowd[j] = bool(a.get("iscrowd", 0))
            ignore[j] = crowd[j] or bool(a.get("ignore", 0))
            cats[j] = CATEGORY_NAMES.get(names.get(validate.category_id(a["category_id"], path, where), "person"), OTHER)
            heights[j] = validate.number(a["height"], path, where, "height") if "height" in a else box[3]
            if "vis_ratio" in a:
                ratios[j] = validate.number(a["vis_ratio"], path, where, "vis_ratio")
            elif not np.isnan(vis[j, 0]) and box[2] * box[3] > 0:
                ratios[j] = vis[j, 2] * vis[j, 3] / (box[2] * box[3])
            ids[j] = validate.integer_id(a["id"], path, where, "annotation id") if "id" in a else 0
        records.append(
            ImageRecord(
                id=image_id,
                file_name=str(name),
                boxes=boxes,
                vis_boxes=vis,
                categories=cats,
                ignore=ignore,
                heights=heights,
                vis_ratios=ratios,
                ann_ids=ids,
                crowd=crowd,
                width=validate.image_size(im, "width", path, f"image {image_id}"),
                height=validate.image_size(im, "height", path, f"image {image_id}"),
            )
        )
    if by_image:
        raise PedcrowdError(f"{path}: annotation for unknown image id {next(iter(by_image))}")
    return records
