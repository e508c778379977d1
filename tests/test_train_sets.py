"""``data.train``: several training sets of different formats at once, each with its own root,
split and GT filter; two training iterations on real MOT17 frames (../shared/data/mot17mini)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.config import build_dataset
from pedcrowd.engine.config import Config, apply_overrides, config_to_dict, load_config
from pedcrowd.engine.metrics import read_metrics
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.mot import read_mot
from pedcrowd.formats.records import PEDESTRIAN
from pedcrowd.reference.tiny import tiny_overrides

runner = CliRunner()


def coco_set(root):
    """One 80 x 120 image with two persons (50 and 100 px tall) and a car."""
    import cv2

    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "train" / "a.jpg"), np.zeros((120, 80, 3), np.uint8))
    anns = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [5, 10, 20, 50]},
        {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30, 10, 40, 100]},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]},
    ]
    (root / "annotations" / "instances_train.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 80, "height": 120}], "annotations": anns,
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))


def test_sets_of_different_formats_each_with_its_filter(shared_data, tmp_path):
    coco_set(tmp_path / "coco")
    mot = shared_data / "mot17mini"
    cfg = load_config(None, [
        f"data.train=[{{format: mot, root: '{mot}', gt_filter: {{min_height: 0, min_visibility: 0}}}},"
        f" {{format: coco, root: '{tmp_path / 'coco'}', gt_filter: {{min_height: 60, min_visibility: 0}}}}]",
    ])
    assert [s.format for s in cfg.data.train] == ["mot", "coco"]
    data = build_dataset(cfg.data, "train", train=False)
    records = read_mot(mot)
    assert len(data) == len(records) + 1 == 28
    # MOT: every pedestrian is an object under its filter (h >= 0, visible >= 0)
    for i in (0, 26):
        image, target = data[i]
        want = int(((records[i].categories == PEDESTRIAN) & ~records[i].ignore).sum())
        assert len(target["boxes"]) == want > 0
        assert tuple(image.shape[1:]) == (records[i].height, records[i].width)
    # COCO under its own filter: the 100 px person trains, the 50 px one is ignored
    image, target = data[27]
    assert tuple(image.shape) == (3, 120, 80)
    assert target["boxes"].tolist() == [[30, 10, 70, 110]]
    assert target["ignore_boxes"].tolist() == [[5, 10, 25, 60]]
    # the resolved config keeps the list (saved beside every checkpoint)
    saved = config_to_dict(cfg)["data"]["train"]
    assert saved[1]["root"] == str(tmp_path / "coco") and saved[1]["gt_filter"]["min_height"] == 60
    assert saved[0]["gt_filter"]["min_visibility"] == 0


def test_a_set_without_root_is_one_line():
    cfg = load_config(None, ["data.train=[{format: mot}]"])
    with pytest.raises(PedcrowdError, match=r"^data.train\[0\].root: missing"):
        build_dataset(cfg.data, "train", train=True)


@pytest.mark.slow
def test_two_iterations_on_real_mot17_frames(shared_data, tmp_path):
    """Train on MOT17-02 (4 frames, 1920 x 1080; batch 2: two iterations), validate on MOT17-05."""
    mot = shared_data / "mot17mini"
    cfg = apply_overrides(Config(), tiny_overrides(tmp_path / "unused"))
    raw = config_to_dict(cfg)
    raw["synth"] = None
    raw["data"].update({"format": "mot", "root": str(mot / "MOT17-05-FRCNN"),
                        "train": [{"format": "mot", "root": str(mot / "MOT17-02-FRCNN")}]})
    (tmp_path / "mot.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "mot.yaml"), "--out", str(run),
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["iterations"] == 2
    losses = [m["loss"] for m in read_metrics(run) if m["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    saved = json.loads((run / "val_eval.json").read_text())
    assert saved["results"]["All"]["n_images"] == 6


@pytest.mark.parametrize("name", ["coco_citypersons.yaml", "coco_crowdhuman_mot17.yaml"])
def test_coco_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    assert cfg.model.weights == "coco" and cfg.model.backbone == "resnet50_fpn"
    assert cfg.model.representation_size == 1024 and cfg.synth is None
    if name == "coco_crowdhuman_mot17.yaml":
        assert [s.format for s in cfg.data.train] == ["crowdhuman", "mot", "citypersons"]
        assert cfg.data.train[1].gt_filter.min_visibility == 0.1 and cfg.data.train[2].gt_filter is None


def test_each_training_set_is_checked_like_the_data_section():
    import dataclasses

    from pedcrowd.config_check import check_config
    from pedcrowd.data.config import GtFilterConfig, TrainSetConfig
    from pedcrowd.engine.config import Config
    from pedcrowd.errors import PedcrowdError

    def with_sets(*sets):
        cfg = Config()
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train=list(sets)))

    check_config(with_sets(TrainSetConfig(format="mot", root="x")))  # fine
    with pytest.raises(PedcrowdError, match=r"data\.train\[1\]: 'format'"):
        check_config(with_sets(TrainSetConfig(root="a"), TrainSetConfig(format="kitti", root="b")))
    with pytest.raises(PedcrowdError, match=r"data\.train\[0\]\.gt_filter\.min_height"):
        check_config(with_sets(TrainSetConfig(root="a", gt_filter=GtFilterConfig(min_height=float("nan")))))
