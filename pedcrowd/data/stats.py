"""The numbers a user checks first on a data set, and sample drawings.

Works on any set in a registered format's layout (:mod:`pedcrowd.formats.registry`);
by default CityPersons (the real one or a synthetic one):
``ROOT/annotations/anno_<split>.mat`` and ``ROOT/leftImg8bit/<split>/CITY/*.png``.

Shapes: K = number of annotated objects of one image; boxes are ``xywh`` as in
the files, converted to ``xyxy`` for the overlap arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pedcrowd.box_np import box_iou, xywh_to_xyxy
from pedcrowd.errors import PedcrowdError
from pedcrowd.eval.setups import CITYPERSONS_SETUPS
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, ImageRecord
from pedcrowd.formats.registry import dataset_format

# BGR colours of the sample drawings (full box, visible box, ignore region, group).
FULL_COLOR = (60, 220, 60)
VISIBLE_COLOR = (255, 170, 0)
IGNORE_COLOR = (230, 40, 230)  # magenta: grey vanished on light posters
GROUP_COLOR = (40, 40, 230)


def load_split(root: str | Path, split: str, format: str = "citypersons") -> list[ImageRecord]:
    """Records of one split of a data set in ``format``'s layout (the format's own reader)."""
    fmt = dataset_format(format)
    return fmt.prepare_training(fmt.read(fmt.find_annotations(root, split)), split, {})


def dataset_stats(root: str | Path, split: str = "val", format: str = "citypersons") -> dict:
    """Counts of one split of a data set in ``format``'s layout.

    Returns:
        a flat dict: ``images``, ``pedestrians``, ``empty_images`` (no
        annotation at all), ``images_without_pedestrians``, ``ignore_regions``,
        ``groups``, ``other_ignored`` (riders, sitting, pedestrians flagged ignore, ...), ``setups``
        (CityPersons setup name -> pedestrians inside it), ``heavy_to_reasonable``
        (``Reasonable_occ=heavy`` / ``Reasonable``), ``boxes_per_image`` (mean
        pedestrians), ``max_boxes_per_image``, ``overlap_pairs`` (pedestrian pairs
        in one image with IoU > 0.5), ``height`` (min / median / max of pedestrians),
        ``mean_visibility``.
    """
    records = load_split(root, split, format)
    setups = {name: 0 for name in CITYPERSONS_SETUPS}
    n_ped, pairs, per_image, heights, vis = 0, 0, [], [], []
    counts = {"ignore_regions": 0, "groups": 0, "other_ignored": 0}
    empty = no_ped = 0
    for rec in records:
        # a pedestrian the format flags as ignored (COCO iscrowd/ignore, CityPersons JSON
        # ignore) is not one the evaluation counts: it is an "other ignored" box here too
        ped = (rec.categories == PEDESTRIAN) & ~rec.ignore
        counts["ignore_regions"] += int((rec.categories == IGNORE_REGION).sum())
        counts["groups"] += int((rec.categories == GROUP).sum())
        counts["other_ignored"] += int(
            (~ped & ~np.isin(rec.categories, [IGNORE_REGION, GROUP])).sum()
        )
        empty += len(rec) == 0
        no_ped += not ped.any()
        n_ped += int(ped.sum())
        per_image.append(int(ped.sum()))
        h, v = rec.heights[ped], rec.vis_ratios[ped]
        heights.append(h)
        vis.append(v)
        for name, setup in CITYPERSONS_SETUPS.items():
            setups[name] += int(setup.contains(h, v).sum())
        if ped.sum() > 1:
            boxes = xywh_to_xyxy(rec.boxes[ped])
            iou = box_iou(boxes, boxes)
            pairs += int(np.triu(iou > 0.5, k=1).sum())
    h = np.concatenate(heights) if heights else np.zeros(0)
    v = np.concatenate(vis) if vis else np.zeros(0)
    reasonable = setups.get("Reasonable", 0)
    return {
        "split": split,
        "images": len(records),
        "pedestrians": n_ped,
        "empty_images": int(empty),
        "images_without_pedestrians": int(no_ped),
        **counts,
        "setups": setups,
        "heavy_to_reasonable": setups.get("Reasonable_occ=heavy", 0) / reasonable
        if reasonable
        else 0.0,
        "boxes_per_image": float(np.mean(per_image)) if per_image else 0.0,
        "max_boxes_per_image": int(max(per_image, default=0)),
        "overlap_pairs": pairs,
        "height": {
            "min": float(h.min()) if h.size else 0.0,
            "median": float(np.median(h)) if h.size else 0.0,
            "max": float(h.max()) if h.size else 0.0,
        },
        "mean_visibility": float(np.mean(v)) if v.size else 0.0,
    }


def draw_annotations(image: np.ndarray, rec: ImageRecord) -> np.ndarray:
    """A copy of ``image`` with full boxes (green), visible boxes (orange-blue),
    ignore regions (magenta) and groups (red) drawn.

    Args:
        image: [H, W, 3] uint8 BGR.
        rec: its annotations.
    """
    import cv2

    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 700))
    for box, vbox, cat in zip(
        xywh_to_xyxy(rec.boxes),
        xywh_to_xyxy(np.nan_to_num(rec.vis_boxes)),
        rec.categories,
        strict=True,
    ):
        x0, y0, x1, y1 = (int(round(c)) for c in box)
        if cat == PEDESTRIAN:
            vx0, vy0, vx1, vy1 = (int(round(c)) for c in vbox)
            cv2.rectangle(out, (vx0, vy0), (vx1, vy1), VISIBLE_COLOR, thick)
            cv2.rectangle(out, (x0, y0), (x1, y1), FULL_COLOR, thick)
        else:
            color = GROUP_COLOR if cat == GROUP else IGNORE_COLOR
            cv2.rectangle(out, (x0, y0), (x1, y1), color, thick)
    return out


def write_samples(
    root: str | Path, split: str, out_dir: str | Path, n: int = 6, format: str = "citypersons"
) -> list[Path]:
    """Draw the annotations on ``n`` images spread evenly over the split and save them.

    Prefers images with pedestrians so the samples show something.

    Returns:
        the written PNG paths.
    """
    import cv2

    fmt = dataset_format(format)
    records = load_split(root, split, format)
    image_root = fmt.find_images(root, split)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PedcrowdError(f"{out_dir}: cannot create the samples folder ({e.strerror or e})") from None
    with_people = [r for r in records if ((r.categories == PEDESTRIAN) & ~r.ignore).any()] or records
    if not with_people or n <= 0:
        return []
    picks = np.unique(
        np.linspace(0, len(with_people) - 1, min(n, len(with_people))).round().astype(int)
    )
    written = []
    for i in picks:
        rec = with_people[int(i)]
        candidates = fmt.image_paths(image_root, rec)
        path = next((p for p in candidates if p.is_file()), candidates[0])
        image = cv2.imread(str(path))
        if image is None:
            raise PedcrowdError(f"{path}: missing or unreadable image")
        # the whole relative name: MOT17-02/img1/000001.jpg and MOT17-04/img1/000001.jpg
        # (Caltech's I00029.jpg of every video) must not overwrite each other
        flat = Path(rec.file_name).with_suffix("").as_posix().replace("/", "_")
        target = out_dir / f"{split}_{flat}.png"
        if not cv2.imwrite(str(target), draw_annotations(image, rec)):
            raise PedcrowdError(f"{target}: cannot write the sample image")
        written.append(target)
    return written
