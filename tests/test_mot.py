"""MOTChallenge sequences: the reader's semantics on hand-written rows, ``eval`` of a ``det.txt``
equal to the same GT written as CityPersons JSON, and the real MOT17 frames of
``../shared/data/mot17mini`` (test use only, never copied into the repository)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.formats.mot import read_mot
from pedcrowd.formats.records import IGNORE_REGION, PEDESTRIAN

runner = CliRunner()
SEQS = ("MOT17-02-FRCNN", "MOT17-05-FRCNN", "MOT17-10-FRCNN", "MOT17-11-FRCNN", "MOT17-13-FRCNN")


def write_sequence(root: Path, name: str, gt_rows: list[str], det_rows: list[str], frames=(1, 2),
                   size=(64, 48), seq_length=3) -> Path:
    """A tiny sequence: ``frames`` present in img1/ (of ``seq_length``), gray images of ``size`` (w, h)."""
    seq = root / name
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "det").mkdir()
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={seq_length}\n"
        f"imWidth={size[0]}\nimHeight={size[1]}\nimExt=.jpg\n"
    )
    for f in frames:
        cv2.imwrite(str(seq / "img1" / f"{f:06d}.jpg"), np.full((size[1], size[0], 3), 128, np.uint8))
    (seq / "gt" / "gt.txt").write_text("\n".join(gt_rows) + "\n")
    (seq / "det" / "det.txt").write_text("\n".join(det_rows) + "\n")
    return seq


GT_ROWS = [
    "1,1,10,5,10,30,1,1,0.75",  # pedestrian
    "1,2,-4,10,10,20,1,1,1.0",  # pedestrian clipped to x 0..6
    "1,3,30,0,8,16,0,1,0.5",  # class 1, flag 0: ignore region
    "1,4,40,0,8,16,0,2,1.0",  # person on vehicle: ignore
    "1,5,40,20,8,16,0,3,1.0",  # car: dropped
    "1,6,50,20,8,16,0,13,1.0",  # crowd: ignore
    "1,7,70,20,8,16,1,1,1.0",  # wholly outside the 64 px wide image: dropped
    "2,1,12,5,10,30,1,1,0.4",
    "2,8,20,5,8,16,0,7,1.0",  # static person: ignore
    "2,9,20,5,8,16,0,9,1.0",  # occluder: dropped
    "3,1,14,5,10,30,1,1,1.0",  # frame 3 has no image: not evaluated
]


def test_reader_semantics(tmp_path):
    seq = write_sequence(tmp_path, "MOT17-04-FRCNN", GT_ROWS, ["1,-1,10,5,10,30,0.9"])
    records = read_mot(seq)
    assert [r.file_name for r in records] == ["MOT17-04-FRCNN/img1/000001.jpg", "MOT17-04-FRCNN/img1/000002.jpg"]
    assert [r.id for r in records] == [1, 2] and (records[0].width, records[0].height) == (64, 48)
    first, second = records
    np.testing.assert_array_equal(
        first.boxes, [[10, 5, 10, 30], [0, 10, 6, 20], [30, 0, 8, 16], [40, 0, 8, 16], [50, 20, 8, 16]]
    )
    assert list(first.categories) == [PEDESTRIAN, PEDESTRIAN, IGNORE_REGION, IGNORE_REGION, IGNORE_REGION]
    assert list(first.ignore) == [False, False, True, True, True]
    np.testing.assert_array_equal(first.vis_ratios[:2], [0.75, 1.0])
    np.testing.assert_array_equal(first.heights, [30, 20, 16, 16, 16])
    assert list(second.categories) == [PEDESTRIAN, IGNORE_REGION] and second.vis_ratios[0] == 0.4
    # a folder of sequences: the same records, sequences in name order, ids running on
    write_sequence(tmp_path, "MOT17-02-FRCNN", ["1,1,1,1,5,5,1,1,1"], [], frames=(1,))
    both = read_mot(tmp_path)
    assert [r.file_name for r in both] == [
        "MOT17-02-FRCNN/img1/000001.jpg", "MOT17-04-FRCNN/img1/000001.jpg", "MOT17-04-FRCNN/img1/000002.jpg"
    ]
    assert [r.id for r in both] == [1, 2, 3]
    assert len({a for r in both for a in r.ann_ids}) == sum(len(r) for r in both)


def test_reader_errors_name_the_file(tmp_path):
    seq = write_sequence(tmp_path, "S", ["1,1,10,5,10,30,1,1"], [])  # 8 columns
    result = runner.invoke(app, ["eval", "--gt", str(seq), "--dets", str(seq / "det" / "det.txt")])
    assert result.exit_code == 2 and "gt.txt: line 1 has 8" in result.output
    (seq / "gt" / "gt.txt").unlink()
    result = runner.invoke(app, ["data", "stats", str(seq), "--format", "mot"])
    assert result.exit_code == 2 and "gt.txt: no ground truth" in result.output


def gt_as_citypersons_json(seq_dirs: list[Path], path: Path) -> dict[tuple[str, int], int]:
    """The GT of ``seq_dirs`` written as the CityPersons evaluation JSON by the issue's
    semantics, written out independently of the reader; returns (sequence, frame) -> image id."""
    images, anns, ids = [], [], {}
    for seq in seq_dirs:
        info = dict(line.split("=", 1) for line in (seq / "seqinfo.ini").read_text().split() if "=" in line)
        w, h = int(info["imWidth"]), int(info["imHeight"])
        frames = sorted(int(p.stem) for p in (seq / info["imDir"]).glob("*" + info["imExt"]))
        for frame in frames:
            ids[(seq.name, frame)] = len(images) + 1
            images.append({"id": len(images) + 1, "im_name": f"{seq.name}/img1/{frame:06d}.jpg",
                           "height": h, "width": w})
        for line in (seq / "gt" / "gt.txt").read_text().splitlines():
            f, _, x, y, bw, bh, flag, cls, vis = (float(v) for v in line.split(","))
            if (seq.name, int(f)) not in ids:
                continue
            ped = cls == 1 and flag == 1
            if not ped and cls not in (1, 2, 7, 8, 12, 13):
                continue
            x1, y1 = min(max(x, 0), w), min(max(y, 0), h)
            x2, y2 = min(max(x + bw, 0), w), min(max(y + bh, 0), h)
            if x2 <= x1 or y2 <= y1:
                continue
            anns.append({"id": len(anns) + 1, "image_id": ids[(seq.name, int(f))], "category_id": 1,
                         "iscrowd": 0, "ignore": int(not ped), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "vis_bbox": [x1, y1, x2 - x1, y2 - y1], "height": y2 - y1,
                         "vis_ratio": vis if ped else 1.0})
    path.write_text(json.dumps({"categories": [{"id": 1, "name": "pedestrian"}], "images": images,
                                "annotations": anns}))
    return ids


def dets_as_results_json(det_txt: Path, seq: str, ids: dict, path: Path) -> None:
    out = []
    for line in det_txt.read_text().splitlines():
        v = [float(x) for x in line.split(",")]
        if (seq, int(v[0])) in ids:
            out.append({"image_id": ids[(seq, int(v[0]))], "category_id": 1, "bbox": v[2:6], "score": v[6]})
    path.write_text(json.dumps(out))


def eval_json(gt: str, dets: str) -> dict:
    result = runner.invoke(app, ["eval", "--gt", gt, "--dets", dets, "--metric", "all", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_eval_as_written_equals_citypersons_json(tmp_path, monkeypatch, caplog):
    """``pedcrowd eval --gt MOT17-04-FRCNN --dets MOT17-04-FRCNN/det/det.txt``, relative paths,
    as the issue writes it; a detection on frame 3 (no image) is left out with a note."""
    dets = ["1,-1,10,5,10,30,0.9,-1,-1,-1", "1,-1,0,10,7,20,0.8,-1,-1,-1", "1,-1,40,20,8,16,0.7,-1,-1,-1",
            "2,-1,12,5,10,30,0.6,-1,-1,-1", "2,-1,30,30,9,9,0.95,-1,-1,-1", "3,-1,14,5,10,30,0.99,-1,-1,-1"]
    gt_rows = [r.replace(",30,", ",60,") if r.startswith(("1,1,", "2,1,")) else r for r in GT_ROWS]
    seq = write_sequence(tmp_path, "MOT17-04-FRCNN", gt_rows, dets, size=(64, 96))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        got = eval_json("MOT17-04-FRCNN", "MOT17-04-FRCNN/det/det.txt")
    assert "1 detections on 1 frames with no image" in caplog.text
    ids = gt_as_citypersons_json([seq], tmp_path / "val_gt.json")
    dets_as_results_json(seq / "det" / "det.txt", seq.name, ids, tmp_path / "dets.json")
    want = eval_json("val_gt.json", "dets.json")
    assert got == want
    # Reasonable: the 60 px pedestrian of frame 1 (visible 0.75; frame 2's is 0.4 visible);
    # All (h >= 20, visible >= 0.2) adds frame 2's and the clipped 20 px one
    assert got["results"]["Reasonable"]["n_gt"] == 1 and got["results"]["All"]["n_gt"] == 3


@pytest.mark.parametrize("seq", SEQS)
def test_real_det_txt_equals_citypersons_json(shared_data, tmp_path, seq):
    folder = shared_data / "mot17mini" / seq
    got = eval_json(str(folder), str(folder / "det" / "det.txt"))
    ids = gt_as_citypersons_json([folder], tmp_path / "val_gt.json")
    dets_as_results_json(folder / "det" / "det.txt", seq, ids, tmp_path / "dets.json")
    assert got == eval_json(str(tmp_path / "val_gt.json"), str(tmp_path / "dets.json"))
    assert got["results"]["All"]["n_gt"] > 0


def test_real_folder_of_sequences(shared_data, tmp_path):
    """The five sequences as one set: every frame present, names unique; one det.txt is
    matched to its own sequence (the folder it sits in)."""
    root = shared_data / "mot17mini"
    records = read_mot(root)
    frames = {s: len(list((root / s / "img1").glob("*.jpg"))) for s in SEQS}
    assert len(records) == sum(frames.values()) == 27
    assert len({r.file_name for r in records}) == 27
    # pedestrians: class 1, flag 1 rows (none of them lies outside its image here)
    rows = [line.split(",") for s in SEQS for line in (root / s / "gt" / "gt.txt").read_text().split()]
    assert sum((r.categories == PEDESTRIAN).sum() for r in records) == sum(
        r[7] == "1" and r[6] == "1" for r in rows
    )
    got = eval_json(str(root), str(root / "MOT17-05-FRCNN" / "det" / "det.txt"))
    assert got["results"]["All"]["n_images"] == 27


def test_stats_on_real_frames_counts_as_eval_and_samples_do_not_collide(shared_data, tmp_path):
    root = shared_data / "mot17mini"
    result = runner.invoke(app, ["data", "stats", str(root), "--format", "mot", "--json", "--samples", "0"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    got = eval_json(str(root), str(root / "MOT17-02-FRCNN" / "det" / "det.txt"))
    assert {k: v["n_gt"] for k, v in got["results"].items()} == stats["setups"]
    out = tmp_path / "samples"
    result = runner.invoke(app, ["data", "stats", str(root), "--format", "mot", "--samples", "27",
                                 "--samples-out", str(out)])
    assert result.exit_code == 0, result.output
    # every sequence has a 000001.jpg: 27 images, 27 different sample files
    assert len(list(out.glob("*.png"))) == 27
    assert (out / "val_MOT17-02-FRCNN_img1_000001.png").is_file()
    assert (out / "val_MOT17-13-FRCNN_img1_000001.png").is_file()


def test_stats_leaves_ignored_coco_boxes_out(tmp_path):
    """The bug of issue 25: COCO iscrowd/ignore persons were counted as pedestrians."""
    (tmp_path / "annotations").mkdir()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 100], "iscrowd": 0, "vis_ratio": 1.0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 0, 40, 100], "iscrowd": 1, "vis_ratio": 1.0},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 0, 40, 100], "iscrowd": 0, "ignore": 1, "vis_ratio": 1.0},
    ]
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 120}], "annotations": anns,
         "categories": [{"id": 1, "name": "person"}]}))
    from pedcrowd.data.stats import dataset_stats

    s = dataset_stats(tmp_path, "val", "coco")
    assert s["pedestrians"] == 1 and s["setups"]["Reasonable"] == 1 and s["other_ignored"] == 2
