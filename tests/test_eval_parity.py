"""Parity with the official evaluators on real data (../shared/data), to 1e-9."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pedcrowd.eval import evaluate, load_ground_truth, match_setup
from pedcrowd.formats.detections import read_detections


@pytest.fixture(scope="module")
def citypersons(shared_data):
    gt = load_ground_truth(shared_data / "citypersons/val_gt.json")
    dets = read_detections(shared_data / "nmsped/citypersons_val_dets.json", gt.records)
    expected = json.loads((shared_data / "nmsped/EXPECTED.json").read_text())["mr"]
    return gt, dets, expected


def test_citypersons_val_gt_json(citypersons):
    gt, dets, expected = citypersons
    report = evaluate(gt, dets)
    assert list(report.results) == list(expected)
    for name, value in expected.items():
        assert report.results[name].mr == pytest.approx(value, abs=1e-9), name
        assert report.results[name].n_images == 500
    assert report.results["Reasonable"].n_gt == 1579


def test_citypersons_anno_val_mat(citypersons, shared_data):
    _, dets, expected = citypersons
    gt = load_ground_truth(shared_data / "citypersons/anno_val.mat")
    report = evaluate(gt, dets)
    for name, value in expected.items():
        assert report.results[name].mr == pytest.approx(value, abs=1e-9), name


def test_match_setup_equals_evaluate_and_resamples(citypersons):
    gt, dets, expected = citypersons
    report = evaluate(gt, dets, setups=["Reasonable", "All"])
    for name in ("Reasonable", "All"):
        m = match_setup(gt, dets, name)
        assert m.mr() == pytest.approx(expected[name], abs=1e-9)
        assert m.mr(np.ones(500, dtype=int)) == report.results[name].mr
        # Every image drawn twice: FPPI and recall are unchanged at every step.
        assert m.mr(np.full(500, 2)) == pytest.approx(report.results[name].mr, abs=1e-12)
    counts = np.random.default_rng(0).multinomial(500, np.full(500, 1 / 500))
    assert 0.0 < m.mr(counts) < 1.0


CALTECH_CACHES = {"ori": ["Reasonable"], "new-csp": ["Reasonable"], "new-pedestron": ["Reasonable", "All", "Occ=heavy"]}


@pytest.mark.parametrize("cache", list(CALTECH_CACHES))
def test_caltech_caches(shared_data, cache):
    expected = json.loads((shared_data / "caltech/EXPECTED.json").read_text())["mr"][cache]
    gt = load_ground_truth(shared_data / "caltech/gt" / cache, "caltech", shared_data / "caltech/test_images.json")
    dets = read_detections(shared_data / "caltech/nmsped", gt.records)
    # pedestron_code is Pedestron's copy of dbEval.m, whose detection resize is
    # commented out: the same numbers as no_dt_resize.
    for variant, resize in (("dt_resize", True), ("no_dt_resize", False), ("pedestron_code", False)):
        report = evaluate(gt, dets, protocol="caltech", resize_dets=resize)
        assert list(report.results) == CALTECH_CACHES[cache]
        for name, value in expected[variant].items():
            assert report.results[name].mr == pytest.approx(value, abs=1e-9), (variant, name)
            assert report.results[name].n_images == 4024
    if cache == "ori":
        assert round(100 * report.results["Reasonable"].mr, 2) == 5.92


def test_unknown_cache_needs_a_user_setup(shared_data, tmp_path):
    import shutil

    from pedcrowd.errors import PedcrowdError

    shutil.copy(shared_data / "caltech/gt/ori/gt-Reasonable.mat", tmp_path / "gt-Small.mat")
    gt = load_ground_truth(tmp_path, "caltech", shared_data / "caltech/test_images.json")
    with pytest.raises(PedcrowdError, match="--setup 'Small:HMIN-HMAX:VMIN-VMAX'"):
        evaluate(gt, {}, protocol="caltech")
    result = evaluate(gt, {}, protocol="caltech", setups=["Small:50-75:0.65-inf"]).results["Small"]
    assert (result.n_gt, result.mr) == (1014, 1.0)
