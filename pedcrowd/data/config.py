"""The ``data:`` section of the training config and the dataset builder.

Plain dataclasses with commented defaults; the config loader composes
:class:`DataConfig` into the config tree. This module imports only the
standard library at import time (torch and cv2 load inside
:func:`build_dataset`), so the CLI stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from pedcrowd.config_check import check_config
from pedcrowd.errors import PedcrowdError

if TYPE_CHECKING:
    from pedcrowd.data.datasets import ConcatDetectionDataset, DetectionDataset

@dataclass
class SynthConfig:
    """The ``synth:`` section: parameters of a synthetic set (all saved in ``synth.json``;
    the generator is :mod:`pedcrowd.data.synth`)."""

    # the CPU demo trains on these at half resolution
    train_images: int = field(default=1000, metadata={"range": ">= 0"})
    val_images: int = field(default=200, metadata={"range": ">= 0"})
    # image size; people are 20 .. 0.78 * height px tall
    height: int = field(default=384, metadata={"range": "[64, 16384]"})
    width: int = field(default=768, metadata={"range": "[64, 16384]"})
    seed: int = field(default=0, metadata={"range": ">= 0"})
    # mean labelled pedestrians per (non-empty) image
    density: float = field(default=8.0, metadata={"range": "[0, 1000]"})
    # 0..1: share of people in overlapping groups, occluder rate
    occlusion: float = field(default=0.55, metadata={"range": "[0, 1]"})
    # 0..1: how far group members overlap; the next member stands
    # U(0.75 - overlap, 1.25 - overlap) box widths beside the last (clipped at 0), so the
    # default 0.5 gives 0.25..0.75 widths and 1.0 puts members right behind each other
    overlap: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # largest overlapping group (groups have 2 .. max_group members)
    max_group: int = field(default=4, metadata={"range": "[2, 1000]"})
    empty_fraction: float = field(default=0.06, metadata={"range": "[0, 1]"})  # images with nobody in them
    # mean dense far-away groups (label 5) per image
    group_boxes: float = field(default=0.35, metadata={"range": "[0, 1000]"})
    # mean posters with a person on them (label 0) per image
    posters: float = field(default=0.35, metadata={"range": "[0, 1000]"})

    def __post_init__(self) -> None:
        # the ranges above, for a SynthConfig built in Python or by ``pedcrowd data synth``
        # (the config loader checks them with the file and key named)
        check_config(self, "synth")

    def params(self) -> dict:
        return asdict(self)


# Named generator settings (``pedcrowd data synth --preset NAME``; a training config
# states the same values under ``synth:``, e.g. configs/crowd_benchmark.yaml). "crowded":
# denser, larger and tighter groups and more occluders, so that Reasonable_occ=heavy
# people and pedestrian pairs with IoU > 0.5 are common (numbers in docs/RESULTS.md).
SYNTH_PRESETS: dict[str, dict[str, float | int]] = {
    "default": {},
    "crowded": {"density": 14.0, "occlusion": 0.85, "overlap": 0.75, "max_group": 6,
                "empty_fraction": 0.08},
}


def synth_preset(name: str, **overrides) -> SynthConfig:
    """The :class:`SynthConfig` of preset ``name`` with ``overrides`` (other fields) applied."""
    if name not in SYNTH_PRESETS:
        raise PedcrowdError(f"--preset {name!r}: expected one of {', '.join(SYNTH_PRESETS)}")
    return SynthConfig(**{**SYNTH_PRESETS[name], **overrides})


@dataclass
class GtFilterConfig:
    """Which annotations are training objects; the rest become ignore boxes."""

    # NMS-Ped's demo setting (the Reasonable range); the papers' CityPersons
    # configs train on h >= 30, vis >= 0.45.
    min_height: float = field(default=50.0, metadata={"range": ">= 0"})
    min_visibility: float = field(default=0.65, metadata={"range": "[0, 1]"})
    # Categories trained as pedestrians instead of ignored:
    # rider, sitting, other, group, unsure, ignore.
    promote: list[str] = field(default_factory=list)


@dataclass
class BackgroundConfig:
    """Images with no object after the filter (ignore-only images included)."""

    policy: Literal["keep", "drop", "ratio"] = "keep"
    # with policy=ratio: fraction of background images kept
    ratio: float = field(default=0.5, metadata={"range": "[0, 1]"})


@dataclass
class AugmentConfig:
    """Training augmentation (validation data is never augmented)."""

    flip_prob: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # image scale factor drawn uniformly
    scale_range: tuple[float, float] = field(default=(1.0, 1.0), metadata={"range": "(0, 100]"})
    # (H, W) random crop; None = off
    crop_size: tuple[int, int] | None = field(default=None, metadata={"range": ">= 1"})
    crop_policy: Literal["keep", "clip", "ignore"] = "clip"  # cut boxes
    # with crop_policy=ignore: lost-area fraction
    crop_ignore_threshold: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # colour jitter strengths: factor in [1 - s, 1 + s]
    brightness: float = field(default=0.0, metadata={"range": "[0, 1]"})
    contrast: float = field(default=0.0, metadata={"range": "[0, 1]"})
    saturation: float = field(default=0.0, metadata={"range": "[0, 1]"})

    def validate(self) -> None:
        low, high = self.scale_range
        if low > high:
            raise ValueError(f"'scale_range' [{low}, {high}] must be ordered low, high")


@dataclass
class TrainSetConfig:
    """One entry of ``data.train``: a training set in its own format and layout."""

    format: str = "citypersons"  # any data.format (pedcrowd.formats.registry)
    root: str = ""  # its directory (required)
    split: str = "train"  # the layout's split name
    annotations: str | None = None  # explicit annotation file/folder instead of the layout's
    images: str | None = None  # explicit image directory instead of the layout's
    coco_category: str = "person"  # format coco: the category trained as pedestrians
    # which annotations are objects in this set; null: data.gt_filter
    gt_filter: GtFilterConfig | None = None

    def validate(self) -> None:
        """The set's format and promoted categories are known (as ``DataConfig``'s)."""
        _check_names(self.format, self.gt_filter.promote if self.gt_filter is not None else [])


def _check_names(format_name: str, promote: list[str]) -> None:
    """ValueError for an unknown data format or promoted category."""
    from pedcrowd.formats.records import CATEGORIES
    from pedcrowd.formats.registry import dataset_format

    try:
        dataset_format(format_name)
    except PedcrowdError as e:
        raise ValueError(str(e).replace("data.format: ", "'format' ", 1)) from None
    unknown = sorted(set(promote) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"'gt_filter.promote': unknown categories {unknown}; choose from {list(CATEGORIES)}")


@dataclass
class DataConfig:
    """Where the data is and how it becomes training targets."""

    # citypersons | mot | widerperson | caltech | crowdhuman | coco (pedcrowd.formats.registry)
    format: str = "citypersons"
    root: str = "data/synth"  # data set directory (pedcrowd data synth writes this layout)
    train_split: str = "train"  # split names as in the layout (Caltech: train | test | all)
    val_split: str = "val"
    # Explicit annotation files/directories instead of the layout's defaults.
    train_annotations: str | None = None
    val_annotations: str | None = None
    # Explicit image directories instead of the layout's defaults.
    train_images: str | None = None
    val_images: str | None = None
    coco_category: str = "person"  # COCO: the category trained as pedestrians
    # Several training sets at once (e.g. CrowdHuman + MOT17 + CityPersons), each with its
    # own format, root, split and GT filter; they replace format/root/train_* for training
    # (validation stays format/root/val_*). Empty: the one set above.
    train: list[TrainSetConfig] = field(default_factory=list)
    gt_filter: GtFilterConfig = field(default_factory=GtFilterConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # DataLoader workers; augmentations do not depend on it
    num_workers: int = field(default=2, metadata={"range": ">= 0"})
    # background choice and augmentation draws
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]"})

    def validate(self) -> None:
        """Names that must be known before anything is read (the reader checks the files)."""
        _check_names(self.format, self.gt_filter.promote)


def build_dataset(
    cfg: DataConfig, split: str, train: bool, *, seed: int | None = None
) -> DetectionDataset | ConcatDetectionDataset:
    """The dataset for one split of ``cfg``.

    Args:
        cfg: the data config.
        split: ``train`` or ``val`` (use ``cfg.train_split``/``cfg.val_split``
            and their annotation/image overrides; ``train`` with ``cfg.train`` set:
            those sets, concatenated), or any other split name of the layout (no overrides).
        train: apply the augmentation and the background policy; otherwise
            every image is served as it is.
        seed: overrides ``cfg.seed``.
    """
    from pedcrowd.data import datasets
    from pedcrowd.formats.registry import dataset_format

    if split == "train" and cfg.train:
        for k, s in enumerate(cfg.train):
            if not s.root:
                raise PedcrowdError(f"data.train[{k}].root: missing; every training set needs its directory")
        sets = [
            _format_dataset(
                dataset_format(s.format), s.root, s.split, s.annotations, s.images,
                {"coco_category": s.coco_category}, s.gt_filter or cfg.gt_filter, cfg, train,
                (cfg.seed if seed is None else seed) + k,
            )
            for k, s in enumerate(cfg.train)
        ]
        return datasets.ConcatDetectionDataset(sets)
    fmt = dataset_format(cfg.format)
    if split == "train":
        name, annotations, images = cfg.train_split, cfg.train_annotations, cfg.train_images
    elif split == "val":
        name, annotations, images = cfg.val_split, cfg.val_annotations, cfg.val_images
    else:
        name, annotations, images = split, None, None

    return _format_dataset(
        fmt, cfg.root, name, annotations, images, {"coco_category": cfg.coco_category},
        cfg.gt_filter, cfg, train, cfg.seed if seed is None else seed,
    )


def _format_dataset(fmt, root, split, annotations, images, fields: dict, gt_filter: GtFilterConfig,
                    cfg: DataConfig, train: bool, seed: int) -> DetectionDataset:
    """One :class:`~pedcrowd.data.datasets.FormatDataset`; ``fields``: the ``data:`` fields
    its format's reader options come from (``fmt.options``)."""
    from pedcrowd.data import datasets
    from pedcrowd.data.transforms import TrainTransform

    aug = cfg.augment
    transform = None
    if train:
        try:
            transform = TrainTransform(
                flip_prob=aug.flip_prob,
                scale_range=tuple(aug.scale_range),
                crop_size=tuple(aug.crop_size) if aug.crop_size is not None else None,
                crop_policy=aug.crop_policy,
                crop_ignore_threshold=aug.crop_ignore_threshold,
                brightness=aug.brightness,
                contrast=aug.contrast,
                saturation=aug.saturation,
            )
        except ValueError as exc:
            raise PedcrowdError(f"data.augment: {exc}") from None
    options = {key: fields[attr] for key, attr in fmt.options.items()}
    return datasets.FormatDataset(
        root, split, format=fmt.name, annotations=annotations, images=images, **options,
        gt_filter=datasets.GtFilter(gt_filter.min_height, gt_filter.min_visibility, tuple(gt_filter.promote)),
        background=cfg.background.policy if train else "keep",
        background_ratio=cfg.background.ratio,
        transform=transform,
        seed=seed,
    )
