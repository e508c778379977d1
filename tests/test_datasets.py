"""Dataset loaders, the training-GT filter and the background policy.

Small annotation files in every format are written by the tests (with tiny
PNG/JPG images); the CityPersons label mapping is checked on the real
``anno_val.mat`` / ``val_gt.json`` against the counts of docs/evaluation.md section "CityPersons: ground truth and detections".
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader

from pedcrowd.data.config import DataConfig, build_dataset
from pedcrowd.data.datasets import (
    CaltechDataset,
    CityPersonsDataset,
    CocoDataset,
    CrowdHumanDataset,
    GtFilter,
    collate_fn,
    select_images,
    split_objects,
)
from pedcrowd.data.transforms import TrainTransform
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.crowdhuman import read_odgt
from pedcrowd.formats.records import ImageRecord


def _write_image(path: Path, h: int = 24, w: int = 32, bgr=(10, 20, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = bgr
    image[0, 0] = (255, 255, 255)
    assert cv2.imwrite(str(path), image)


# --- CrowdHuman .odgt -------------------------------------------------------------------------

ODGT_LINES = [
    {
        "ID": "273271,c9db000d5146c15",
        "gtboxes": [
            {
                "tag": "person",
                "fbox": [2, 3, 10, 20],
                "vbox": [2, 3, 10, 10],
                "extra": {"ignore": 0},
            },
            {
                "tag": "person",
                "fbox": [14, 0, 6, 12],
                "vbox": [14, 0, 6, 12],
                "extra": {"ignore": 1},
            },
            {"tag": "mask", "fbox": [0, 0, 4, 4], "vbox": [0, 0, 4, 4], "extra": {"ignore": 1}},
        ],
    },
    {"ID": "empty", "gtboxes": []},
    {"ID": "masks_only", "gtboxes": [{"tag": "mask", "fbox": [1, 1, 5, 5], "extra": {}}]},
]


def _crowdhuman(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "annotation_val.odgt"
    path.write_text("\n".join(json.dumps(x) for x in ODGT_LINES) + "\n\n")
    for line in ODGT_LINES:
        _write_image(root / "Images" / f"{line['ID']}.jpg")
    return path


def test_read_odgt(tmp_path):
    records = read_odgt(_crowdhuman(tmp_path))
    assert [r.id for r in records] == [1, 2, 3]
    assert [r.file_name for r in records] == [
        "273271,c9db000d5146c15.jpg",
        "empty.jpg",
        "masks_only.jpg",
    ]
    first = records[0]
    assert first.boxes.tolist() == [[2, 3, 10, 20], [14, 0, 6, 12], [0, 0, 4, 4]]
    assert first.categories.tolist() == ["pedestrian", "pedestrian", "ignore"]
    assert first.ignore.tolist() == [False, True, True]
    assert first.heights.tolist() == [20, 12, 4]
    assert first.vis_ratios.tolist() == [0.5, 1.0, 1.0]  # 10*10 / (10*20)
    # Annotation ids are unique over the file.
    assert first.ann_ids.tolist() == [1, 2, 3] and records[2].ann_ids.tolist() == [4]
    assert len(records[1]) == 0
    assert np.isnan(records[2].vis_boxes).all() and np.isnan(records[2].vis_ratios).all()


def test_read_odgt_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.odgt"
    bad.write_text(json.dumps(ODGT_LINES[1]) + "\n{not json\n")
    with pytest.raises(PedcrowdError, match=r"bad\.odgt:2"):
        read_odgt(bad)
    with pytest.raises(PedcrowdError, match="missing.odgt"):
        read_odgt(tmp_path / "missing.odgt")


def test_crowdhuman_dataset(tmp_path):
    _crowdhuman(tmp_path)
    ds = CrowdHumanDataset(tmp_path, "val")
    image, target = ds[0]
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    # BGR (10, 20, 200) on disk -> RGB in the tensor (JPEG: approximately).
    assert abs(image[0, 5, 5].item() - 200 / 255) < 0.05
    assert abs(image[2, 5, 5].item() - 10 / 255) < 0.05
    assert target["boxes"].tolist() == [[2, 3, 12, 23]]
    assert target["vis_boxes"].tolist() == [[2, 3, 12, 13]]
    assert target["labels"].tolist() == [1]
    assert target["ignore_boxes"].tolist() == [[14, 0, 20, 12], [0, 0, 4, 4]]
    assert target["image_id"] == 1 and target["file_name"] == "273271,c9db000d5146c15.jpg"
    # The empty image and the masks-only image are both background.
    assert ds.target(1)["boxes"].shape == (0, 4) and ds.target(1)["ignore_boxes"].shape == (0, 4)
    assert ds.target(2)["boxes"].shape == (0, 4) and ds.target(2)["ignore_boxes"].tolist() == [
        [1, 1, 6, 6]
    ]
    assert len(CrowdHumanDataset(tmp_path, "val", background="drop")) == 1


# --- the training-GT filter -------------------------------------------------------------------


def _record(rows, categories, ignore=None, vis_ratios=None, vis=None) -> ImageRecord:
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    k = len(boxes)
    return ImageRecord(
        id=1,
        file_name="x.png",
        boxes=boxes,
        vis_boxes=np.full((k, 4), np.nan) if vis is None else np.asarray(vis, dtype=np.float64),
        categories=np.asarray(categories, dtype=object),
        ignore=np.zeros(k, bool) if ignore is None else np.asarray(ignore, bool),
        heights=boxes[:, 3].copy(),
        vis_ratios=np.full(k, np.nan) if vis_ratios is None else np.asarray(vis_ratios, float),
    )


def test_split_objects_filter():
    record = _record(
        [
            [0, 0, 20, 50],  # h 50, vis 0.65: object (bounds inclusive)
            [0, 0, 20, 49],  # too short
            [0, 0, 20, 60],  # vis 0.64: too occluded
            [0, 0, 20, 60],  # flagged ignore by the format
            [5, 5, 10, 80],  # rider
            [5, 5, 30, 30],  # ignore region
            [5, 5, 0, 80],  # zero width: dropped everywhere
            [1, 2, 20, 100],  # vis unknown (NaN): counts as fully visible
        ],
        ["pedestrian"] * 4 + ["rider", "ignore", "pedestrian", "pedestrian"],
        ignore=[0, 0, 0, 1, 1, 1, 0, 0],
        vis_ratios=[0.65, 1, 0.64, 1, 1, 1, 1, np.nan],
        vis=[[0, 0, 20, 30]] + [[np.nan] * 4] * 7,
    )
    out = split_objects(record, GtFilter(min_height=50, min_visibility=0.65))
    assert out["boxes"].tolist() == [[0, 0, 20, 50], [1, 2, 21, 102]]
    # The unknown visible box becomes the full box.
    assert out["vis_boxes"].tolist() == [[0, 0, 20, 30], [1, 2, 21, 102]]
    assert out["ignore_boxes"].tolist() == [
        [0, 0, 20, 49],
        [0, 0, 20, 60],
        [0, 0, 20, 60],
        [5, 5, 15, 85],
        [5, 5, 35, 35],
    ]
    assert out["boxes"].dtype == np.float32
    promoted = split_objects(record, GtFilter(50, 0.65, promote=("rider",)))
    assert promoted["boxes"].tolist() == [[0, 0, 20, 50], [5, 5, 15, 85], [1, 2, 21, 102]]
    assert len(promoted["ignore_boxes"]) == 4


def test_gt_filter_rejects_unknown_category():
    with pytest.raises(PedcrowdError, match="cyclist"):
        GtFilter(promote=("cyclist",))


# --- background policy ------------------------------------------------------------------------


def test_select_images_policies():
    flags = [True, False, False, True, False, False, False, False, False, False]  # 8 background
    assert select_images(flags, "keep") == list(range(10))
    assert select_images(flags, "drop") == [0, 3]
    half = select_images(flags, "ratio", 0.5, seed=1)
    assert len(half) == 2 + 4 and {0, 3} <= set(half) and half == sorted(half)
    assert half == select_images(flags, "ratio", 0.5, seed=1)
    # Over seeds, every background image gets chosen sometimes (the choice is random).
    chosen = set().union(*(select_images(flags, "ratio", 0.25, seed=s) for s in range(30)))
    assert chosen == set(range(10))
    assert select_images(flags, "ratio", 0.0) == [0, 3]
    assert select_images(flags, "ratio", 1.0) == list(range(10))
    with pytest.raises(PedcrowdError, match="policy"):
        select_images(flags, "some")
    with pytest.raises(PedcrowdError, match="ratio"):
        select_images(flags, "ratio", 1.5)


# --- CityPersons ------------------------------------------------------------------------------

CP_IMAGES = [
    # (name, bbs rows [label, x, y, w, h, id, xv, yv, wv, hv])
    (
        "aachen_000000_000019_leftImg8bit.png",
        [[1, 2, 1, 8, 20, 1, 2, 1, 8, 10], [2, 12, 2, 8, 20, 2, 12, 2, 8, 20]],
    ),
    ("aachen_000001_000019_leftImg8bit.png", []),
    ("bochum_000000_000313_leftImg8bit.png", [[0, 4, 4, 10, 10, 0, 4, 4, 10, 10]]),
]


def _citypersons(root: Path, split: str = "val") -> Path:
    dtype = [("cityname", "O"), ("im_name", "O"), ("bbs", "O")]
    cells = np.empty((1, len(CP_IMAGES)), dtype=object)
    for i, (name, rows) in enumerate(CP_IMAGES):
        city = name.split("_")[0]
        cell = np.empty((1, 1), dtype=dtype)
        cell[0, 0] = (np.array([city]), np.array([name]), np.array(rows, np.uint16).reshape(-1, 10))
        cells[0, i] = cell
        _write_image(root / "leftImg8bit" / split / city / name)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / f"anno_{split}.mat"
    scipy.io.savemat(path, {f"anno_{split}_aligned": cells})
    return path


def test_citypersons_dataset_from_mat(tmp_path):
    _citypersons(tmp_path)
    ds = CityPersonsDataset(tmp_path, "val")
    assert len(ds) == 3 and [r.id for r in ds.records] == [1, 2, 3]
    image, target = ds[0]
    assert image.shape == (3, 24, 32)
    # PNG is lossless: exact RGB values, white top-left pixel.
    assert image[:, 5, 5].tolist() == pytest.approx([200 / 255, 20 / 255, 10 / 255])
    assert image[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert target["boxes"].tolist() == [[2, 1, 10, 21]]
    assert target["vis_boxes"].tolist() == [[2, 1, 10, 11]]
    assert target["ignore_boxes"].tolist() == [[12, 2, 20, 22]]  # the rider
    assert target["file_name"] == "aachen/aachen_000000_000019_leftImg8bit.png"
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["ignore_boxes"].shape == (0, 4)
    _, ignore_only = ds[2]
    assert ignore_only["boxes"].shape == (0, 4) and ignore_only["ignore_boxes"].tolist() == [
        [4, 4, 14, 14]
    ]
    # Ignore-only images are background: dropping keeps only the first image.
    dropped = CityPersonsDataset(tmp_path, "val", background="drop")
    assert [r.id for r in dropped.records] == [1]
    assert [r.id for r in dropped.all_records] == [1, 2, 3]
    riders = CityPersonsDataset(tmp_path, "val", gt_filter=GtFilter(promote=("rider",)))
    assert riders.target(0)["boxes"].tolist() == [[2, 1, 10, 21], [12, 2, 20, 22]]
    # Visibility 0.5 is below the demo filter: the pedestrian becomes an ignore box.
    strict = CityPersonsDataset(tmp_path, "val", gt_filter=GtFilter(10, 0.65))
    assert strict.target(0)["boxes"].shape == (0, 4)
    assert len(strict.target(0)["ignore_boxes"]) == 2


def test_citypersons_errors(tmp_path):
    with pytest.raises(PedcrowdError, match="anno_val.mat"):
        CityPersonsDataset(tmp_path, "val")
    _citypersons(tmp_path)
    missing = tmp_path / "leftImg8bit/val/bochum/bochum_000000_000313_leftImg8bit.png"
    missing.unlink()
    ds = CityPersonsDataset(tmp_path, "val")
    with pytest.raises(
        PedcrowdError, match="bochum_000000_000313_leftImg8bit.png: image not found"
    ):
        ds[2]
    missing.write_bytes(b"not a png")
    with pytest.raises(PedcrowdError, match="bochum_000000_000313.*cannot read"):
        ds[2]


def _raw_mat_rows(path: Path) -> np.ndarray:
    """All bbs rows of a CityPersons .mat, read directly (independent of the parser)."""
    cells = scipy.io.loadmat(path)["anno_val_aligned"].ravel()
    return np.concatenate([c[0, 0]["bbs"].astype(float).reshape(-1, 10) for c in cells])


def test_citypersons_real_val_label_mapping(shared_data):
    mat = shared_data / "citypersons" / "anno_val.mat"
    rows = _raw_mat_rows(mat)
    counts = {label: int((rows[:, 0] == label).sum()) for label in range(6)}
    # docs/evaluation.md section "CityPersons: ground truth and detections": pedestrian / ignore / rider / sitting / other / group.
    assert [counts[i] for i in (1, 0, 2, 3, 4, 5)] == [3157, 1631, 509, 185, 87, 226]

    def totals(ds):
        boxes = sum(len(ds.target(i)["boxes"]) for i in range(len(ds)))
        ignores = sum(len(ds.target(i)["ignore_boxes"]) for i in range(len(ds)))
        return boxes, ignores

    # No filter: exactly the pedestrians are objects, every other label an ignore box.
    for anno in (mat, shared_data / "citypersons" / "val_gt.json"):
        ds = CityPersonsDataset(shared_data / "citypersons", "val", annotations=anno)
        assert len(ds) == 500
        assert totals(ds) == (3157, 1631 + 509 + 185 + 87 + 226)
    riders = CityPersonsDataset(mat.parent, "val", gt_filter=GtFilter(promote=("rider",)))
    assert totals(riders) == (3157 + 509, 1631 + 185 + 87 + 226)

    # The demo filter (h >= 50, vis >= 0.65), counted independently on the raw rows.
    ped = rows[rows[:, 0] == 1]
    vis = ped[:, 8] * ped[:, 9] / (ped[:, 3] * ped[:, 4])
    reasonable = int(((ped[:, 4] >= 50) & (vis >= 0.65)).sum())
    assert 1000 < reasonable < 3157
    demo = CityPersonsDataset(mat.parent, "val", gt_filter=GtFilter(50, 0.65))
    assert totals(demo) == (reasonable, 5795 - reasonable)
    drop = CityPersonsDataset(mat.parent, "val", gt_filter=GtFilter(50, 0.65), background="drop")
    n_with_objects = sum(len(demo.target(i)["boxes"]) > 0 for i in range(500))
    assert len(drop) == n_with_objects < 500


# --- Caltech ----------------------------------------------------------------------------------


def _caltech(root: Path) -> None:
    files = {
        "set00/V000/I00000.txt": [
            "person 2 2 8 20 1 2 2 8 10 0 0",  # occluded: visible box given
            "people 12 2 10 10 0 0 0 0 0 0 0",
            "person? 1 1 3 3 0 0 0 0 0 0 0",
        ],
        "set00/V000/I00001.txt": [],
        "set06/V001/I00029.txt": ["person 4 4 6 15 0 0 0 0 0 1 0"],  # ign flag set
    }
    for name, lines in files.items():
        path = root / "annotations" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("% bbGt version=3\n" + "".join(line + "\n" for line in lines))
    _write_image(root / "images" / "set00" / "V000" / "I00000.jpg")
    _write_image(root / "images" / "set00_V000_I00001.jpg")  # the flat naming
    _write_image(root / "images" / "set06" / "V001" / "I00029.png")


def test_caltech_dataset(tmp_path):
    _caltech(tmp_path)
    train = CaltechDataset(tmp_path, "train")
    assert [r.file_name for r in train.records] == [
        "set00/V000/I00000.jpg",
        "set00/V000/I00001.jpg",
    ]
    image, target = train[0]
    assert image.shape == (3, 24, 32)
    assert target["boxes"].tolist() == [[2, 2, 10, 22]]
    assert target["vis_boxes"].tolist() == [[2, 2, 10, 12]]
    assert target["ignore_boxes"].tolist() == [[12, 2, 22, 12], [1, 1, 4, 4]]
    _, empty = train[1]
    assert empty["boxes"].shape == (0, 4) and empty["ignore_boxes"].shape == (0, 4)
    test = CaltechDataset(tmp_path, "test")
    assert [r.file_name for r in test.records] == ["set06/V001/I00029.jpg"]
    image, target = test[0]  # found as .png
    assert target["boxes"].shape == (0, 4) and target["ignore_boxes"].tolist() == [[4, 4, 10, 19]]
    assert len(CaltechDataset(tmp_path, "all")) == 3
    with pytest.raises(PedcrowdError, match="split"):
        CaltechDataset(tmp_path, "set03")


# --- COCO -------------------------------------------------------------------------------------


def test_coco_dataset(tmp_path):
    data = {
        "images": [
            {"id": 5, "file_name": "a.jpg", "width": 32, "height": 24},
            {"id": 9, "file_name": "b.jpg", "width": 32, "height": 24},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, 2, 5, 10], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [10, 2, 20, 20], "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 0},
            {"id": 4, "image_id": 9, "category_id": 3, "bbox": [0, 0, 30, 20], "iscrowd": 0},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    _write_image(tmp_path / "images" / "train" / "a.jpg")
    _write_image(tmp_path / "images" / "train" / "b.jpg")
    ds = CocoDataset(tmp_path, "train")
    _, target = ds[0]
    assert target["image_id"] == 5
    assert target["boxes"].tolist() == [[1, 2, 6, 12]]
    assert target["ignore_boxes"].tolist() == [[10, 2, 30, 22]]  # iscrowd; the car is not loaded
    assert ds.target(1)["boxes"].shape == (0, 4) and ds.target(1)["ignore_boxes"].shape == (0, 4)
    # Any category can be the one trained: here the cars.
    cars = CocoDataset(tmp_path, "train", category="car")
    assert [cars.target(i)["boxes"].tolist() for i in range(2)] == [[[0, 0, 30, 20]]] * 2


# --- config, determinism, loaders -------------------------------------------------------------


def test_build_dataset_from_config(tmp_path):
    _citypersons(tmp_path, "train")
    _citypersons(tmp_path, "val")
    cfg = DataConfig(format="citypersons", root=str(tmp_path))
    cfg.gt_filter.min_height = 0
    cfg.gt_filter.min_visibility = 0
    cfg.background.policy = "drop"
    cfg.augment.flip_prob = 1.0
    train = build_dataset(cfg, "train", train=True)
    assert len(train) == 1
    _, target = train[0]
    assert target["boxes"].tolist() == [[22, 1, 30, 21]]  # flipped in the 32-px-wide image
    val = build_dataset(cfg, "val", train=False)
    assert len(val) == 3 and val[0][1]["boxes"].tolist() == [[2, 1, 10, 21]]
    cfg.format = "kitti"
    with pytest.raises(PedcrowdError, match="kitti"):
        build_dataset(cfg, "val", train=False)
    cfg.format = "citypersons"
    cfg.augment.crop_policy = "shrink"
    with pytest.raises(PedcrowdError, match="crop_policy"):
        build_dataset(cfg, "train", train=True)


def test_augmentation_independent_of_workers_and_seeded(tmp_path):
    _crowdhuman(tmp_path)
    tf = TrainTransform(flip_prob=0.5, scale_range=(0.5, 1.5), crop_size=(16, 16), brightness=0.4)
    ds = CrowdHumanDataset(tmp_path, "val", transform=tf, seed=4)
    ds.set_epoch(2)
    serial = [ds[i] for i in range(len(ds))]
    again = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_fn)
    parallel = [pair for images, targets in loader for pair in zip(images, targets, strict=True)]
    for (a_img, a), (b_img, b), (c_img, c) in zip(serial, again, parallel, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_img, c_img)
        assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["boxes"], c["boxes"]) and torch.equal(
            a["ignore_boxes"], c["ignore_boxes"]
        )
    ds.set_epoch(3)
    assert any(not torch.equal(ds[i][0], serial[i][0]) for i in range(len(ds)))


def test_collate_fn_keeps_lists():
    a = (torch.zeros(3, 4, 5), {"image_id": 1})
    b = (torch.zeros(3, 6, 2), {"image_id": 2})
    images, targets = collate_fn([a, b])
    assert [im.shape[-1] for im in images] == [5, 2]
    assert [t["image_id"] for t in targets] == [1, 2]


def test_bgr_to_tensor_is_the_one_image_conversion(tmp_path):
    from pedcrowd.data.datasets import bgr_to_tensor, read_image

    bgr = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)  # [1, 2, 3]
    t = bgr_to_tensor(bgr)
    assert t.dtype == torch.float32 and t.shape == (3, 1, 2) and t.is_contiguous()
    expected = torch.tensor([[[255.0, 30.0]], [[128.0, 20.0]], [[0.0, 10.0]]]) / 255.0
    assert torch.equal(t, expected)
    # read_image decodes the file and converts it with the same function, bit for bit.
    _write_image(tmp_path / "im.png", bgr=(10, 20, 200))
    image = read_image(tmp_path / "im.png")
    assert torch.equal(image, bgr_to_tensor(cv2.imread(str(tmp_path / "im.png"))))
    assert image.is_contiguous() and image.shape == (3, 24, 32)
    assert torch.equal(image[:, 0, 1], torch.tensor([200.0, 20.0, 10.0]) / 255.0)  # RGB
