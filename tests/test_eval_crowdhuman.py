"""CrowdHuman evaluation (CrowdDet's AP, MR^-2, JI): one hand-built case per quirk, the
crash cases, the CLI, properties, and agreement with the plain loops of pedcrowd/reference/crowdhuman.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.eval.crowdhuman import evaluate_crowdhuman, load_crowdhuman
from pedcrowd.eval.mr import SetupMatches
from pedcrowd.formats.records import ImageRecord
from pedcrowd.reference.crowdhuman import (
    brute_force_matching,
    load,
    lsa_matching,
    reference_apmr,
    reference_ji,
    synthetic_crowdhuman,
)

EPS = 1e-6
runner = CliRunner()


def person(box, tag="person", ignore=0):
    return {"tag": tag, "fbox": box, "vbox": box, "hbox": box, "extra": {"ignore": ignore}}


def write_case(tmp_path, images, dets):
    """images: [(ID, gtboxes, width, height)]; dets: [(ID, [x, y, w, h], score)] -> paths (gt, dets, sizes)."""
    gt = tmp_path / "gt.odgt"
    gt.write_text("".join(json.dumps({"ID": i, "gtboxes": g}) + "\n" for i, g, _, _ in images))
    dt = tmp_path / "dets.json"
    dt.write_text(json.dumps([{"file_name": f"{i}.jpg", "category_id": 1, "bbox": b, "score": s} for i, b, s in dets]))
    sizes = tmp_path / "images.json"
    sizes.write_text(json.dumps({"images": [
        {"id": k + 1, "file_name": f"{i}.jpg", "width": w, "height": h} for k, (i, _, w, h) in enumerate(images)
    ]}))
    return gt, dt, sizes


def evaluate_case(tmp_path, images, dets):
    return evaluate_crowdhuman(*load_crowdhuman(*write_case(tmp_path, images, dets)))


def test_strict_iou_threshold(tmp_path):
    # IoU exactly 0.5 (10000 / 20000; 0.5 - 2.5e-11 with the +1e-6) is a false positive;
    # IoU 10000 / 19900 = 0.5025 is a true positive.
    r = evaluate_case(tmp_path, [("a", [person([0, 0, 100, 100])], 1000, 1000)],
                      [("a", [0, 0, 100, 200], 0.9), ("a", [0, 0, 100, 199], 0.8)])
    # FP then TP: recall [0, 1], precision [0, 1/2] -> AP = 1 * (0 + 1/2) / 2.
    assert r.ap == pytest.approx(0.25, abs=1e-12)
    # fppi [1, 1], miss [1, 0]: every reference first reached at index 0 -> miss 1.
    assert r.mr == 1.0
    # JI at t = 0: k = 1, m = 1, n = 2; at t = 0.8 only the FP remains; at 0.9 none.
    assert r.ji == pytest.approx(1 / (2 + EPS), abs=1e-15)
    assert r.ji_per_threshold[8] == 0.0 and r.ji_per_threshold[9] == 0.0


def test_fppi_lookup_first_point_at_or_past_reference(tmp_path):
    # Ten images, one person each; TP, FP, TP, FP in score order: fppi [0, .1, .1, .2], miss [.9, .9, .8, .8].
    images = [(f"i{k}", [person([10, 10, 50, 100])], 200, 200) for k in range(10)]
    dets = [("i0", [10, 10, 50, 100], 0.9), ("i1", [120, 10, 50, 100], 0.8),
            ("i2", [10, 10, 50, 100], 0.7), ("i3", [120, 10, 50, 100], 0.6)]
    r = evaluate_case(tmp_path, images, dets)
    # refs 0.01 .. 0.1 -> index 1 (miss .9); 0.1778 -> index 3 (.8); 0.3162 .. 1 -> not reached, last (.8).
    assert r.mr == pytest.approx(math.exp((5 * math.log(0.9) + 4 * math.log(0.8)) / 9), abs=1e-15)
    # The bootstrap path (compare) gives the same lookup: all images once, and image 0 twice
    # (11 images, 11 GT: TP, TP, FP at 1/11, TP, FP at 2/11; refs up to 0.0562 -> miss 9/11, 0.1 on -> 8/11).
    from pedcrowd.eval.crowdhuman_matching import prepare, setup_matches

    sm = setup_matches(prepare(*load_crowdhuman(*write_case(tmp_path, images, dets))))
    assert sm.mr(np.ones(10, dtype=np.int64)) == pytest.approx(r.mr, abs=1e-15)
    twice = np.r_[2, np.ones(9, dtype=np.int64)]
    assert sm.mr(twice) == pytest.approx(math.exp((4 * math.log(9 / 11) + 5 * math.log(8 / 11)) / 9), abs=1e-15)
    # CityPersons' lookup (last point with fppi <= ref) takes index 2 at ref 0.1 = 1 / 10 images.
    cp = SetupMatches("All", "citypersons", np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]),
                      np.array([0, 1, 2, 3]), np.ones(10, dtype=np.int64))
    assert cp.mr() == pytest.approx(math.exp((4 * math.log(0.9) + 5 * math.log(0.8)) / 9), abs=1e-15)


def test_trapezoid_ap_without_envelope(tmp_path):
    # Two people, TP, FP, TP: recall [1/2, 1/2, 1], precision [1, 1/2, 2/3].
    images = [("a", [person([0, 0, 50, 100]), person([300, 0, 50, 100])], 500, 200)]
    dets = [("a", [0, 0, 50, 100], 0.9), ("a", [150, 0, 50, 100], 0.8), ("a", [300, 0, 50, 100], 0.7)]
    r = evaluate_case(tmp_path, images, dets)
    # Only the last step adds area: 1/2 * (1/2 + 2/3) / 2 = 7/24 (an envelope would give 5/6).
    assert r.ap == pytest.approx(7 / 24, abs=1e-12)


def test_ji_maximum_weight_not_maximum_cardinality(tmp_path):
    # Intervals in x (all boxes y 0..100). IoU > 0.5 pairs: d1-g3 50/85, d2-g1 40/75, d2-g2 45/50,
    # d3-g2 45/80, d3-g3 65/75. Three pairs {d1g3, d2g1, d3g2} weigh 1.684; two {d2g2, d3g3} weigh 1.767.
    gts = [person([125, 0, 70, 100]), person([150, 0, 50, 100]), person([165, 0, 65, 100])]
    dets = [("a", [155, 0, 45, 100], 0.9), ("a", [155, 0, 75, 100], 0.8), ("a", [180, 0, 70, 100], 0.75)]
    r = evaluate_case(tmp_path, [("a", gts, 400, 200)], dets)
    # t <= 0.7: k = 2, m = n = 3 -> 2 / (4 + eps) (a maximum-cardinality matching would give 1).
    assert r.ji_per_threshold[0] == pytest.approx(2 / (4 + EPS), abs=1e-15)
    # t = 0.8: d2 alone, k = 1, n = 1, m = 3; t = 0.9: nothing.
    assert r.ji_per_threshold[8] == pytest.approx(1 / (3 + EPS), abs=1e-15)
    assert r.ji == pytest.approx(2 / (4 + EPS), abs=1e-15)
    # AP/MR use the greedy matching: d2 -> g2, d3 -> g3, d1 FP: recall [1/3, 2/3, 2/3], precision [1, 1, 2/3].
    assert r.ap == pytest.approx(1 / 3, abs=1e-12)
    assert r.mr == pytest.approx(1 / 3, abs=1e-12)


def test_ioa_denominators(tmp_path):
    # g2 lies inside the mask R; d1 inside R (IoA 1: dropped); d3 IoA 80000 / 160000 = 0.5 (not > 0.5: FP);
    # d4 contains R: IoA over the detection 160000 / 360000 (FP; over R's area it would be 1).
    gts = [person([0, 0, 100, 200]), person([550, 50, 100, 200]), person([500, 0, 400, 400], tag="mask")]
    dets = [("a", [600, 100, 50, 100], 0.9), ("a", [0, 0, 100, 200], 0.8), ("a", [300, 0, 400, 400], 0.7),
            ("a", [400, 0, 600, 600], 0.6), ("a", [550, 50, 100, 200], 0.05)]
    r = evaluate_case(tmp_path, [("a", gts, 1000, 1000)], dets)
    assert r.n_gt == 2
    # TP, FP, FP, TP: recall [1/2, 1/2, 1/2, 1], precision [1, 1/2, 1/3, 1/2] -> AP = 1/2 * (1/3 + 1/2) / 2.
    assert r.ap == pytest.approx(5 / 24, abs=1e-12)
    assert r.mr == pytest.approx(0.5, abs=1e-12)  # fppi [0, 1, 2, 2]: every ref first reached at index 1
    ji = r.ji_per_threshold
    # t = 0: k = 2, n = 5 - 1 (d1 covered), m = 2.
    assert ji[0] == pytest.approx(2 / (4 + EPS), abs=1e-15)
    # t = 0.1: d5 gone; g2 unmatched and inside R (IoA over its own area = 1) leaves m; k = 1, n = 3, m = 1.
    assert ji[1] == pytest.approx(1 / (3 + EPS), abs=1e-15)
    # t = 0.6 (1e-1 * 6 = 0.6000000000000001): d4 (0.6) out: k = 1, n = 2, m = 1; t = 0.7: d3 out: n = 1.
    assert ji[6] == pytest.approx(1 / (2 + EPS), abs=1e-15)
    assert ji[7] == pytest.approx(1 / (1 + EPS), abs=1e-15)
    # t = 0.8: d1 only (covered): k = 0, n = 0, m = 1 (g1 unmatched, not covered) -> 0.
    assert ji[8] == 0.0 and r.ji == ji[7]


def test_ties_go_to_the_first_gt(tmp_path):
    # d1 has IoU 0.6 with both people; it takes the first, so d2 (IoU 0.818 with the second) is a TP too.
    gts = [person([0, 0, 100, 100]), person([50, 0, 100, 100])]
    dets = [("a", [25, 0, 100, 100], 0.9), ("a", [60, 0, 100, 100], 0.8)]
    r = evaluate_case(tmp_path, [("a", gts, 300, 300)], dets)
    assert r.ap == pytest.approx(0.5, abs=1e-12)  # recall [1/2, 1], precision [1, 1]
    assert r.mr == 0.0  # no FP: fppi never reaches a reference, last point's miss rate is 0


def test_clipping(tmp_path):
    # The person reaches past the left border: clipped to x 0..50, as is the detection (IoU 1 -> TP;
    # unclipped IoU would be 0.5). The second detection starts past the right border: x1 -> W - 1.
    gts = [person([-50, 0, 100, 200])]
    dets = [("a", [0, 0, 50, 200], 0.9), ("a", [150, 0, 50, 200], 0.8)]
    r = evaluate_case(tmp_path, [("a", gts, 100, 200)], dets)
    # TP then FP: recall [1, 1], precision [1, 1/2] -> AP 0; miss 0 at fppi 1.
    assert r.ap == 0.0 and r.mr == 0.0
    # JI: the FP is 1 px wide (99..100), still counted in n: k = 1, m = 1, n = 2.
    assert r.ji_per_threshold[0] == pytest.approx(1 / (2 + EPS), abs=1e-15)
    assert r.ji == pytest.approx(1 / (1 + EPS), abs=1e-15)  # t = 0.8: the TP alone


def test_crash_cases_and_crowddet_records(tmp_path):
    # A: two people, CrowdDet record; B: empty gtboxes (CrowdDet crashes), record with one FP;
    # C: one person, no record (CrowdDet crashes), size from --images.
    gt = tmp_path / "gt.odgt"
    gt.write_text("\n".join(json.dumps(d) for d in [
        {"ID": "A", "gtboxes": [person([0, 0, 50, 100]), person([100, 0, 50, 100])]},
        {"ID": "B", "gtboxes": []},
        {"ID": "C", "gtboxes": [person([0, 0, 50, 100])]},
    ]) + "\n")
    dt = tmp_path / "dump.json"
    dt.write_text("\n".join(json.dumps(d) for d in [
        {"ID": "A", "height": 200, "width": 300, "dtboxes": [
            {"box": [0, 0, 50, 100], "score": 0.9, "tag": 1}, {"box": [100, 0, 50, 100], "score": 0.7, "tag": 1}]},
        {"ID": "B", "height": 200, "width": 300, "dtboxes": [{"box": [10, 10, 50, 100], "score": 0.8, "tag": 1}]},
    ]) + "\n")
    sizes = tmp_path / "images.json"
    sizes.write_text(json.dumps({"images": [{"id": 3, "file_name": "C.jpg", "width": 300, "height": 200}]}))
    result = runner.invoke(app, ["eval", "--protocol", "crowdhuman", "--gt", str(gt), "--dets", str(dt),
                                 "--images", str(sizes), "--metric", "all", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["protocol"] == "crowdhuman" and doc["metric"] == "all" and list(doc["results"]) == ["All"]
    r = doc["results"]["All"]
    assert (r["n_gt"], r["n_images"]) == (3, 3)
    # TP, FP, TP over 3 images: recall [1/3, 1/3, 2/3], precision [1, 1/2, 2/3].
    assert r["ap"] == pytest.approx((1 / 3) * (1 / 2 + 2 / 3) / 2, abs=1e-12)
    # fppi [0, 1/3, 1/3]: refs up to 0.3162 -> index 1 (miss 2/3); 0.5623 and 1 never reached -> last (1/3).
    assert r["mr"] == pytest.approx(math.exp((7 * math.log(2 / 3) + 2 * math.log(1 / 3)) / 9), abs=1e-12)
    # t = 0: A 2 / (2 + eps), B (n = 1, m = 0) 0, C (m = 1) 0, over 3 images.
    assert r["ji"] == pytest.approx(2 / (2 + EPS) / 3, abs=1e-12)
    # t = 0.8: B has no detection and no GT: not counted; A 1 / (2 + eps), C 0.
    assert r["ji_per_threshold"][8] == pytest.approx(1 / (2 + EPS) / 2, abs=1e-12)


def test_cli_table_plot_and_errors(tmp_path):
    gt, dt, sizes = write_case(tmp_path, [("a", [person([0, 0, 50, 100])], 200, 200)], [("a", [0, 0, 50, 100], 0.9)])
    base = ["eval", "--protocol", "crowdhuman", "--gt", str(gt), "--dets", str(dt), "--images", str(sizes)]
    plot = tmp_path / "c.png"
    result = runner.invoke(app, [*base, "--metric", "all", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    row = [c.strip() for c in result.stdout.splitlines()[-2].split("│") if c.strip()]
    assert row == ["0.00", "0.00", "100.00", "1", "1"]  # AP of one point is 0; JI 1 / (1 + eps)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(runner.invoke(app, [*base, "--metric", "JI", "--json"]).stdout)
    assert doc["results"]["All"]["mr"] is None and doc["results"]["All"]["ji"] == pytest.approx(1 / (1 + EPS))
    for extra, message in [
        (["--metric", "JI", "--plot", str(plot)], "--plot draws MR-FPPI curves"),
        (["--setup", "Reasonable"], "one setup"),
    ]:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, result.output
    no_size = runner.invoke(app, ["eval", "--protocol", "crowdhuman", "--gt", str(gt), "--dets", str(dt)])
    assert no_size.exit_code == 2 and "no size for image 'a.jpg'" in no_size.output
    # .odgt GT is evaluated under crowdhuman by default (issue 23): JI refused when citypersons is asked for
    wrong = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dt), "--metric", "JI", "--protocol", "citypersons"])
    assert wrong.exit_code == 2 and "--protocol crowdhuman" in wrong.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ID": "zzz", "dtboxes": []}) + "\n")
    result = runner.invoke(app, [*base[:5], "--dets", str(bad), "--images", str(sizes)])
    assert result.exit_code == 2 and "bad.json:1: detections for image 'zzz'" in result.output


def test_sizes_from_image_files(tmp_path):
    from PIL import Image

    gt, dt, _ = write_case(tmp_path, [("a", [person([-50, 0, 100, 200])], 100, 200)], [("a", [0, 0, 50, 200], 0.9)])
    (tmp_path / "Images").mkdir()
    Image.new("RGB", (100, 200)).save(tmp_path / "Images" / "a.jpg")
    r = evaluate_crowdhuman(*load_crowdhuman(gt, dt))
    assert r.mr == 0.0  # clipped to the 100 px wide image: IoU 1


def test_matching_oracles_agree():
    rng = np.random.default_rng(3)
    for _ in range(150):
        d, g = rng.integers(1, 5, 2)
        w = np.where(rng.random((d, g)) < 0.5, rng.uniform(0.5, 1.0, (d, g)), 0.0)
        pairs = lsa_matching(w)
        assert sum(w[i, j] for i, j in pairs) == pytest.approx(brute_force_matching(w), abs=1e-12)


def test_star_matchings_equal_a_loop_per_threshold():
    """Every threshold at once equals, threshold by threshold, the heaviest active edge of each star."""
    from pedcrowd.eval.ji import _star_matchings

    rng = np.random.default_rng(0)
    comp = np.sort(rng.integers(0, 40, 300))
    w = rng.choice([0.6, 0.7, 0.8, 0.9], 300)  # many exact ties: the earlier edge wins
    level = rng.integers(0, 11, 300)
    edge, first, stop = _star_matchings(comp, w, level)
    got = {(int(e), t) for e, a, b in zip(edge, first, stop, strict=True) for t in range(a, b)}
    want = set()
    for t in range(10):
        for c in np.unique(comp):
            active = np.flatnonzero((comp == c) & (level > t))
            if len(active):
                want.add((int(active[np.argmax(w[active])]), t))  # argmax: the first heaviest
    assert got == want


def test_pair_blocks_equal_one_block(tmp_path, monkeypatch):
    """Overlaps computed a few candidate pairs at a time equal those computed at once."""
    import pedcrowd.eval.crowdhuman_matching as ch

    gt, dt, sizes = synthetic_crowdhuman(tmp_path, 12, 120, 700, seed=0, ignore_fraction=0.15)
    loaded = load_crowdhuman(gt, dt, sizes)
    whole = ch.prepare(*loaded).overlaps()
    monkeypatch.setattr(ch, "_PAIR_CHUNK", 97)
    blocks = ch.prepare(*loaded).overlaps()
    assert len(whole[0]) > 500
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_array_equal(a, b)


def test_overlaps_equal_all_pairs():
    """The pruned pair search (only GT that may cover half a detection) finds every pair an all-pairs loop finds."""
    from pedcrowd.eval.crowdhuman_matching import EPS, Prepared

    rng = np.random.default_rng(1)
    n_img, n_det, n_gt = 6, 300, 80
    def boxes(n):  # integer corners: many exact ties at the IoA / IoU = 0.5 boundary
        xy = rng.integers(0, 60, (n, 2)).astype(float)
        return np.column_stack([xy, xy + rng.integers(1, 40, (n, 2))])
    det, gt = boxes(n_det), boxes(n_gt)
    det_img, gt_img = np.sort(rng.integers(0, n_img, n_det)), np.sort(rng.integers(0, n_img, n_gt))
    prep = Prepared(det, rng.random(n_det), det_img, gt, gt_img, rng.random(n_gt) < 0.3, n_img)
    got = {(int(d), int(g)): (iou, ioa) for d, g, iou, ioa in zip(*prep.overlaps(), strict=True)}
    want = {}
    for d in range(n_det):
        for g in np.flatnonzero(gt_img == det_img[d]):
            iw = min(det[d, 2], gt[g, 2]) - max(det[d, 0], gt[g, 0])
            ih = min(det[d, 3], gt[g, 3]) - max(det[d, 1], gt[g, 1])
            if iw <= 0 or ih <= 0:
                continue
            inter, a_d = iw * ih, (det[d, 2] - det[d, 0]) * (det[d, 3] - det[d, 1])
            iou = inter / (a_d + (gt[g, 2] - gt[g, 0]) * (gt[g, 3] - gt[g, 1]) - inter + EPS)
            ioa = inter / (a_d + EPS)
            if iou > 0.5 or ioa > 0.5:
                want[(d, int(g))] = (iou, ioa)
    assert len(want) > 100 and got.keys() == want.keys()
    for key, (iou, ioa) in want.items():
        assert got[key] == (iou, ioa)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_plain_loops(tmp_path, seed):
    gt, dt, sizes = synthetic_crowdhuman(tmp_path, 12, 120, 700, seed=seed, ignore_fraction=0.15)
    r = evaluate_crowdhuman(*load_crowdhuman(gt, dt, sizes))
    images = load(gt, dt, sizes)
    ap, mr = reference_apmr(images)
    ji, per_t = reference_ji(images)
    assert r.ap == pytest.approx(ap, abs=1e-12) and r.mr == pytest.approx(mr, abs=1e-12)
    assert r.ji == pytest.approx(ji, abs=1e-12)
    assert r.ji_per_threshold == pytest.approx(per_t, abs=1e-12)
    assert 0.05 < r.mr < 0.95 and 0.05 < r.ji < 0.95  # a scene where all three numbers are informative


def test_crowddet_dump_with_images_without_detections(tmp_path):
    """CrowdDet writes a line with ``"dtboxes": []`` for an image without detections: it is
    an image without detections, and the numbers equal the plain loops' on the same set."""
    gt, dt, sizes = synthetic_crowdhuman(tmp_path, 12, 120, 700, seed=4, ignore_fraction=0.15)
    entries = json.loads(dt.read_text())
    empty = {2, 5, 11}  # these images lose every detection
    kept = [d for d in entries if d["image_id"] not in empty]
    dt.write_text(json.dumps(kept))
    size_of = {im["id"]: im for im in json.loads(sizes.read_text())["images"]}
    ids = [json.loads(line)["ID"] for line in gt.read_text().splitlines()]
    dump = tmp_path / "dump.odgt"
    dump.write_text("".join(json.dumps({
        "ID": name, "width": size_of[k]["width"], "height": size_of[k]["height"],
        "dtboxes": [{"box": d["bbox"], "score": d["score"], "tag": 1} for d in kept if d["image_id"] == k],
    }) + "\n" for k, name in enumerate(ids, start=1)))
    assert dump.read_text().count('"dtboxes": []') == len(empty)
    r = evaluate_crowdhuman(*load_crowdhuman(gt, dump))
    images = load(gt, dt, sizes)
    assert all(not images[k - 1]["dets"] for k in empty) and images[2]["dets"]
    ap, mr = reference_apmr(images)
    ji, per_t = reference_ji(images)
    assert r.ap == pytest.approx(ap, abs=1e-12) and r.mr == pytest.approx(mr, abs=1e-12)
    assert r.ji == pytest.approx(ji, abs=1e-12)
    assert r.ji_per_threshold == pytest.approx(per_t, abs=1e-12)
    assert r.n_images == 12
    result = runner.invoke(app, ["eval", "--protocol", "crowdhuman", "--gt", str(gt), "--dets", str(dump),
                                 "--metric", "all", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["All"]["ap"] == pytest.approx(ap, abs=1e-12)
    bad = tmp_path / "bad.odgt"
    bad.write_text(json.dumps({"ID": ids[0], "dtboxes": {}}) + "\n")
    result = runner.invoke(app, ["eval", "--protocol", "crowdhuman", "--gt", str(gt), "--dets", str(bad),
                                 "--images", str(sizes)])
    assert result.exit_code == 2 and "bad.odgt:1: 'dtboxes' must be a list" in result.output


# ----- properties -----

box = st.tuples(st.integers(0, 150), st.integers(0, 150), st.integers(5, 60), st.integers(5, 60))
scene = st.lists(st.lists(box, min_size=0, max_size=5), min_size=1, max_size=4)


def records_of(images) -> list[ImageRecord]:
    return [
        ImageRecord(id=k + 1, file_name=f"{k}.jpg", boxes=np.array(b, dtype=np.float64).reshape(-1, 4),
                    ignore=np.zeros(len(b), bool))
        for k, b in enumerate(images)
    ]


@settings(max_examples=60, deadline=None)
@given(scene)
def test_perfect_detections(images):
    records = records_of(images)
    n_gt = sum(len(b) for b in images)
    scores = iter(np.linspace(1.0, 0.95, max(n_gt, 1)))
    dets = {r.id: (r.boxes.copy(), np.array([next(scores) for _ in range(len(r))])) for r in records}
    sizes = {r.id: (220, 220) for r in records}
    res = evaluate_crowdhuman(records, dets, sizes)
    if n_gt == 0:
        assert res.mr is None and res.ap is None and res.ji is None
        return
    assert res.mr == 0.0
    # The trapezoid starts at the first detection (recall 1 / n_gt), so perfect AP is 1 - 1 / n_gt.
    assert res.ap == pytest.approx(1 - 1 / n_gt, abs=1e-12)
    assert res.ji == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(scene, scene, st.randoms(use_true_random=False))
def test_order_does_not_matter(gt_images, det_images, rnd):
    records = records_of(gt_images)
    n = len(records)
    det_boxes = [np.array(b, dtype=np.float64).reshape(-1, 4) for b in det_images[:n]] + [np.zeros((0, 4))] * n
    scores = iter(rnd.sample(range(1, 10_000), sum(len(b) for b in det_boxes)))
    dets = {r.id: (det_boxes[k], np.array([next(scores) / 10_000 for _ in det_boxes[k]])) for k, r in enumerate(records)}
    sizes = {r.id: (200, 190) for r in records}
    base = evaluate_crowdhuman(records, dets, sizes)
    # Shuffle the images and the detections inside each image (the GT order inside an image is
    # part of the protocol: IoU ties go to the earlier GT).
    shuffled_records = rnd.sample(records, n)
    shuffled = {}
    for r in records:
        p = rnd.sample(range(len(dets[r.id][1])), len(dets[r.id][1]))
        shuffled[r.id] = (dets[r.id][0][p], dets[r.id][1][p])
    other = evaluate_crowdhuman(shuffled_records, shuffled, sizes)
    for key in ("mr", "ap", "ji"):
        a, b = getattr(base, key), getattr(other, key)
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)


def test_compare_crowdhuman(tmp_path):
    from pedcrowd.compare import compare

    images = [(f"i{k}", [person([10, 10, 50, 100])], 200, 200) for k in range(10)]
    good = [("i0", [10, 10, 50, 100], 0.9), ("i1", [120, 10, 50, 100], 0.8),
            ("i2", [10, 10, 50, 100], 0.7), ("i3", [120, 10, 50, 100], 0.6)]
    gt, dt, sizes = write_case(tmp_path, images, good)
    worse = tmp_path / "worse.json"
    worse.write_text(json.dumps([{"file_name": "i0.jpg", "bbox": [10, 10, 50, 100], "score": 0.9}]))
    c = compare([f"good={dt}", f"worse={worse}"], gt, protocol="crowdhuman", images=sizes, bootstrap=50)
    assert c.setups == ["All"]
    good_r, worse_r = c.runs
    assert good_r.mr["All"] == pytest.approx(math.exp((5 * math.log(0.9) + 4 * math.log(0.8)) / 9), abs=1e-15)
    assert worse_r.mr["All"] == pytest.approx(0.9, abs=1e-15)  # one TP, no FP: miss 0.9 at every reference
    assert good_r.ap == evaluate_case(tmp_path, images, good).ap and good_r.ji is not None
    assert good_r.ci["All"] is not None and worse_r.delta["All"] == pytest.approx(0.9 - good_r.mr["All"])
    result = runner.invoke(app, ["compare", f"good={dt}", f"worse={worse}", "--gt", str(gt), "--protocol",
                                 "crowdhuman", "--images", str(sizes), "--bootstrap", "20", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["runs"][1]["ji"] == pytest.approx(1 / (1 + EPS) / 10, abs=1e-12)  # image i0 only, over 10 images


def test_eval_crowdhuman_loads_no_torch(tmp_path):
    import subprocess
    import sys

    gt, dt, sizes = write_case(tmp_path, [("a", [person([0, 0, 50, 100])], 200, 200)], [("a", [0, 0, 50, 100], 0.9)])
    code = (
        "import sys\nfrom pedcrowd.cli import app\n"
        f"app(['eval', '--protocol', 'crowdhuman', '--gt', {str(gt)!r}, '--dets', {str(dt)!r}, '--images', "
        f"{str(sizes)!r}, '--metric', 'all', '--json'], standalone_mode=False)\n"
        "print('HEAVY', [m for m in ('torch', 'torchvision', 'cv2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
