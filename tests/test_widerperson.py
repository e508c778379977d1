"""WiderPerson: classes 1-3 (pedestrian, rider, partially-visible person) are pedestrians,
4 (ignore region) and 5 (crowd) are ignored; for eval, data stats and training."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.data.config import DataConfig, GtFilterConfig, build_dataset
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN
from pedcrowd.formats.widerperson import read_widerperson

runner = CliRunner()

ANNOTATIONS = {
    "000040": "5\n1 10 20 40 120\n2 50 20 80 80\n3 100 10 130 70\n4 0 0 5 5\n5 140 0 200 60\n",
    "000041": "1\n1 0 0 30 100\n",
    "000050": "0\n",
}


@pytest.fixture
def widerperson(tmp_path):
    root = tmp_path / "WiderPerson"
    (root / "Annotations").mkdir(parents=True)
    (root / "Images").mkdir()
    for name, text in ANNOTATIONS.items():
        (root / "Annotations" / f"{name}.jpg.txt").write_text(text)
        cv2.imwrite(str(root / "Images" / f"{name}.jpg"), np.zeros((150, 220, 3), np.uint8))
    (root / "train.txt").write_text("000040\n000050\n")
    (root / "val.txt").write_text("000041\n000040\n")
    return root


def test_classes_and_boxes(widerperson):
    records = read_widerperson(widerperson / "val.txt")
    assert [r.file_name for r in records] == ["000041.jpg", "000040.jpg"] and [r.id for r in records] == [1, 2]
    rec = records[1]
    np.testing.assert_array_equal(rec.boxes, [[10, 20, 30, 100], [50, 20, 30, 60], [100, 10, 30, 60],
                                              [0, 0, 5, 5], [140, 0, 60, 60]])
    assert list(rec.categories) == [PEDESTRIAN, PEDESTRIAN, PEDESTRIAN, IGNORE_REGION, GROUP]
    assert list(rec.ignore) == [False, False, False, True, True]
    assert len(read_widerperson(widerperson / "Annotations")) == 3


def test_eval_counts_classes_1_to_3(widerperson, tmp_path):
    dets = [{"file_name": "000040.jpg", "bbox": [10, 20, 30, 100], "score": 0.9},
            {"file_name": "000040.jpg", "bbox": [145, 5, 30, 50], "score": 0.8},  # inside the crowd box
            {"file_name": "000041.jpg", "bbox": [0, 0, 30, 100], "score": 0.7}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    result = runner.invoke(app, ["eval", "--gt", str(widerperson / "val.txt"), "--dets", str(tmp_path / "dets.json"),
                                 "--setup", "All", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["results"]["All"]
    # 4 pedestrians (classes 1, 2, 3 and image 41's), 2 found, the crowd detection ignored
    assert got["n_gt"] == 4 and got["n_images"] == 2
    # no false positive: miss rate 2/4 at every FPPI (an FP from the crowd box would give 0.75
    # below FPPI 0.5)
    assert got["mr"] == pytest.approx(0.5)
    stats = runner.invoke(app, ["data", "stats", str(widerperson), "--format", "widerperson", "--json",
                                "--samples", "0"])
    numbers = json.loads(stats.stdout)
    assert numbers["pedestrians"] == 4 and numbers["ignore_regions"] == 1 and numbers["groups"] == 1


def test_training_set(widerperson):
    cfg = DataConfig(format="widerperson", root=str(widerperson), gt_filter=GtFilterConfig(min_height=50))
    data = build_dataset(cfg, "train", train=False)
    assert len(data) == 2
    image, target = data[0]
    assert tuple(image.shape) == (3, 150, 220)
    assert target["boxes"].tolist() == [[10, 20, 40, 120], [50, 20, 80, 80], [100, 10, 130, 70]]
    assert target["ignore_boxes"].tolist() == [[0, 0, 5, 5], [140, 0, 200, 60]]
    assert len(data[1][1]["boxes"]) == 0


def test_bad_file_is_one_line(widerperson):
    (widerperson / "Annotations" / "000041.jpg.txt").write_text("2\n1 0 0 30 100\n")
    with pytest.raises(PedcrowdError, match=r"000041.jpg.txt: the first line says 2 objects, the file lists 1"):
        read_widerperson(widerperson / "val.txt")
