"""One hand-built case per quirk of docs/evaluation.md (section "Quirks kept on purpose"); expected values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pedcrowd.eval import evaluate, match_setup
from pedcrowd.eval.setups import Setup
from pedcrowd.formats.records import IGNORE_REGION, PEDESTRIAN, UNSURE, ImageRecord

REASONABLE = "Reasonable"


def rec(image_id, boxes=(), ignore=None, heights=None, vis=None, cats=None, vis_boxes=None):
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    k = len(boxes)
    return ImageRecord(
        id=image_id,
        file_name=f"img{image_id}.png",
        boxes=boxes,
        vis_boxes=np.full((k, 4), np.nan) if vis_boxes is None else np.array(vis_boxes, dtype=np.float64).reshape(-1, 4),
        categories=np.array(cats or [PEDESTRIAN] * k, dtype=object),
        ignore=np.zeros(k, bool) if ignore is None else np.array(ignore, bool),
        heights=boxes[:, 3].copy() if heights is None else np.array(heights, dtype=np.float64),
        vis_ratios=np.ones(k) if vis is None else np.array(vis, dtype=np.float64),
    )


def dets_of(*rows):
    """rows: (image_id, [x, y, w, h], score) -> the evaluator's detection dict."""
    out: dict[int, list] = {}
    for image_id, box, score in rows:
        out.setdefault(image_id, []).append((box, score))
    return {k: (np.array([b for b, _ in v], float), np.array([s for _, s in v], float)) for k, v in out.items()}


def mr(records, dets, setup=REASONABLE, **kw):
    return evaluate(records, dets, setups=[setup], **kw).results[setup if isinstance(setup, str) else setup.name]


PED = [0, 0, 41, 100]  # a 100 px pedestrian; shifted copies below
FAR = [500, 0, 41, 100]  # overlaps nothing


def test_sentinel_python_returns_final_recall_matlab_returns_zero():
    # 50 images, 2 GT, an FP (0.9) then a TP (0.8). Ref 0.01 and 0.0178 lie below
    # the first FPPI 1/50: Python takes recall[-1] = 0.5 -> MR 0.5;
    # Matlab's [-inf; 0] start gives miss 1 there -> 0.5^(7/9).
    records = [rec(1, [PED, [200, 0, 41, 100]])] + [rec(i) for i in range(2, 51)]
    dets = dets_of((1, FAR, 0.9), (1, PED, 0.8))
    cp = mr(records, dets)
    assert cp.mr == pytest.approx(0.5, abs=1e-15)
    assert cp.recall_at_fppi[0] == 0.5
    caltech_records = [rec(1, [[10, 10, 41, 100], [200, 10, 41, 100]])] + [rec(i) for i in range(2, 51)]
    cal = mr(caltech_records, dets_of((1, [400, 10, 41, 100], 0.9), (1, [10, 10, 41, 100], 0.8)), protocol="caltech")
    assert cal.mr == pytest.approx(0.5 ** (7 / 9), abs=1e-15)
    assert list(cal.recall_at_fppi[:2]) == [0.0, 0.0]


def test_fppi_references_rounded_to_four_decimals():
    # 5000 images, 3 GT. Order: 88 FP, TP, FP (89th: fppi 89/5000 = 0.0178), TP.
    # Rounded ref 0.0178 sees the second TP (recall 2/3); the exact 10^-1.75 =
    # 0.017783 would only see the first (1/3). Ref 0.01 sees 50 FPs, recall 0.
    gt = [[100 * k, 0, 41, 100] for k in range(3)]
    records = [rec(1, gt)] + [rec(i) for i in range(2, 5001)]
    rows = [(2 + i, FAR, 1.0 - i * 1e-4) for i in range(88)]
    rows += [(1, gt[0], 0.5), (5000, FAR, 0.4), (1, gt[1], 0.3)]
    result = mr(records, dets_of(*rows))
    assert result.recall_at_fppi[0] == 0.0
    assert result.recall_at_fppi[1] == pytest.approx(2 / 3, abs=1e-15)
    assert result.mr == pytest.approx((1 / 3) ** (8 / 9), abs=1e-12)


def test_no_clamp_zero_miss_gives_zero():
    result = mr([rec(1, [PED])], dets_of((1, PED, 0.9)))
    assert result.mr == 0.0
    assert list(result.recall_at_fppi) == [1.0] * 9


def test_cap_of_1000_applies_before_height_filter():
    # 1000 higher-scored detections 30 px tall (below 50/1.25 = 40) fill the cap:
    # the TP at rank 1001 is cut, and the 30 px ones are then filtered -> nothing left.
    small = [(1, [600 + i, 0, 12, 30], 0.99) for i in range(1000)]
    tp = (1, PED, 0.5)
    assert mr([rec(1, [PED])], dets_of(*small, tp)).mr == 1.0
    assert mr([rec(1, [PED])], dets_of(*small[:999], tp)).mr == 0.0


