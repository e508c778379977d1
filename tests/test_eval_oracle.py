"""The test oracle (pedcrowd/reference/mr.py) against the official CityPersons and Caltech numbers."""

from __future__ import annotations

import json

import pytest

from pedcrowd.reference.mr import (
    CP_SETUPS,
    dets_from_json,
    images_from_records,
    reference_mr,
)


def test_oracle_reproduces_official_citypersons(shared_data):
    from pedcrowd.formats.citypersons import read_citypersons_json

    expected = json.loads((shared_data / "nmsped/EXPECTED.json").read_text())["mr"]
    images = images_from_records(read_citypersons_json(shared_data / "citypersons/val_gt.json"))
    dets = dets_from_json(shared_data / "nmsped/citypersons_val_dets.json")
    for setup in CP_SETUPS[:1]:
        mr, _ = reference_mr(images, dets, setup)
        assert mr == pytest.approx(expected[setup[0]], abs=1e-12)


def test_oracle_sentinel_example():
    # docs/evaluation.md section "Quirks kept on purpose": 50 images, 2 GT, an FP at 0.9 then a TP: Python 0.5, Matlab 0.5^(7/9).
    images = [{"id": i + 1, "boxes": [], "ignore": [], "heights": [], "vis": []} for i in range(50)]
    images[0].update(boxes=[[0, 0, 41, 100], [200, 0, 41, 100]], ignore=[0, 0], heights=[100, 100], vis=[1, 1])
    dets = {1: [([400, 0, 41, 100], 0.9), ([0, 0, 41, 100], 0.8)]}
    setup = ("Reasonable", (50, 1e10), (0.65, 1e10))
    assert reference_mr(images, dets, setup)[0] == pytest.approx(0.5, abs=1e-12)
    caltech = reference_mr(images, dets, setup, protocol="caltech", resize_dets=False, prefiltered=True)[0]
    assert caltech == pytest.approx(0.5 ** (7 / 9), abs=1e-12)
