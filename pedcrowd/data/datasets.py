"""Training datasets over the parsed annotations of each format.

Each dataset wraps the :class:`~pedcrowd.formats.records.ImageRecord` list
its format's parser returns (the same one the evaluator reads) and turns a
record into a training target:

* the training-GT filter (:class:`GtFilter`) decides which annotations are
  objects; everything else that has an area becomes an ignore box, a region
  whose anchors/RoIs are neither positive nor negative;
* the background policy (:func:`select_images`) keeps, drops or subsamples
  the images left without objects;
* a paired transform (:mod:`pedcrowd.data.transforms`) augments image and
  boxes together, with randomness derived from ``(seed, epoch, index)``.

``dataset[i]`` is ``(image, target)``: image float32 [3, H, W] RGB in [0, 1];
target ``boxes`` [K, 4] float32 xyxy full body, ``vis_boxes`` [K, 4],
``labels`` [K] int64 (1 = pedestrian), ``ignore_boxes`` [M, 4] float32 xyxy,
``image_id`` int, ``file_name`` str.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pedcrowd.box_np import xywh_to_xyxy
from pedcrowd.data.transforms import Target, sample_rng
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.records import CATEGORIES, PEDESTRIAN, ImageRecord
from pedcrowd.formats.registry import dataset_format

Transform = Callable[[torch.Tensor, Target, np.random.Generator], tuple[torch.Tensor, Target]]

BACKGROUND_POLICIES = ("keep", "drop", "ratio")


@dataclass(frozen=True)
class GtFilter:
    """Which annotations are training objects.

    An annotation is an object when it is a pedestrian the format does not
    flag as ignored, or its category is in ``promote`` (e.g. ``("rider",)``),
    and its height >= ``min_height`` and visible ratio >= ``min_visibility``.
    An unknown visible ratio (no visible box in the format) counts as fully visible.

    Attributes:
        min_height: pixels, on the format's height (CityPersons ``height``).
        min_visibility: visible fraction of the full box, 0..1.
        promote: categories (see :data:`~pedcrowd.formats.records.CATEGORIES`)
            trained as pedestrians instead of being ignored.
    """

    min_height: float = 0.0
    min_visibility: float = 0.0
    promote: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.promote) - set(CATEGORIES))
        if unknown:
            raise PedcrowdError(
                f"data.gt_filter.promote: unknown categories {unknown}; choose from {list(CATEGORIES)}"
            )


def split_objects(record: ImageRecord, gt_filter: GtFilter) -> dict[str, np.ndarray]:
    """Apply the training-GT filter to one record.

    Returns:
        ``boxes`` [K, 4], ``vis_boxes`` [K, 4] (the full box where the format
        has no usable visible box) and ``ignore_boxes`` [M, 4], float32 xyxy.
        Boxes with zero width or height are dropped from both sets.
    """
    boxes = xywh_to_xyxy(record.boxes)  # [N, 4]
    vis = xywh_to_xyxy(record.vis_boxes)  # [N, 4], NaN rows where unknown
    cats = np.asarray(record.categories, dtype=object)
    nonempty = (record.boxes[:, 2] > 0) & (record.boxes[:, 3] > 0)
    candidate = ((cats == PEDESTRIAN) & ~record.ignore) | np.isin(cats, list(gt_filter.promote))
    heights = np.where(np.isfinite(record.heights), record.heights, record.boxes[:, 3])
    # Caltech writes inf for "no occlusion box" and other formats NaN for "no
    # visible box": both mean the annotator saw the whole person.
    ratios = np.where(np.isfinite(record.vis_ratios), record.vis_ratios, 1.0)
    is_object = (
        candidate
        & nonempty
        & (heights >= gt_filter.min_height)
        & (ratios >= gt_filter.min_visibility)
    )
    vis_ok = (
        np.isfinite(vis).all(axis=1) & (record.vis_boxes[:, 2] > 0) & (record.vis_boxes[:, 3] > 0)
    )
    vis = np.where(vis_ok[:, None], vis, boxes)
    return {
        "boxes": boxes[is_object].astype(np.float32),
        "vis_boxes": vis[is_object].astype(np.float32),
        "ignore_boxes": boxes[~is_object & nonempty].astype(np.float32),
    }


def select_images(
    has_objects: Sequence[bool], policy: str = "keep", ratio: float = 1.0, seed: int = 0
) -> list[int]:
    """Indices of the images to train on under a background-image policy.

    Args:
        has_objects: [N] whether image i has at least one object after the
            GT filter (ignore-only images are background).
        policy: ``keep`` all, ``drop`` every background image, or ``ratio``:
            keep ``round(ratio * n_background)`` background images, chosen by
            a permutation seeded with ``seed``.
        ratio: fraction of background images kept under ``ratio``, 0..1.

    Returns:
        sorted indices into ``has_objects``.
    """
    if policy not in BACKGROUND_POLICIES:
        raise PedcrowdError(
            f"data.background.policy: {policy!r} is not one of {BACKGROUND_POLICIES}"
        )
    if not 0.0 <= ratio <= 1.0:
        raise PedcrowdError(f"data.background.ratio: {ratio} is not in [0, 1]")
    flags = np.asarray(has_objects, dtype=bool)
    positives = np.flatnonzero(flags)
    background = np.flatnonzero(~flags)
    if policy == "keep":
        return list(range(len(flags)))
    if policy == "drop":
        return positives.tolist()
    n_keep = round(ratio * len(background))
    chosen = np.random.default_rng(seed).permutation(background)[:n_keep]
    return sorted(positives.tolist() + chosen.tolist())


def bgr_to_tensor(image_bgr: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 BGR (as ``cv2.imread`` returns it) -> contiguous [3, H, W] float32 RGB in [0, 1].

    The one image conversion of pedcrowd: training, evaluation during training
    and ``pedcrowd infer`` all use it, so they feed the model the same bits.
    """
    # numpy, single-threaded: in pedcrowd infer's decode threads torch's OpenMP workers
    # would spin against the model's (14 ms instead of 1.7 ms an image on 2 busy cores).
    # Made contiguous while still uint8 (a quarter of the bytes of float32); the same bits
    # as torch's float().div_(255.0) (both IEEE float32 division).
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1))  # [3,H,W] uint8 RGB
    out = rgb.astype(np.float32)
    out /= np.float32(255.0)
    return torch.from_numpy(out)


