"""Property tests: every reader and the evaluator, fed random malformed and extreme input,
either return clean values or raise the documented one-line PedcrowdError naming the file.

No other exception type, no traceback, no NaN/inf or fractional id slipping through.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.records import ImageRecord

SETTINGS = settings(
    max_examples=int(os.environ.get("PEDCROWD_PROPERTY_EXAMPLES", "40")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Values a hostile or broken file may hold where a number is expected.
wild_scalar = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(["", "1", "person", "NaN"])
)
wild = st.recursive(wild_scalar, lambda inner: st.lists(inner, max_size=5), max_leaves=8)
number = st.integers(-5, 2000) | st.floats(-1e3, 1e3, allow_nan=False) | wild
box = st.lists(number, min_size=4, max_size=4) | wild


def maybe(strategy, valid):
    """Mostly (9 in 10) valid values, sometimes anything: files that are almost right."""
    return st.integers(0, 9).flatmap(lambda k: valid if k else strategy)


IMAGES = [ImageRecord(id=i, file_name=f"c/c_{i}.png") for i in (1, 2, 3)]


def assert_documented(error: Exception, path) -> None:
    assert isinstance(error, PedcrowdError), repr(error)
    text = str(error)
    assert "\n" not in text and str(path) in text, text


def assert_clean_detections(dets: dict) -> None:
    for image_id, (boxes, scores) in dets.items():
        assert image_id in {1, 2, 3}
        assert boxes.shape == (len(scores), 4) and boxes.dtype == np.float64
        assert np.isfinite(boxes).all() and np.isfinite(scores).all() and (boxes[:, 2:] >= 0).all()


def write(path, doc) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, allow_nan=True))


detection = st.fixed_dictionaries(
    {
        "bbox": maybe(box, st.lists(st.floats(0, 500), min_size=4, max_size=4)),
        "score": maybe(wild, st.floats(0, 1)),
    },
    optional={"category_id": maybe(wild, st.just(1))},
).flatmap(lambda d: maybe(
    st.just(d),  # sometimes no image reference at all
    st.one_of(
        maybe(wild, st.sampled_from([1, 2, 3, 2.0])).map(lambda i: {**d, "image_id": i}),
        maybe(wild, st.sampled_from(["c_1.png", "c/c_2.png"])).map(lambda n: {**d, "file_name": n}),
    ),
))


@SETTINGS
@given(st.lists(maybe(wild, detection), max_size=6))
def test_detection_json_reader(tmp_path, entries):
    from pedcrowd.formats.detections import read_detections

    path = tmp_path / "dets.json"
    write(path, entries)
    try:
        dets = read_detections(path, IMAGES)
    except Exception as e:  # noqa: BLE001 - the property: only the documented error
        assert_documented(e, path)
        return
    assert_clean_detections(dets)
    kept = [d for d in entries if isinstance(d, dict) and d.get("category_id", 1) == 1]
    assert sum(len(s) for _, s in dets.values()) == len(kept)  # nothing dropped silently


annotation = st.fixed_dictionaries(
    {
        "id": maybe(wild, st.integers(1, 50)),
        "image_id": maybe(wild, st.sampled_from([1, 2])),
        "category_id": maybe(wild, st.just(1)),
        "bbox": maybe(box, st.lists(st.floats(0, 500), min_size=4, max_size=4)),
        "height": maybe(wild, st.floats(0, 500)),
        "vis_ratio": maybe(wild, st.floats(0, 1)),
    },
    optional={"ignore": st.sampled_from([0, 1]), "vis_bbox": maybe(box, st.none())},
)
image = st.sampled_from([1, 2]).flatmap(lambda i: st.fixed_dictionaries({
    "id": maybe(wild, st.just(i)), "im_name": maybe(wild, st.just(f"c_{i}.png"))}))
# usually each image once (a GT listing one twice must be refused: the other case)
images = maybe(st.lists(image, max_size=3), st.lists(image, min_size=2, max_size=2, unique_by=lambda im: repr(im["id"])))


def assert_clean_records(records: list[ImageRecord], sizes: bool = True) -> None:
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    assert len({r.file_name for r in records}) == len(records)
    for r in records:
        assert r.boxes.shape == (len(r), 4) and np.isfinite(r.boxes).all()
        assert not sizes or (r.boxes[:, 2:] >= 0).all()
        assert np.isfinite(r.heights).all()


@SETTINGS
@given(images, st.lists(maybe(wild, annotation), max_size=4))
def test_citypersons_json_reader(tmp_path, images, annotations):
    from pedcrowd.formats.citypersons import read_citypersons_json

    path = tmp_path / "gt.json"
    write(path, {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "pedestrian"}]})
    try:
        records = read_citypersons_json(path)
    except Exception as e:  # noqa: BLE001
        assert_documented(e, path)
        return
    assert_clean_records(records)
    assert sum(len(r) for r in records) == len([a for a in annotations if a["category_id"] == 1])


@SETTINGS
@given(images.map(lambda ims: [{"id": im["id"], "file_name": im["im_name"]} for im in ims]),
       st.lists(maybe(wild, annotation), max_size=4))
def test_coco_json_reader(tmp_path, images, annotations):
    from pedcrowd.formats.coco import read_coco_json

    path = tmp_path / "coco.json"
    write(path, {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]})
    try:
        records = read_coco_json(path)
    except Exception as e:  # noqa: BLE001
        assert_documented(e, path)
        return
    assert_clean_records(records)


gtbox = st.fixed_dictionaries(
    {"fbox": maybe(box, st.lists(st.integers(0, 500), min_size=4, max_size=4))},
    optional={"tag": st.sampled_from(["person", "mask"]), "vbox": maybe(box, st.none()),
              "extra": maybe(wild, st.just({"ignore": 0}))},
)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({"ID": maybe(wild, st.sampled_from(["a", "b"])),
                                       "gtboxes": maybe(wild, st.lists(gtbox, max_size=3))}), max_size=3))
def test_crowdhuman_odgt_reader(tmp_path, lines):
    from pedcrowd.formats.crowdhuman import read_odgt

    path = tmp_path / "gt.odgt"
    write(path, "\n".join(json.dumps(line, allow_nan=True) for line in lines))
    try:
        records = read_odgt(path)
    except Exception as e:  # noqa: BLE001
        assert_documented(e, path)
        return
    assert_clean_records(records, sizes=False)  # the odgt reader, like CrowdDet, does not judge sizes


token = st.sampled_from(["30", "1", "0", "-1", "30.7", "nan", "inf", "1e400", "x", "", "10", "41", "0.5"])


@SETTINGS
@given(st.lists(st.lists(token, min_size=0, max_size=7), max_size=5))
def test_caltech_result_reader(tmp_path, rows):
    from pedcrowd.formats.caltech import read_caltech_results

    path = tmp_path / "res" / "set06" / "V000.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(",".join(r) + "\n" for r in rows))
    try:
        results = read_caltech_results(tmp_path / "res")
    except Exception as e:  # noqa: BLE001
        assert_documented(e, tmp_path / "res")
        return
    for (s, v, frame), arr in results.items():
        assert (s, v) == (6, 0) and frame >= 0 and arr.shape[1] == 5 and np.isfinite(arr).all()


@SETTINGS
@given(st.lists(st.lists(token | st.sampled_from(["person", "people", "ignore", "dog"]), max_size=12), max_size=4))
def test_caltech_bbgt_reader(tmp_path, rows):
    from pedcrowd.formats.caltech import read_caltech_text

    path = tmp_path / "set06" / "V000" / "I00029.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("% bbGt version=3\n" + "".join(" ".join(r) + "\n" for r in rows))
    try:
        records = read_caltech_text(tmp_path)
    except Exception as e:  # noqa: BLE001
        assert_documented(e, path)
        return
    assert_clean_records(records)


extreme = st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False)
size = st.sampled_from([0.0, 1e-300, 1.0, 50.0, 1e300])


@st.composite
def extreme_scene(draw):
    records, dets = [], {}
    for i in range(draw(st.integers(1, 3))):
        k = draw(st.integers(0, 3))
        boxes = np.array([[draw(extreme), draw(extreme), draw(size), draw(size)] for _ in range(k)]).reshape(-1, 4)
        records.append(ImageRecord(
            id=i + 1, file_name=f"{i}.png", boxes=boxes, vis_boxes=np.full((k, 4), np.nan),
            categories=np.array(["pedestrian"] * k, dtype=object),
            ignore=np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)), bool),
            heights=boxes[:, 3].copy(), vis_ratios=np.ones(k),
        ))
        m = draw(st.integers(0, 3))
        rows = [[draw(extreme), draw(extreme), draw(size), draw(size)] for _ in range(m)]
        scores = [draw(st.floats(-1e300, 1e300, allow_nan=False)) for _ in range(m)]
        if m:
            dets[i + 1] = (np.array(rows), np.array(scores))
    return records, dets


@SETTINGS
@given(extreme_scene())
def test_evaluator_on_extreme_finite_input(scene):
    from pedcrowd.eval import evaluate

    records, dets = scene
    with np.errstate(all="ignore"):
        try:
            report = evaluate(records, dets)
        except PedcrowdError as e:
            assert "\n" not in str(e)
            return
    for result in report.results.values():
        mr = result.mr
        assert mr is None or math.isnan(mr) or 0.0 <= mr <= 1.0


def test_the_strategies_reach_both_outcomes(tmp_path):
    """A sanity check that the random files are not all rejected (or all accepted)."""
    from pedcrowd.formats.detections import read_detections

    path = tmp_path / "d.json"
    write(path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}])
    assert len(read_detections(path, IMAGES)[1][1]) == 1
    write(path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}])
    with pytest.raises(PedcrowdError):
        read_detections(path, IMAGES)