def test_caltech_has_no_cap():
    small = [(1, [300 + i % 100, 10, 12, 30], 0.99) for i in range(1000)]
    records = [rec(1, [[10, 10, 41, 100]])]
    assert mr(records, dets_of(*small, (1, [10, 10, 41, 100], 0.5)), protocol="caltech").mr == 0.0


def test_ignored_gt_uses_intersection_over_detection_area():
    # A 20x50 detection fully inside a big ignore region: IoU 1000/40000 < 0.5,
    # IoA 1 -> ignored, not an FP. A detection half inside (IoA exactly 0.5) too.
    records = [rec(1, [PED, [200, 0, 200, 200]], ignore=[False, True])]
    dets = dets_of((1, [250, 50, 20, 50], 0.9), (1, [390, 50, 20, 50], 0.8), (1, PED, 0.7), (1, [410, 50, 20, 50], 0.6))
    m = match_setup(records, dets, REASONABLE)
    assert list(m.scores) == [0.7, 0.6]  # the two inside are gone; the one outside is an FP
    assert list(m.is_tp) == [True, False]


def test_regular_match_preferred_and_tie_goes_to_later_gt():
    # GT1 x=0, GT2 x=20 (both 40x100); det1 at x=10 has IoU 30/50 = 0.6 with both:
    # the later GT2 wins. det2 = GT2 exactly (IoU with GT1 = 20/60) finds GT2
    # taken -> FP. Had GT1 won, both would be TPs.
    records = [rec(1, [[0, 0, 40, 100], [20, 0, 40, 100]])]
    dets = dets_of((1, [10, 0, 40, 100], 0.9), (1, [20, 0, 40, 100], 0.8))
    m = match_setup(records, dets, REASONABLE)
    assert list(m.is_tp) == [True, False]
    # An ignored GT with IoA 1 listed first does not steal a regular match (IoU 0.6).
    records = [rec(1, [[0, 0, 400, 400], [0, 0, 40, 100]], ignore=[True, False])]
    m = match_setup(records, dets_of((1, [10, 0, 40, 100], 0.9)), REASONABLE)
    assert list(m.is_tp) == [True]


def test_equal_scores_keep_file_order_then_image_order():
    # Two detections with equal score on one GT: the first in the file is the TP.
    records = [rec(1, [PED]), rec(2)]
    m = match_setup(records, dets_of((1, [1, 0, 41, 100], 0.5), (1, [0, 0, 41, 100], 0.5)), REASONABLE)
    assert list(m.is_tp) == [True, False]
    # Across images, ties go in image-id order whatever the file order: the FP of
    # image 2 comes after the TP of image 1.
    m = match_setup(records, dets_of((2, FAR, 0.5), (1, PED, 0.5)), REASONABLE)
    assert list(m.det_image) == [0, 1] and list(m.is_tp) == [True, False]


def test_citypersons_bounds_inclusive_and_detection_filter_half_open():
    # h = 50 and vis = 0.65 count in Reasonable AND occ=heavy; h = 75 counts in small.
    records = [rec(1, [[0, 0, 20, 50], [100, 0, 30, 75], [200, 0, 40, 100]], vis=[0.65, 1.0, 0.2])]
    r = evaluate(records, {}, setups=["Reasonable", "Reasonable_small", "Reasonable_occ=heavy"]).results
    assert (r["Reasonable"].n_gt, r["Reasonable_small"].n_gt, r["Reasonable_occ=heavy"].n_gt) == (2, 2, 2)
    # Detection heights: keep h >= 50/1.25 = 40, drop h >= 75*1.25 = 93.75 in small.
    m = match_setup([rec(1)], dets_of((1, [0, 0, 30, 40], 0.9), (1, [0, 0, 30, 39.999], 0.8)), REASONABLE)
    assert list(m.scores) == [0.9]
    m = match_setup([rec(1)], dets_of((1, [0, 0, 30, 93.75], 0.9), (1, [0, 0, 30, 93.7], 0.8)), "Reasonable_small")
    assert list(m.scores) == [0.8]


