"""``pedcrowd data synth`` and ``pedcrowd data stats`` through CliRunner on tiny sets."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.box_np import box_iou
from pedcrowd.cli import app
from pedcrowd.data.stats import dataset_stats
from pedcrowd.formats.citypersons import read_citypersons_mat
from pedcrowd.formats.citypersons_write import write_citypersons_mat
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, ImageRecord

runner = CliRunner()
SYNTH = [
    "data",
    "synth",
    "--images",
    "3",
    "--val-images",
    "2",
    "--height",
    "96",
    "--width",
    "160",
    "--seed",
    "5",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "set"
    result = runner.invoke(app, [*SYNTH, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_synth_writes_the_set_and_a_json_summary(tiny):
    out, result = tiny
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["images"] == {"train": 3, "val": 2} and summary["reused"] is False
    assert len(list((out / "leftImg8bit" / "train").rglob("*.png"))) == 3
    val = read_citypersons_mat(out / "annotations" / "anno_val.mat")
    assert summary["pedestrians"]["val"] == sum(
        int((r.categories == PEDESTRIAN).sum()) for r in val
    )
    image = cv2.imread(str(out / "leftImg8bit" / "val" / val[0].file_name))
    assert image.shape == (96, 160, 3)
    meta = json.loads((out / "synth.json").read_text())
    assert meta["params"]["density"] == 8.0 and meta["params"]["occlusion"] == 0.55


def test_synth_reuses_a_matching_set_and_regenerates_with_force(tiny):
    out, _ = tiny
    again = runner.invoke(app, [*SYNTH, "--out", str(out)])
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["reused"]
    forced = runner.invoke(app, [*SYNTH, "--out", str(out), "--force"])
    assert (
        forced.exit_code == 0 and not json.loads(forced.stdout.strip().splitlines()[-1])["reused"]
    )


def test_synth_density_and_occlusion_levels(tmp_path):
    out = tmp_path / "s"
    result = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--images",
            "1",
            "--val-images",
            "0",
            "--height",
            "96",
            "--width",
            "128",
            "--density",
            "high",
            "--occlusion",
            "0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    params = json.loads((out / "synth.json").read_text())["params"]
    assert params["density"] == 14.0 and params["occlusion"] == 0.3 and params["val_images"] == 0
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--density", "lots"])
    assert bad.exit_code == 2 and "--density 'lots'" in bad.output
    bad = runner.invoke(app, ["data", "synth", "--out", str(out), "--occlusion", "2"])
    assert bad.exit_code == 2 and "occlusion" in bad.output


def test_stats_json_and_table_and_samples(tiny, tmp_path):
    out, _ = tiny
    result = runner.invoke(app, ["data", "stats", str(out), "--json", "--samples", "0"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers == json.loads(json.dumps(dataset_stats(out, "val")))
    assert numbers["images"] == 2
    table = runner.invoke(
        app,
        [
            "data",
            "stats",
            str(out),
            "--split",
            "train",
            "--samples",
            "2",
            "--samples-out",
            str(tmp_path / "samples"),
        ],
    )
    assert table.exit_code == 0, table.output
    assert "Reasonable_occ=heavy" in table.stdout and "pairs with IoU > 0.5" in table.stdout
    assert len(list((tmp_path / "samples").glob("train_*.png"))) == 2
    # a samples folder that cannot be made is one line and exit 2
    blocked = tmp_path / "file"
    blocked.write_text("")
    bad = runner.invoke(app, ["data", "stats", str(out), "--samples-out", str(blocked / "s")])
    assert bad.exit_code == 2 and "cannot create the samples folder" in bad.stderr


def test_stats_on_a_missing_set_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["data", "stats", str(tmp_path)])
    assert result.exit_code == 2 and "anno_val.mat" in result.output


def test_stats_counts_hand_written_set(tmp_path):
    """Setup counts, overlaps and empty images of a hand-written annotation file."""
    ped = PEDESTRIAN
    recs = [
        ImageRecord(  # two pedestrians overlapping with IoU 0.6, one small, one heavy, a poster
            id=1,
            file_name="c/c_000000_000000_leftImg8bit.png",
            boxes=np.array(
                [
                    [0, 0, 40, 100],
                    [10, 0, 40, 100],
                    [100, 0, 24, 60],
                    [200, 0, 41, 100],
                    [300, 0, 20, 50],
                ],
                float,
            ),
            vis_boxes=np.array(
                [
                    [0, 0, 40, 100],
                    [10, 0, 40, 70],
                    [100, 0, 24, 60],
                    [200, 0, 41, 30],
                    [300, 0, 20, 50],
                ],
                float,
            ),
            categories=np.array([ped, ped, ped, ped, IGNORE_REGION], dtype=object),
        ),
        ImageRecord(id=2, file_name="c/c_000000_000001_leftImg8bit.png"),  # empty
        ImageRecord(  # only a group box
            id=3,
            file_name="c/c_000000_000002_leftImg8bit.png",
            boxes=np.array([[5, 5, 50, 30]], float),
            vis_boxes=np.zeros((1, 4)),
            categories=np.array([GROUP], dtype=object),
        ),
    ]
    (tmp_path / "annotations").mkdir()
    write_citypersons_mat(tmp_path / "annotations" / "anno_val.mat", recs, "val")
    s = dataset_stats(tmp_path, "val")
    assert s["images"] == 3 and s["pedestrians"] == 4
    assert s["empty_images"] == 1 and s["images_without_pedestrians"] == 2
    assert s["ignore_regions"] == 1 and s["groups"] == 1
    # heights 100, 100, 60, 100; visibility 1, 0.7, 1, 0.3
    assert s["setups"]["Reasonable"] == 3 and s["setups"]["Reasonable_small"] == 1
    assert s["setups"]["Reasonable_occ=heavy"] == 1 and s["setups"]["Bare"] == 2
    assert s["setups"]["Partial"] == 1 and s["setups"]["Heavy"] == 1
    # IoU of the first pair: 30 x 100 / (4000 + 4000 - 3000) = 0.6
    assert s["overlap_pairs"] == 1
    assert s["heavy_to_reasonable"] == pytest.approx(1 / 3)
    assert s["max_boxes_per_image"] == 4 and s["boxes_per_image"] == pytest.approx(4 / 3)


def test_sample_drawing_colours():
    from pedcrowd.data.stats import (
        FULL_COLOR,
        GROUP_COLOR,
        IGNORE_COLOR,
        VISIBLE_COLOR,
        draw_annotations,
    )

    rec = ImageRecord(
        id=1,
        file_name="c/c.png",
        boxes=np.array([[10, 10, 20, 50], [40, 5, 10, 10], [60, 30, 30, 20]], float),
        vis_boxes=np.array([[12, 10, 10, 30], [40, 5, 10, 10], [0, 0, 0, 0]], float),
        categories=np.array([PEDESTRIAN, IGNORE_REGION, GROUP], dtype=object),
    )
    out = draw_annotations(np.zeros((100, 100, 3), np.uint8), rec)
    assert tuple(out[10, 10]) == FULL_COLOR and tuple(out[60, 30]) == FULL_COLOR
    assert tuple(out[40, 12]) == VISIBLE_COLOR  # visible box bottom-left corner (y 40, x 12)
    assert tuple(out[5, 40]) == IGNORE_COLOR and tuple(out[50, 90]) == GROUP_COLOR
    assert out[30, 20].sum() == 0  # inside the boxes nothing is painted


def test_pairwise_iou_values():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    iou = box_iou(boxes, boxes)
    np.testing.assert_allclose(iou, [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]])


def test_box_iou_agrees_with_torchvision():
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (2, 30, 2))
    wh = rng.uniform(0, 20, (2, 30, 2))
    wh[0, :3] = 0  # degenerate boxes: union may be 0 against each other
    a, b = np.concatenate([xy, xy + wh], axis=2)
    want = tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    got = box_iou(a, b)
    np.testing.assert_allclose(got, np.nan_to_num(want), rtol=1e-12, atol=0)
    assert got.shape == (30, 30)