def read_image(path: Path) -> torch.Tensor:
    """An image file as float32 [3, H, W] RGB in [0, 1]; PedcrowdError if missing or unreadable."""
    import cv2

    if not path.is_file():
        raise PedcrowdError(f"{path}: image not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PedcrowdError(f"{path}: cannot read the image (corrupt or unsupported format)")
    return bgr_to_tensor(bgr)


def collate_fn(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Images of different sizes stay a list, as torchvision's detectors expect."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class DetectionDataset(Dataset):
    """Images and training targets for a list of records.

    Args:
        records: every record of the split, as the parser returned them.
        image_root: directory the records' ``file_name`` is relative to.
        gt_filter: which annotations are objects.
        background: ``keep`` / ``drop`` / ``ratio`` (see :func:`select_images`).
        background_ratio: fraction of background images kept under ``ratio``.
        transform: paired augmentation called as ``transform(image, target, rng)``.
        seed: seeds the background choice and the augmentation.

    ``records`` are the records served (after the background policy), in
    order; ``all_records`` everything the annotation file lists.
    """

    collate_fn = staticmethod(collate_fn)

    def __init__(
        self,
        records: Sequence[ImageRecord],
        image_root: str | Path,
        *,
        gt_filter: GtFilter | None = None,
        background: str = "keep",
        background_ratio: float = 1.0,
        transform: Transform | None = None,
        seed: int = 0,
    ) -> None:
        self.image_root = Path(image_root)
        self.gt_filter = gt_filter = gt_filter or GtFilter()
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.all_records = list(records)
        self._objects = [split_objects(r, gt_filter) for r in self.all_records]
        has_objects = [len(o["boxes"]) > 0 for o in self._objects]
        self._indices = select_images(has_objects, background, background_ratio, seed)
        self.records = [self.all_records[i] for i in self._indices]

    def __len__(self) -> int:
        return len(self._indices)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draws; call before iterating each epoch."""
        self.epoch = epoch

    def image_candidates(self, record: ImageRecord) -> list[Path]:
        """Where the image of ``record`` may be; the first that exists is read."""
        return [self.image_root / record.file_name]

    def image_path(self, index: int) -> Path:
        candidates = self.image_candidates(self.records[index])
        # a file name such as ../../secret/x.png must not read outside the folder it is
        # relative to (a format may look in more than one place: MOT's root or its parent)
        name = os.path.normpath(self.records[index].file_name)
        if os.path.isabs(name) or name == os.pardir or name.startswith(os.pardir + os.sep):
            raise PedcrowdError(
                f"{self.image_root}: image {self.records[index].file_name!r} lies outside the image folder"
            )
        return next((p for p in candidates if p.is_file()), candidates[0])

    def target(self, index: int) -> Target:
        """The filtered, untransformed target of item ``index`` (reads no image)."""
        record = self.records[index]
        objects = self._objects[self._indices[index]]
        return {
            "boxes": torch.from_numpy(objects["boxes"].copy()),
            "vis_boxes": torch.from_numpy(objects["vis_boxes"].copy()),
            "labels": torch.ones(len(objects["boxes"]), dtype=torch.int64),
            "ignore_boxes": torch.from_numpy(objects["ignore_boxes"].copy()),
            "image_id": int(record.id),
            "file_name": record.file_name,
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = read_image(self.image_path(index))
        target = self.target(index)
        if self.transform is not None:
            # Keyed on the position in the annotation file, so that the
            # background policy does not shift other images' augmentations.
            rng = sample_rng(self.seed, self.epoch, self._indices[index])
            image, target = self.transform(image, target, rng)
        return image.contiguous(), target


class FormatDataset(DetectionDataset):
    """One split of a data set in a registered format's layout
    (:data:`pedcrowd.formats.registry.FORMATS`).

    Args:
        root: the data set directory.
        split: the layout's split name (``train``, ``val``, ...; Caltech also
            ``test`` and ``all``).
        format: the format's name; subclasses fix it.
        annotations: an explicit annotation file or folder instead of the layout's.
        images: an explicit image directory instead of the layout's.
        **kwargs: the format reader's options (COCO: ``category``, the category
            trained as pedestrians), then see :class:`DetectionDataset`.
    """

    format_name = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        format: str | None = None,
        annotations: str | Path | None = None,
        images: str | Path | None = None,
        **kwargs,
    ) -> None:
        self.format = fmt = dataset_format(format or self.format_name)
        options = {key: kwargs.pop(key) for key in fmt.options if key in kwargs}
        self.annotations = (
            Path(annotations) if annotations is not None else fmt.find_annotations(root, split)
        )
        records = fmt.prepare_training(fmt.read(self.annotations, **options), split, options)
        super().__init__(
            records, Path(images) if images is not None else fmt.find_images(root, split), **kwargs
        )

    def image_candidates(self, record: ImageRecord) -> list[Path]:
        return self.format.image_paths(self.image_root, record)


class ConcatDetectionDataset(torch.utils.data.ConcatDataset):
    """Several training sets served as one (``data.train``), in order, each with its own
    format, filter and augmentation draws.

    Image ids repeat across sets (each set numbers its own images); training does not
    use them. ``records``: every set's served records, in order.
    """

    collate_fn = staticmethod(collate_fn)

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        self.records = [r for d in datasets for r in d.records]

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)


class CityPersonsDataset(FormatDataset):
    """CityPersons: ``root/leftImg8bit/{split}/CITY/*_leftImg8bit.png`` with ``anno_{split}.mat``
    (or the evaluation JSON ``{split}_gt.json``) in ``root/annotations/`` or ``root/``."""

    format_name = "citypersons"


class CaltechDataset(FormatDataset):
    """Caltech: ``root/annotations/setXX/VYYY/I#####.txt`` (bbGt v3); images
    ``root/images/setXX/VYYY/I#####.jpg`` or ``root/images/setXX_VYYY_I#####.jpg``;
    split ``train`` (set00-05), ``test``/``val`` (set06-10) or ``all``."""

    format_name = "caltech"


class CrowdHumanDataset(FormatDataset):
    """CrowdHuman: ``root/annotation_{split}.odgt`` and ``root/Images/{ID}.jpg``."""

    format_name = "crowdhuman"


class CocoDataset(FormatDataset):
    """A COCO-style JSON ``root/annotations/instances_{split}.json`` (the ``category``
    option selects the pedestrians; ``iscrowd`` is ignored); images in the first of
    ``root/images/{split}``, ``root/{split}``, ``root/images``, ``root`` that exists."""

    format_name = "coco"
