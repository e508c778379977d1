"""A dataset format is one reader and one registry entry: training, ``pedcrowd eval``,
``infer --gt`` and ``data stats`` all read it through :mod:`pedcrowd.formats.registry`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.eval import evaluate, load_ground_truth
from pedcrowd.formats import registry
from pedcrowd.formats.records import PEDESTRIAN, ImageRecord

runner = CliRunner()


def read_tsv(path: str | Path) -> list[ImageRecord]:
    """A made-up format: ``file_name<TAB>x y w h`` per pedestrian, one line each."""
    by_name: dict[str, list[list[float]]] = {}
    for line in Path(path).read_text().splitlines():
        name, box = line.split("\t")
        by_name.setdefault(name, []).append([float(v) for v in box.split()])
    records = []
    for i, (name, boxes) in enumerate(sorted(by_name.items()), start=1):
        b = np.array(boxes).reshape(-1, 4)
        k = len(b)
        records.append(ImageRecord(
            id=i, file_name=name, boxes=b, vis_boxes=np.full((k, 4), np.nan),
            categories=np.full(k, PEDESTRIAN, dtype=object), ignore=np.zeros(k, bool),
            heights=b[:, 3].copy(), vis_ratios=np.full(k, np.nan),
            ann_ids=np.arange(1, k + 1), crowd=np.zeros(k, bool),
        ))
    return records


@pytest.fixture()
def tsv_format(monkeypatch, tmp_path):
    # The one registry line a new format needs (here added for the test only).
    fmt = registry.DatasetFormat(
        "tsv", read_tsv, (".tsv",),
        annotations=("{root}/{split}.tsv",), images=("{root}/images",),
    )
    monkeypatch.setitem(registry.FORMATS, "tsv", fmt)
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    import cv2

    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / "images" / name), np.zeros((120, 80, 3), np.uint8))
    (root / "val.tsv").write_text("a.png\t10 10 20 60\na.png\t40 20 20 60\nb.png\t5 5 30 70\n")
    return root


def test_new_format_reads_everywhere(tsv_format):
    from pedcrowd.data.config import DataConfig, build_dataset
    from pedcrowd.data.stats import dataset_stats

    root = tsv_format
    ds = build_dataset(DataConfig(format="tsv", root=str(root), val_split="val"), "val", train=False)
    assert [r.file_name for r in ds.records] == ["a.png", "b.png"]
    image, target = ds[1]
    assert image.shape == (3, 120, 80) and target["boxes"].tolist() == [[5, 5, 35, 75]]
    gt = load_ground_truth(root / "val.tsv")
    assert gt.kind == "tsv" and [len(r) for r in gt.records] == [2, 1]
    assert dataset_stats(root, "val", "tsv")["pedestrians"] == 3
    # Detections equal to the GT: every Reasonable pedestrian (h >= 50) found, MR 0.
    dets = [
        {"image_id": r.id, "category_id": 1, "bbox": list(b), "score": 0.9}
        for r in gt.records for b in r.boxes.tolist()
    ]
    (root / "dets.json").write_text(json.dumps(dets))
    result = runner.invoke(
        app, ["eval", "--gt", str(root / "val.tsv"), "--dets", str(root / "dets.json"), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["results"]["Reasonable"]
    assert doc["mr"] == 0.0 and doc["n_gt"] == 3


def test_eval_reads_crowdhuman_odgt(tmp_path):
    from pedcrowd.formats.crowdhuman import read_odgt

    odgt = tmp_path / "annotation_val.odgt"
    lines = [
        {"ID": "p1", "gtboxes": [
            {"tag": "person", "fbox": [10, 10, 30, 80], "vbox": [10, 10, 30, 80], "extra": {}},
            {"tag": "person", "fbox": [60, 10, 30, 80], "vbox": [60, 10, 30, 80], "extra": {}},
            {"tag": "mask", "fbox": [200, 0, 50, 50], "extra": {}},
        ]},
        {"ID": "p2", "gtboxes": []},
    ]
    odgt.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    # One of the two pedestrians found, one false positive in the mask (ignored) and one elsewhere.
    dets = [
        {"file_name": "p1.jpg", "category_id": 1, "bbox": [10, 10, 30, 80], "score": 0.9},
        {"file_name": "p1.jpg", "category_id": 1, "bbox": [205, 5, 30, 60], "score": 0.8},
        {"file_name": "p2.jpg", "category_id": 1, "bbox": [0, 0, 30, 80], "score": 0.7},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    gt = load_ground_truth(odgt)
    assert gt.kind == "crowdhuman"
    # the CityPersons protocol on .odgt GT only when asked for (the default is crowdhuman's, issue 23)
    result = runner.invoke(app, ["eval", "--gt", str(odgt), "--dets", str(tmp_path / "dets.json"), "--json",
                                 "--protocol", "citypersons"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["results"]["Reasonable"]
    # By hand: 2 images, 2 GT; the TP at score 0.9, then one FP (the masked one is ignored):
    # FPPI 0 then 0.5 with recall 0.5 at both points, so 0.5 at every reference.
    assert got["n_gt"] == 2 and got["recall_at_fppi"] == [0.5] * 9
    assert got["mr"] == pytest.approx(0.5, abs=1e-12)
    direct = evaluate(read_odgt(odgt), {1: (np.array([[10.0, 10, 30, 80], [205, 5, 30, 60]]), np.array([0.9, 0.8])),
                                        2: (np.array([[0.0, 0, 30, 80]]), np.array([0.7]))})
    assert direct.results["Reasonable"].mr == got["mr"]
