"""Property tests: invariants of MR^-2, and pedcrowd equal to the plain-loop oracle on random scenes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pedcrowd.eval import GroundTruth, evaluate, match_setup
from pedcrowd.formats.records import ImageRecord
from pedcrowd.reference.mr import CP_SETUPS, images_from_records, reference_mr

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VIS = [0.0, 0.2, 0.5, 0.65, 0.8, 0.9, 1.0]


@st.composite
def scenes(draw, grid=False):
    """Random images with GT (some ignored) and detections near them; few score values (ties)."""
    n_images = draw(st.integers(1, 5))
    records, dets = [], {}
    for i in range(n_images):
        k = draw(st.integers(0, 5))
        boxes = []
        for j in range(k):
            h = float(draw(st.sampled_from([30, 40, 50, 60, 75, 76, 100])))
            x = 100.0 * j if grid else float(draw(st.integers(0, 8)) * 10)
            boxes.append([x + 10, 10.0, round(0.41 * h, 1), h])
        boxes = np.array(boxes).reshape(-1, 4)
        ignore = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)), bool) if not grid else np.zeros(k, bool)
        vis = np.array(draw(st.lists(st.sampled_from(VIS), min_size=k, max_size=k)), float)
        records.append(
            ImageRecord(id=10 + i, file_name=f"{i}.png", boxes=boxes, vis_boxes=np.full((k, 4), np.nan),
                        categories=np.array(["pedestrian"] * k, dtype=object), ignore=ignore,
                        heights=boxes[:, 3].copy(), vis_ratios=vis)
        )
        m = draw(st.integers(0, 8))
        if m:
            rows = []
            for _ in range(m):
                dx, dy = draw(st.integers(-15, 15)), draw(st.integers(-10, 10))
                h = float(draw(st.sampled_from([30, 45, 50, 60, 80, 100, 120])))
                base = boxes[draw(st.integers(0, k - 1))] if k else np.array([0.0, 0, 0, 0])
                rows.append([base[0] + dx, base[1] + dy, round(0.41 * h, 1), h])
            scores = [draw(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9])) for _ in range(m)]
            dets[10 + i] = (np.array(rows), np.array(scores))
    return records, dets


@SETTINGS
@given(scenes())
def test_citypersons_equals_oracle(scene):
    records, dets = scene
    oracle_dets = {k: list(zip(b.tolist(), s.tolist(), strict=True)) for k, (b, s) in dets.items()}
    report = evaluate(records, dets)
    for setup in CP_SETUPS:
        expected, recall = reference_mr(images_from_records(records), oracle_dets, setup)
        got = report.results[setup[0]]
        assert got.mr == pytest.approx(expected, abs=1e-12) if expected is not None else got.mr is None
        if expected is not None:
            assert np.allclose(got.recall_at_fppi, recall, atol=1e-12)


@SETTINGS
@given(scenes(), st.booleans())
def test_caltech_cache_equals_oracle(scene, resize):
    records, dets = scene
    gt = GroundTruth(records, "caltech-cache", caches={"Reasonable": records})
    oracle_dets = {k: list(zip(b.tolist(), s.tolist(), strict=True)) for k, (b, s) in dets.items()}
    setup = ("Reasonable", (50, np.inf), (0.65, np.inf))
    expected, _ = reference_mr(images_from_records(records), oracle_dets, setup, "caltech", resize, prefiltered=True)
    got = evaluate(gt, dets, protocol="caltech", resize_dets=resize).results["Reasonable"].mr
    assert got == pytest.approx(expected, abs=1e-12) if expected is not None else got is None


@SETTINGS
@given(scenes(grid=True))
def test_perfect_detections_give_zero_and_none_give_one(scene):
    records, _ = scene
    perfect = {r.id: (r.boxes.copy(), np.linspace(1, 0.5, len(r))) for r in records if len(r)}
    for name, result in evaluate(records, perfect).results.items():
        empty = evaluate(records, {}, setups=[name]).results[name]
        if result.n_gt == 0:
            assert result.mr is None and empty.mr is None
        else:
            assert result.mr == 0.0, name
            assert empty.mr == 1.0


@SETTINGS
@given(scenes(), st.sampled_from([0.05, 0.5, 0.95]), st.integers(0, 4))
def test_detection_inside_ignore_region_changes_nothing(scene, score, which):
    records, dets = scene
    before = evaluate(records, dets)
    r = records[which % len(records)]
    region = np.array([[2000.0, 0, 300, 300]])
    r.boxes = np.vstack([r.boxes, region])
    r.vis_boxes = np.vstack([r.vis_boxes, np.full((1, 4), np.nan)])
    r.categories = np.append(r.categories, "ignore")
    r.ignore = np.append(r.ignore, True)
    r.heights = np.append(r.heights, 300.0)
    r.vis_ratios = np.append(r.vis_ratios, 1.0)
    same_gt = evaluate(records, dets)
    boxes, scores = dets.get(r.id, (np.zeros((0, 4)), np.zeros(0)))
    dets[r.id] = (np.vstack([boxes, [[2100.0, 50, 41, 100]]]), np.append(scores, score))
    after = evaluate(records, dets)
    for name in before.results:
        assert before.results[name].mr == same_gt.results[name].mr == after.results[name].mr


@SETTINGS
@given(scenes(), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(scene, rnd):
    records, dets = scene
    # Distinct scores: with ties the file order is part of the protocol.
    dets = {k: (b, s + 1e-3 * np.arange(len(s)) + 1e-6 * k) for k, (b, s) in dets.items()}
    before = evaluate(records, dets)
    shuffled_records = records[:]
    rnd.shuffle(shuffled_records)
    shuffled = {}
    for k in rnd.sample(list(dets), len(dets)):
        perm = np.array(rnd.sample(range(len(dets[k][1])), len(dets[k][1])), dtype=int)
        shuffled[k] = (dets[k][0][perm], dets[k][1][perm])
    after = evaluate(shuffled_records, shuffled)
    for name in before.results:
        assert before.results[name].mr == after.results[name].mr


@SETTINGS
@given(scenes(), st.lists(st.integers(0, 3), min_size=5, max_size=5))
def test_resampled_mr_equals_mr_of_duplicated_images(scene, counts):
    records, dets = scene
    dets = {k: (b, s + 1e-3 * np.arange(len(s)) + 1e-6 * k) for k, (b, s) in dets.items()}
    counts = np.array(counts[: len(records)])
    m = match_setup(records, dets, "All")
    copies, copy_dets = [], {}
    for r, c in zip(records, counts, strict=True):
        for j in range(c):
            new_id = 1000 * r.id + j  # copies are consecutive in id order
            copies.append(ImageRecord(**{**r.__dict__, "id": new_id}))
            if r.id in dets:
                copy_dets[new_id] = dets[r.id]
    if not copies:
        return
    expected = evaluate(copies, copy_dets, setups=["All"]).results["All"].mr
    got = m.mr(counts)
    assert got == pytest.approx(expected, abs=1e-12) if expected is not None else got is None


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0.5, 0.6, 0.7]), st.integers(0, 4)), max_size=40),
       st.booleans())
def test_sort_within_detection_runs_equals_lexsort(rows, presorted):
    """The run-wise sort greedy matching uses equals a full lexsort, ties and all."""
    from pedcrowd.eval.matching import _lexsort_within

    group = np.array([r[0] for r in rows], dtype=np.int64)
    key = np.array([r[1] for r in rows], dtype=np.float64)
    tie = np.array([r[2] for r in rows], dtype=np.int64)
    if presorted:
        o = np.argsort(group, kind="stable")
        group, key, tie = group[o], key[o], tie[o]
    np.testing.assert_array_equal(_lexsort_within(group, key, tie), np.lexsort((tie, key, group)))
