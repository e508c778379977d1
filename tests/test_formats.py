"""Annotation and detection readers: real files, hand-written files, and every bad-input error."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.caltech import (
    frame_key,
    read_caltech_gt_cache,
    read_caltech_results,
    read_caltech_text,
)
from pedcrowd.formats.citypersons import read_citypersons_json, read_citypersons_mat
from pedcrowd.formats.coco import read_coco_json, read_image_list
from pedcrowd.formats.detections import read_detections
from pedcrowd.formats.records import (
    GROUP,
    IGNORE_REGION,
    PEDESTRIAN,
    RIDER,
    SITTING,
    UNSURE,
    ImageRecord,
)


@pytest.fixture(scope="module")
def val_records(shared_data):
    return read_citypersons_json(shared_data / "citypersons/val_gt.json"), read_citypersons_mat(
        shared_data / "citypersons/anno_val.mat"
    )


def test_citypersons_json_and_mat_agree(val_records):
    js, mat = val_records
    assert len(js) == len(mat) == 500
    assert [r.id for r in js] == list(range(1, 501))
    assert js[0].file_name == mat[0].file_name == "frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    for a, b in zip(js, mat, strict=True):
        for attr in ("boxes", "ignore", "heights", "vis_ratios", "ann_ids", "crowd", "vis_boxes"):
            np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr), err_msg=f"{a.id} {attr}")
    # First object of the file: bbox [947, 406, 17, 40], vis [950, 407, 14, 39].
    assert mat[0].vis_ratios[0] == float(f"{14 * 39 / (17 * 40):.12g}") == 0.802941176471
    assert max(r.ann_ids.max(initial=0) for r in js) == 5795 and (js[0].width, js[0].height) == (2048, 1024)


def test_anno_val_label_counts(val_records):
    _, mat = val_records
    counts = Counter(c for r in mat for c in r.categories)
    assert [counts[c] for c in (PEDESTRIAN, IGNORE_REGION, RIDER, SITTING, "other", GROUP)] == [3157, 1631, 509, 185, 87, 226]
    ignore = Counter((c, bool(i), bool(g)) for r in mat for c, i, g in zip(r.categories, r.ignore, r.crowd, strict=True))
    assert ignore[(PEDESTRIAN, False, False)] == 3157 and ignore[(GROUP, True, True)] == 226
    assert all(r.vis_ratios[r.categories == GROUP].sum() == 0 for r in mat)


def test_citypersons_writers_round_trip(tmp_path):
    from pedcrowd.formats.citypersons_write import write_citypersons_json, write_citypersons_mat

    boxes = np.array([[10, 20, 41, 100], [100, 20, 30, 60], [200, 0, 50, 50], [300, 10, 80, 90]], float)
    vis = np.array([[10, 20, 41, 50], [100, 20, 30, 60], [200, 0, 50, 50], [300, 10, 40, 90]], float)
    records = [
        ImageRecord(id=1, file_name="aachen/aachen_000001_000019_leftImg8bit.png", boxes=boxes, vis_boxes=vis,
                    categories=np.array([PEDESTRIAN, RIDER, IGNORE_REGION, GROUP], dtype=object),
                    ignore=np.array([0, 1, 1, 1], bool), heights=boxes[:, 3].copy(), vis_ratios=np.ones(4),
                    width=2048, height=1024),
        ImageRecord(id=2, file_name="bochum/bochum_000000_000313_leftImg8bit.png", width=2048, height=1024),
    ]
    write_citypersons_json(tmp_path / "gt.json", records)
    write_citypersons_mat(tmp_path / "anno_val.mat", records, "val")
    js, mat = read_citypersons_json(tmp_path / "gt.json"), read_citypersons_mat(tmp_path / "anno_val.mat")
    for got in (js, mat):
        assert [r.file_name for r in got] == [r.file_name for r in records]
        np.testing.assert_array_equal(got[0].boxes, boxes)
        np.testing.assert_array_equal(got[0].ignore, [False, True, True, True])
        np.testing.assert_allclose(got[0].vis_ratios, [0.5, 1.0, 1.0, 0.0])
        np.testing.assert_array_equal(got[0].ann_ids, [1, 2, 3, 4])
        assert len(got[1]) == 0
    assert list(mat[0].categories) == [PEDESTRIAN, RIDER, IGNORE_REGION, GROUP]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_coco_reader(tmp_path):
    doc = {
        "images": [{"id": 7, "file_name": "b.jpg", "width": 640, "height": 480}, {"id": 3, "file_name": "a.jpg"}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 20], "iscrowd": 1},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 40], "vis_bbox": [5, 5, 10, 10]},
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [1, 1, 1, 1]},
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": [0, 0, 4, 8], "ignore": 1, "height": 9, "vis_ratio": 0.3},
        ],
    }
    path = write_json(tmp_path / "coco.json", doc)
    recs = read_coco_json(path)
    assert [r.id for r in recs] == [3, 7] and recs[1].width == 640
    assert list(recs[1].ignore) == [True, False] and list(recs[1].crowd) == [True, False]
    assert recs[1].heights[1] == 40 and recs[1].vis_ratios[1] == 0.25 and np.isnan(recs[1].vis_ratios[0])
    assert recs[0].heights[0] == 9 and recs[0].vis_ratios[0] == 0.3 and recs[0].ignore[0]
    assert sum(len(r) for r in read_coco_json(path, category=None)) == 4
    assert [len(r) for r in read_coco_json(path, category=2)] == [0, 1]
    with pytest.raises(PedcrowdError, match="no category named 'dog'"):
        read_coco_json(path, category="dog")


BBGT = """% bbGt version=3
person 10 20 30 80 0 0 0 0 0 0 0
person? 100 20 30 60 0 0 0 0 0 0 0
people 200 20 60 70 1 210 30 20 20 1 0
person 300 20 40 100 1 300 20 40 50 0 0
ignore 400 20 50 50 0 0 0 0 0 0 0
"""


def test_caltech_text(tmp_path):
    frame = tmp_path / "set06" / "V001" / "I00029.txt"
    frame.parent.mkdir(parents=True)
    frame.write_text(BBGT)
    (tmp_path / "set06" / "V000").mkdir()
    (tmp_path / "set06" / "V000" / "I00059.txt").write_text("% bbGt version=3\n")
    recs = read_caltech_text(tmp_path)
    assert [r.file_name for r in recs] == ["set06/V000/I00059.jpg", "set06/V001/I00029.jpg"]
    assert [r.id for r in recs] == [1, 2] and len(recs[0]) == 0
    r = recs[1]
    assert list(r.categories) == [PEDESTRIAN, UNSURE, GROUP, PEDESTRIAN, IGNORE_REGION]
    assert list(r.ignore) == [False, False, True, False, False]
    np.testing.assert_array_equal(r.vis_boxes[3], [300, 20, 40, 50])
    assert np.isnan(r.vis_boxes[0]).all() and r.vis_ratios[3] == 0.5 and r.vis_ratios[0] == 1.0
    assert read_caltech_text(frame)[0].file_name == "set06/V001/I00029.jpg"
    bad = tmp_path / "bad.txt"
    bad.write_text("person 1 2 3\n")
    with pytest.raises(PedcrowdError, match="bad.txt"):
        read_caltech_text(bad)


def test_caltech_gt_cache(shared_data, tmp_path):
    images = read_image_list(shared_data / "caltech/test_images.json")
    recs = read_caltech_gt_cache(shared_data / "caltech/gt/ori/gt-Reasonable.mat", shared_data / "caltech/test_images.json")
    assert len(recs) == len(images) == 4024
    assert recs[0].file_name == "set06_V000_I00029.jpg"
    assert sum(int((~r.ignore).sum()) for r in recs) == 1014
    regular = np.concatenate([r.boxes[~r.ignore] for r in recs])
    np.testing.assert_allclose(regular[:, 2], 0.41 * regular[:, 3], rtol=1e-6)  # already resized
    with pytest.raises(PedcrowdError, match="image list has 3"):
        read_caltech_gt_cache(shared_data / "caltech/gt/ori/gt-Reasonable.mat", images[:3])


def test_caltech_results_per_video_and_per_frame(tmp_path):
    (tmp_path / "set06").mkdir()
    (tmp_path / "set06" / "V000.txt").write_text("30,1,2,3,4,0.5\n60,5,6,7,8,0.25\n30,9,9,9,9,0.75\n")
    (tmp_path / "set06" / "V001").mkdir()
    (tmp_path / "set06" / "V001" / "I00029.txt").write_text("1.234567,2,3,4,0.123456789\n")
    res = read_caltech_results(tmp_path)
    np.testing.assert_array_equal(res[(6, 0, 29)], [[1, 2, 3, 4, 0.5], [9, 9, 9, 9, 0.75]])
    np.testing.assert_array_equal(res[(6, 1, 29)], [[1.2346, 2, 3, 4, 0.12346]])  # %.5g like the merge
    images = read_image_list(write_json(tmp_path / "im.json", {"images": [
        {"id": 1, "file_name": "set06_V000_I00029.jpg"}, {"id": 2, "file_name": "set06_V001_I00029.jpg"}]}))
    dets = read_detections(tmp_path / "set06", images)  # frame I00059 is not an evaluated image: skipped
    assert sorted(dets) == [1, 2] and list(dets[1][1]) == [0.5, 0.75]
    assert frame_key("set10/V011/I01829.txt") == (10, 11, 1829)


IMAGES = [ImageRecord(id=1, file_name="city/a_leftImg8bit.png"), ImageRecord(id=2, file_name="city/b_leftImg8bit.png")]


def test_detections_by_id_and_by_file_name(tmp_path):
    path = write_json(tmp_path / "d.json", [
        {"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [5, 6, 7, 8], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [5, 6, 7, 8], "score": 0.7},
    ])
    d = read_detections(path, IMAGES)
    np.testing.assert_array_equal(d[2][0], [[1, 2, 3, 4], [5, 6, 7, 8]])  # file order, category 1 only
    assert list(d[2][1]) == [0.5, 0.7] and list(d[1][1]) == [0.9]
    path = write_json(tmp_path / "n.json", [
        {"file_name": "city/b_leftImg8bit.png", "bbox": [1, 2, 3, 4], "score": 0.5},
        {"file_name": "a_leftImg8bit.png", "bbox": [1, 2, 3, 4], "score": 0.25},
    ])
    d = read_detections(path, IMAGES)
    assert list(d[2][1]) == [0.5] and list(d[1][1]) == [0.25]
    assert read_detections(write_json(tmp_path / "e.json", []), IMAGES) == {}
    # pedcrowd infer numbers its images 1..N: a file name beats a disagreeing image_id.
    path = write_json(tmp_path / "both.json", [
        {"image_id": 1, "file_name": "city/b_leftImg8bit.png", "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 2, "file_name": "a_leftImg8bit.png", "bbox": [1, 2, 3, 4], "score": 0.25},
    ])
    d = read_detections(path, IMAGES)
    assert list(d[2][1]) == [0.5] and list(d[1][1]) == [0.25]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("[{", "invalid JSON"),
        ([{"image_id": 1, "bbox": [0, 0, 1, 1]}], "no 'score' field"),
        ([{"bbox": [0, 0, 1, 1], "score": 1}], "no 'image_id'"),
        ([{"image_id": 9, "bbox": [0, 0, 1, 1], "score": 1}], "unknown image id 9"),
        ([{"file_name": "zz.png", "bbox": [0, 0, 1, 1], "score": 1}], "unknown image 'zz.png'"),
        ("[{\"image_id\": 1, \"bbox\": [0, 0, 1, 1], \"score\": NaN}]", "NaN score"),
        ([{"image_id": 1, "bbox": [0, 0, -1, 1], "score": 1}], "negative box size"),
        ([{"image_id": 1, "bbox": [0, 0, 1], "score": 1}], "must be \\[x, y, w, h\\]"),
        ({"image_id": 1}, "expected a JSON list"),
    ],
)
def test_detection_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "dets.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(PedcrowdError, match=message) as err:
        read_detections(path, IMAGES)
    assert str(path) in str(err.value)


def test_annotation_errors_name_the_file(tmp_path):
    path = write_json(tmp_path / "gt.json", {"images": [{"id": 1, "im_name": "a_b.png"}], "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "height": 1}]})
    with pytest.raises(PedcrowdError, match="has no 'vis_ratio' field"):
        read_citypersons_json(path)
    (tmp_path / "x.mat").write_text("not a mat")
    with pytest.raises(PedcrowdError, match="x.mat"):
        read_citypersons_mat(tmp_path / "x.mat")
    with pytest.raises(PedcrowdError, match="expected"):
        read_image_list(write_json(tmp_path / "l.json", [1, 2]))


# Caltech: every video has an I00029.jpg; only the full relative name says which.
CALTECH_IMAGES = [
    ImageRecord(id=1, file_name="set06/V000/I00029.jpg"),
    ImageRecord(id=2, file_name="set06/V001/I00029.jpg"),
    ImageRecord(id=3, file_name="set07/V000/I00030.jpg"),
    ImageRecord(id=4, file_name="a.png"),
    ImageRecord(id=5, file_name="x/a.png"),
]


def test_file_name_index_leaves_out_shared_base_names():
    from pedcrowd.formats.detections import AmbiguousFileName, file_name_index

    index = file_name_index(CALTECH_IMAGES)
    find = lambda name: index.find(name).id  # noqa: E731
    assert find("set06/V001/I00029.jpg") == 2 and find("set06/V000/I00029.jpg") == 1
    assert find("I00030.jpg") == 3 and find("I00030") == 3 and find("other/I00030.jpg") == 3
    # A full name wins over another image's identical base name.
    assert find("a.png") == 4 and find("x/a.png") == 5
    assert index.find("nothere.png") is None
    assert "I00029.jpg" not in index.names and "I00029" not in index.names
    assert index.ambiguous["I00029.jpg"] == ["set06/V000/I00029.jpg", "set06/V001/I00029.jpg"]
    for name in ("I00029.jpg", "I00029", "set09/V000/I00029.jpg"):
        with pytest.raises(AmbiguousFileName, match="ambiguous"):
            index.find(name)


@pytest.mark.parametrize("first_by_id", [False, True])  # the fast and the entry-by-entry path
def test_detections_by_ambiguous_base_name_are_an_error(tmp_path, first_by_id):
    entries = [
        {"file_name": "set06/V001/I00029.jpg", "bbox": [1, 2, 3, 4], "score": 0.5},
        {"file_name": "I00030.jpg", "bbox": [1, 2, 3, 4], "score": 0.25},
    ]
    if first_by_id:
        entries.insert(0, {"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.75})
    d = read_detections(write_json(tmp_path / "ok.json", entries), CALTECH_IMAGES)
    assert list(d[2][1]) == [0.5] and list(d[3][1]) == [0.25]
    assert (list(d[1][1]) == [0.75]) if first_by_id else (1 not in d)
    bad = entries + [{"file_name": "I00029.jpg", "bbox": [1, 2, 3, 4], "score": 0.5}]
    path = write_json(tmp_path / "bad.json", bad)
    with pytest.raises(PedcrowdError) as err:
        read_detections(path, CALTECH_IMAGES)
    assert str(err.value) == (
        f"{path}: detection {len(bad) - 1}: file name 'I00029.jpg' is ambiguous (2 images are named "
        "'I00029.jpg': 'set06/V000/I00029.jpg', 'set06/V001/I00029.jpg'); "
        "use the path relative to the image root"
    )


def test_results_entries_from_model_output_exact_values():
    import torch

    from pedcrowd.formats.detections import output_to_xywh, results_entries

    output = {
        "boxes": torch.tensor([[0.1, 0.2, 10.7, 21.3], [5.5, 6.25, 7.0, 8.125]]),
        "scores": torch.tensor([0.9, 0.3]),
        "labels": torch.tensor([1, 1]),
    }
    xywh, scores = output_to_xywh(output)
    b = output["boxes"].double().numpy()
    assert xywh.dtype == np.float64 and scores.dtype == np.float64
    np.testing.assert_array_equal(xywh, np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1))
    entries = results_entries(7, "city/a.png", xywh, scores)
    x1, y1, x2, y2 = (float(v) for v in output["boxes"][0].double())
    assert entries[0] == {
        "image_id": 7, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
        "score": float(torch.tensor(0.9).double()), "file_name": "city/a.png",
    }
    assert entries[1]["bbox"] == [5.5, 6.25, 1.5, 1.875] and entries[1]["score"] == float(np.float32(0.3))
    assert all(type(v) is float for e in entries for v in [*e["bbox"], e["score"]])
    assert list(entries[0]) == ["image_id", "category_id", "bbox", "score", "file_name"]
    assert results_entries(1, "x.png", np.zeros((0, 4)), np.zeros(0)) == []
    empty = {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0)}
    assert output_to_xywh(empty)[0].shape == (0, 4)