def test_caltech_filter_bounds_labels_visibility_and_resize():
    inside = [10, 10, 41, 100]
    records = [
        rec(
            1,
            [inside, [4, 10, 41, 100], [100, 10, 41, 100], [200, 10, 41, 80], [300, 10, 41, 100], [400, 10, 41, 100]],
            cats=[PEDESTRIAN, PEDESTRIAN, UNSURE, PEDESTRIAN, PEDESTRIAN, IGNORE_REGION],
            vis_boxes=[[np.nan] * 4] * 4 + [[300, 10, 41, 50], [np.nan] * 4],
        )
    ]
    res = evaluate(records, {}, protocol="caltech", setups=["Reasonable", "Occ=none", "Scale=medium", "Scale=near", "Occ=partial"]).results
    # Reasonable: inside, h=80 and the half-visible one (vf 0.5 < 0.65 -> no): 2; x=4 is outside [5, 635].
    assert res["Reasonable"].n_gt == 2
    assert res["Occ=none"].n_gt == 2  # no occlusion box -> vf = inf
    assert res["Scale=medium"].n_gt == 0 and res["Scale=medium"].mr is None  # [30, 80): h = 80 excluded
    assert res["Scale=near"].n_gt == 2  # [80, inf): 100 and 80
    assert res["Occ=partial"].n_gt == 0  # vf = 0.5 outside [0.65, 1]
    # Regular GT is resized to w = 0.41 h around its centre: a 20-wide GT of
    # height 100 becomes 41 wide, so a 41-wide detection on its centre is a TP.
    thin = [rec(1, [[30, 10, 20, 100]])]
    det = dets_of((1, [19.5, 10, 41, 100], 0.9))
    assert mr(thin, det, protocol="caltech").mr == 0.0
    assert mr(thin, det, protocol="citypersons").mr == 1.0  # no resize in CityPersons: IoU 20/41


def test_caltech_detection_resize_switch():
    # A 100-wide detection on a 41-wide GT: IoU 0.41 fails; resized to 41 it matches.
    records = [rec(1, [[100, 10, 41, 100]])]
    det = dets_of((1, [70.5, 10, 100, 100], 0.9))
    assert mr(records, det, protocol="caltech").mr == 0.0
    assert mr(records, det, protocol="caltech", resize_dets=False).mr == 1.0


def test_n_images_counts_every_image():
    records = [rec(1, [PED])] + [rec(i) for i in range(2, 101)]
    result = mr(records, dets_of((1, FAR, 0.9), (1, PED, 0.8)))
    assert result.n_images == 100
    assert list(result.fppi) == [0.01, 0.01]
    # FPPI 0.01 <= every ref, and the TP shares that FPPI: recall 1 -> MR 0.
    assert result.mr == 0.0


def test_empty_detections_give_one_and_no_gt_gives_none():
    assert mr([rec(1, [PED])], {}).mr == 1.0
    assert mr([rec(1, [[10, 10, 41, 100]])], {}, protocol="caltech").mr == 1.0
    nothing = mr([rec(1, [PED], ignore=[True])], dets_of((1, PED, 0.9)))
    assert nothing.mr is None and nothing.n_gt == 0


def test_user_setup_and_mr_formula():
    # 1 image, 4 GT: TP, FP, TP. fppi 0, 1, 1 -> refs < 1 see recall 1/4 (the
    # point at fppi 0), ref 1 sees 2/4: MR = exp((8 ln .75 + ln .5) / 9).
    gt = [[100 * k, 0, 41, 100] for k in range(4)]
    dets = dets_of((1, gt[0], 0.9), (1, FAR[:1] + [300, 41, 100], 0.8), (1, gt[1], 0.7))
    result = mr([rec(1, gt)], dets, setup=Setup("mine", (50, 1e10), (0, 1e10)))
    assert result.mr == pytest.approx(math.exp((8 * math.log(0.75) + math.log(0.5)) / 9), abs=1e-15)


def test_citypersons_json_drops_categories_other_than_1(tmp_path):
    import json

    from pedcrowd.eval import load_ground_truth

    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 41, 100], "height": 100, "vis_ratio": 1, "ignore": 0},
        # category 2, not ignored: the official code never sees it, not even as an ignore region.
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [200, 0, 41, 100], "height": 100, "vis_ratio": 1, "ignore": 0},
    ]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": [{"id": 1, "im_name": "a_1.png"}], "annotations": anns,
                                "categories": [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "rider"}]}))
    gt = load_ground_truth(path)
    m = match_setup(gt, dets_of((1, [200, 0, 41, 100], 0.9), (1, [0, 0, 41, 100], 0.8)), REASONABLE)
    assert int(m.gt_per_image.sum()) == 1
    assert list(m.is_tp) == [False, True]  # the detection on the rider is an FP


def test_annotation_id_zero_counts_its_match_as_a_false_positive():
    # The official code stores a match as the GT id and reads 0 as "unmatched":
    # the detection on a GT with id 0 is an FP, and the GT (taken) is missed.
    # 1 image, 1 GT, 1 detection on it: MR 1 with id 0, 0 with id 1.
    records = [rec(1, [PED])]
    dets = dets_of((1, PED, 0.9))
    records[0].ann_ids = np.array([0])
    zero = mr(records, dets)
    assert zero.mr == 1.0 and zero.n_gt == 1
    # Its detection is an FP: it is not absorbed like an ignored match would be.
    assert match_setup(records, dets, Setup("R", (50, 1e10), (0.65, 1e10))).is_tp.tolist() == [False]
    records[0].ann_ids = np.array([1])
    assert mr(records, dets).mr == 0.0
