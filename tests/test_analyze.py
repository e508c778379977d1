"""``pedcrowd analyze``: hand-built scenes where each error type is known by construction,
the NMS replay against torchvision, and the model path (NMS off, replay, restore)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pedcrowd.analyze import analyze_detections, nms_with_suppressors, replay_nms
from pedcrowd.box_np import box_iou
from pedcrowd.cli import app
from pedcrowd.formats.records import ImageRecord

runner = CliRunner()

# One image, five people 200 px tall (all in Reasonable):
A = [0, 0, 100, 200]
B = [25, 0, 100, 200]  # IoU(A, B) = 75 / 125 = 0.6
C = [300, 0, 100, 200]
D = [800, 0, 100, 200]
E = [1000, 0, 100, 200]
PEOPLE = [A, B, C, D, E]
# Pre-NMS boxes: A and B exactly; a box 19 px left of C (IoU 81/119 = 0.68 with C) and its
# duplicate 19 px right of C (IoU with C 0.68, with the first 62/138 = 0.449: NMS 0.5 keeps it);
# a background box; D only at score 0.2; nothing for E.
PRE = [
    (A, 0.9), ([281, 0, 100, 200], 0.85), (B, 0.8), ([600, 0, 50, 100], 0.75), ([319, 0, 100, 200], 0.7), (D, 0.2),
]


def records(people=PEOPLE) -> list[ImageRecord]:
    boxes = np.array(people, dtype=np.float64)
    return [ImageRecord(id=1, file_name="a.png", boxes=boxes, ignore=np.zeros(len(boxes), bool),
                        heights=boxes[:, 3].copy(), vis_ratios=np.ones(len(boxes)), width=1200, height=300)]


def pre_dets(rows=PRE):
    return {1: (np.array([b for b, _ in rows], dtype=np.float64), np.array([s for _, s in rows]))}


def test_scene_counts_and_oracles():
    rep = analyze_detections(records(), pre_dets(), protocol="citypersons", nms_thresh=0.5, points=("score=0.5",))
    (p,) = rep.points
    # Kept above 0.5: A's box (TP), the box left of C (TP), background (FP), the duplicate (FP).
    assert (p.n_missed, p.n_fp) == (3, 2)
    assert p.misses == {"nms_other_person": 1, "nms_false_positive": 0, "low_score": 1, "never_proposed": 1, "other": 0}
    assert p.false_positives == {"duplicate": 1, "localisation": 0, "background": 1}
    assert p.flags == {"duplicate_below_nms": 1, "localisation_crowd": 0}
    # Whole curve: TP .9, TP .85, FP .75, FP .7, TP .2 over 5 people: every reference sees recall 0.4.
    assert rep.mr == pytest.approx(0.6, abs=1e-12)
    # AP: 0.2 * (1 + 1) / 2 + 0.2 * (1/2 + 3/5) / 2.
    assert rep.ap == pytest.approx(0.2 + 0.11, abs=1e-12)
    o = p.oracle
    assert o["nms_other_person"]["mr"] == pytest.approx(0.4, abs=1e-12)  # B's box back: 3 TPs before any FP
    assert o["nms_all"]["mr"] == pytest.approx(0.4, abs=1e-12)
    assert o["nms_false_positive"]["mr"] == pytest.approx(0.6, abs=1e-12)  # nothing to restore
    # Without the duplicate (or the background box) one FP remains: at FPPI 1 the recall reaches 0.6.
    one_fp = math.exp((8 * math.log(0.6) + math.log(0.4)) / 9)
    assert o["duplicate"]["mr"] == pytest.approx(one_fp, abs=1e-12)
    assert o["background"]["mr"] == pytest.approx(one_fp, abs=1e-12)
    # D's box at 0.5 and E's GT box at 0.5 come after both FPs: MR unchanged.
    assert o["low_score"]["mr"] == pytest.approx(0.6, abs=1e-12)
    assert o["never_proposed"]["mr"] == pytest.approx(0.6, abs=1e-12)
    (ex,) = p.examples
    assert ex["person"] == B and ex["suppressed"] == B and ex["suppressor"] == A


def test_nms_threshold_one_means_no_nms_misses():
    rep = analyze_detections(records(), pre_dets(), protocol="citypersons", nms_thresh=1.0, points=("score=0.5",))
    (p,) = rep.points
    assert p.misses["nms_other_person"] == 0 and p.misses["nms_false_positive"] == 0
    assert p.n_missed == 2  # D (low score) and E (never proposed); B is found


def test_suppressed_by_a_false_positive_and_localisation_crowd():
    people = [[0, 0, 100, 200], [60, 0, 100, 200]]  # IoU 40 / 160 = 0.25
    # F = x 20..180, y 0..260 (area 41600): IoU with person 1 is 20000 / 41600 = 0.481 (not a match,
    # but > the NMS 0.45, so it suppresses person 1's own box); with person 0 16000 / 45600 = 0.351.
    rows = [([20, 0, 160, 260], 0.95), (people[0], 0.9), (people[1], 0.5)]
    rep = analyze_detections(records(people), pre_dets(rows), protocol="citypersons", nms_thresh=0.45, points=("score=0.4",))
    (p,) = rep.points
    assert p.n_missed == 1 and p.misses["nms_false_positive"] == 1
    assert p.n_fp == 1 and p.false_positives["localisation"] == 1 and p.flags["localisation_crowd"] == 1
    # FP .95 then TP .9: no point with FPPI <= ref < 1, so CityPersons reads the final recall 0.5.
    assert rep.mr == pytest.approx(0.5, abs=1e-12)
    # Moving F onto the missed person 1 leaves two TPs and no FP.
    assert p.oracle["localisation"]["mr"] == 0.0
    # Person 1's box back (score 0.5): the final recall is 1 -> miss 0 at every reference.
    assert p.oracle["nms_false_positive"]["mr"] == 0.0
    assert p.oracle["nms_other_person"]["mr"] == pytest.approx(0.5, abs=1e-12)


def test_nms_replay_matches_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.ops import nms

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 40))
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(5, 60, (n, 2))
        boxes = np.column_stack([xy, wh])
        scores = rng.permutation(n) / n + 0.01
        keep, sup = nms_with_suppressors(boxes, scores, 0.5, max_dets=10)
        xyxy = torch.tensor(np.column_stack([xy, xy + wh]))
        ref = nms(xyxy, torch.tensor(scores), 0.5)[:10].numpy()
        assert keep.tolist() == ref.tolist()
        iou = box_iou(xyxy.numpy(), xyxy.numpy())
        for i in np.flatnonzero(sup >= 0):
            s = sup[i]
            assert scores[s] > scores[i] and iou[i, s] > 0.5 and s not in np.flatnonzero(sup >= 0)
        assert (sup == -2).sum() == max(0, (sup == -1).sum() + (sup == -2).sum() - 10)


def test_cli_pre_nms_file_and_crowdhuman(tmp_path):
    gt = tmp_path / "gt.odgt"
    gt.write_text(json.dumps({"ID": "a", "width": 1200, "height": 300, "gtboxes": [
        {"tag": "person", "fbox": b, "extra": {}} for b in PEOPLE]}) + "\n")
    dets = tmp_path / "pre.json"
    dets.write_text(json.dumps([{"file_name": "a.jpg", "bbox": b, "score": s} for b, s in PRE]))
    result = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--protocol", "crowdhuman",
                                 "--at", "score=0.5", "--at", "fppi=1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["protocol"] == "crowdhuman" and doc["setup"] == "All" and doc["nms_thresh"] == 0.5
    first, second = doc["points"]
    assert first["misses"]["nms_other_person"] == 1 and first["false_positives"]["duplicate"] == 1
    # fppi=1: the last kept detection with FPPI <= 1 is the background box (0.75).
    assert second["score"] == 0.75 and second["n_fp"] == 1
    table = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--protocol", "crowdhuman"])
    assert table.exit_code == 0 and "removed by NMS (another person)" in table.stdout
    import cv2

    (tmp_path / "Images").mkdir()
    cv2.imwrite(str(tmp_path / "Images" / "a.jpg"), np.zeros((300, 1200, 3), np.uint8))
    vis = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--protocol", "crowdhuman",
                              "--image-root", str(tmp_path / "Images"), "--vis", str(tmp_path / "vis"),
                              "--at", "score=0.5"])
    assert vis.exit_code == 0, vis.output
    drawn = cv2.imread(str(tmp_path / "vis" / "a_nms.jpg")).astype(int)
    # B's suppressed box (orange, BGR 0 165 255; drawn over B's green GT box) at its right edge x = 125,
    # its suppressor A (red) at A's right edge x = 100; nothing at x = 200.
    assert abs(drawn[100, 125, 1] - 165) < 40 and drawn[100, 125, 2] > 200
    assert drawn[100, 100, 1] < 60 and drawn[100, 100, 2] > 200
    assert drawn[100, 200].max() < 40
    bad = runner.invoke(app, ["analyze", str(dets), "--protocol", "crowdhuman"])
    assert bad.exit_code == 2 and "needs --gt" in bad.output


@pytest.mark.slow
def test_model_path_restores_nms_and_replay_equals_normal_output(tmp_path):
    torch = pytest.importorskip("torch")
    from pedcrowd.data.config import build_dataset
    from pedcrowd.data.synth import SynthConfig, generate
    from pedcrowd.engine.checkpoint import load_for_inference, save_checkpoint
    from pedcrowd.engine.config import Config, config_to_dict
    from pedcrowd.engine.predict import predict
    from pedcrowd.model import build_model

    generate(tmp_path / "data", SynthConfig(train_images=0, val_images=3, height=128, width=256))
    cfg = Config()
    cfg.model.min_size, cfg.model.max_size = 128, 256
    cfg.model.box_score_thresh = 0.01
    cfg.data.root = str(tmp_path / "data")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    save_checkpoint(tmp_path / "run" / "best.pt", model=model.state_dict(), config=config_to_dict(cfg))
    out = tmp_path / "a.json"
    result = runner.invoke(app, ["analyze", str(tmp_path / "run"), "--device", "cpu", "--json", "--out", str(out),
                                 "--setup", "All", "--at", "score=0.0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["nms_thresh"] == cfg.model.box_nms_thresh and doc["max_dets"] == cfg.model.box_detections_per_img
    # A model whose box_nms_thresh is 1.0 suppresses nothing: no NMS-caused misses.
    cfg1 = Config()
    cfg1.model.min_size, cfg1.model.max_size = 128, 256
    cfg1.model.box_score_thresh, cfg1.model.box_nms_thresh = 0.01, 1.0
    cfg1.data.root = cfg.data.root
    save_checkpoint(tmp_path / "run1" / "best.pt", model=model.state_dict(), config=config_to_dict(cfg1))
    one = runner.invoke(app, ["analyze", str(tmp_path / "run1"), "--device", "cpu", "--json", "--setup", "All",
                              "--at", "score=0.0"])
    assert one.exit_code == 0, one.output
    (point,) = json.loads(one.stdout)["points"]
    assert point["misses"]["nms_other_person"] == 0 and point["misses"]["nms_false_positive"] == 0
    nms_05 = doc["points"][0]["misses"]
    assert nms_05["nms_other_person"] + nms_05["nms_false_positive"] > 0  # the same weights with NMS 0.5 do lose people
    assert json.loads(one.stdout)["nms_thresh"] == 1.0
    # The replayed NMS reproduces the model's own output.
    model, _ = load_for_inference(tmp_path / "run")
    dataset = build_dataset(cfg.data, "val", train=False)
    with torch.inference_mode():
        normal = predict(model, dataset, torch.device("cpu"))
        model.roi_heads.nms_thresh, model.roi_heads.detections_per_img = 1.0, 10_000
        pre = predict(model, dataset, torch.device("cpu"))
    replay = replay_nms(pre, cfg.model.box_nms_thresh, cfg.model.box_detections_per_img)
    for image_id, (boxes, scores) in normal.items():
        got_boxes, got_scores = replay.post[image_id]
        np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got_boxes, boxes, rtol=0, atol=1e-4)


def test_the_library_analyze_runs_the_model_and_writes_what_the_command_prints(tiny_checkpoint, tmp_path):
    """``pedcrowd.analyze.analyze`` from Python, no CLI: the model run, the analysis and the
    ``--out`` file are the command's."""
    from pedcrowd.analyze import analyze, report_to_json
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.reference.tiny import TINY_SYNTH

    ensure_synth(tiny_checkpoint.parent, TINY_SYNTH)  # the val split the checkpoint's config names
    started = []
    report = analyze(tiny_checkpoint, device="cpu", points=("score=0.0", "fppi=1"),
                     out_file=tmp_path / "lib.json", on_model_start=started.append)
    doc = report_to_json(report)
    assert started == [TINY_SYNTH.val_images] and doc["n_images"] == TINY_SYNTH.val_images
    assert report.out_file == tmp_path / "lib.json" and json.loads(report.out_file.read_text()) == doc
    assert doc["n_gt"] > 0 and doc["points"][0]["n_missed"] + doc["points"][0]["n_fp"] > 0
    result = runner.invoke(app, ["analyze", str(tiny_checkpoint), "--device", "cpu", "--at", "score=0.0",
                                 "--at", "fppi=1", "--json", "--out", str(tmp_path / "cli.json")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == doc
    assert (tmp_path / "cli.json").read_text() == (tmp_path / "lib.json").read_text()


def test_compare_analysis_side_by_side(tmp_path):
    base, nms1 = tmp_path / "base.json", tmp_path / "nms1.json"
    for path, thresh in ((base, "0.5"), (nms1, "1.0")):
        dets = tmp_path / "pre.json"
        dets.write_text(json.dumps([{"image_id": 1, "bbox": b, "score": s} for b, s in PRE]))
        gt = tmp_path / "gt.json"
        gt.write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.png", "width": 1200, "height": 300}],
            "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": 0}
                            for k, b in enumerate(PEOPLE)],
            "categories": [{"id": 1, "name": "person"}]}))
        r = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--nms-thresh", thresh, "--at", "score=0.5",
                                "--out", str(path), "--json"])
        assert r.exit_code == 0, r.output
    result = runner.invoke(app, ["compare", "--analysis", f"base={base}", f"nms1={nms1}"])
    assert result.exit_code == 0, result.output
    row = next(ln for ln in result.stdout.splitlines() if "NMS (another person)" in ln)
    assert [c.strip() for c in row.split("│")][2:4] == ["1 (33 %)", "0 (0 %)"]
    doc = json.loads(runner.invoke(app, ["compare", "--analysis", str(base), str(nms1), "--json"]).stdout)
    assert [r["name"] for r in doc["runs"]] == ["base", "nms1"]
    bad = runner.invoke(app, ["compare", "--analysis", str(tmp_path / "pre.json")])
    assert bad.exit_code == 2 and "not a pedcrowd analyze --out file" in bad.output


def test_caltech_rules():
    # Caltech: pedestrians inside [5 5 635 475], boxes resized to aspect 0.41 (these already are).
    a, b = [10, 10, 41, 100], [20.25, 10, 41, 100]  # IoU 30.75 / 51.25 = 0.6
    boxes = np.array([a, b], dtype=np.float64)
    rec = ImageRecord(id=1, file_name="set06_V000_I00029.jpg", boxes=boxes, vis_boxes=np.full((2, 4), np.nan),
                      categories=np.array(["pedestrian", "pedestrian"], dtype=object), ignore=np.zeros(2, bool),
                      heights=boxes[:, 3].copy(), vis_ratios=np.ones(2))
    pre = {1: (boxes.copy(), np.array([0.9, 0.8]))}
    rep = analyze_detections([rec], pre, protocol="caltech", nms_thresh=0.5, points=("score=0.5",))
    (p,) = rep.points
    assert p.n_missed == 1 and p.misses["nms_other_person"] == 1 and p.n_fp == 0
    assert rep.mr == 0.5  # one TP, no FP: every reference sees recall 1/2
    assert p.oracle["nms_other_person"]["mr"] == 0.0  # B's box back: both found


box = st.tuples(st.integers(0, 300), st.integers(0, 100), st.integers(20, 80), st.integers(50, 200))


@settings(max_examples=40, deadline=None)
@given(st.lists(box, min_size=1, max_size=6), st.lists(st.tuples(box, st.floats(0.01, 1.0)), max_size=12),
       st.sampled_from([0.3, 0.5, 0.7]))
def test_every_error_has_exactly_one_category(people, rows, nms):
    people = [list(map(float, p)) for p in people]
    pre = pre_dets([(list(map(float, b)), s) for b, s in rows]) if rows else {}
    for thresh in (nms, 1.0):
        (p,) = analyze_detections(records(people), pre, protocol="citypersons", nms_thresh=thresh, points=("score=0.2",)).points
        assert sum(p.misses.values()) == p.n_missed and sum(p.false_positives.values()) == p.n_fp
        assert p.flags["duplicate_below_nms"] == p.false_positives["duplicate"]  # greedy NMS over the same boxes
        if thresh == 1.0:
            assert p.misses["nms_other_person"] == p.misses["nms_false_positive"] == 0


def test_analyze_names_rows_for_users_and_its_ap_apart_from_coco(tmp_path):
    dets, gt = tmp_path / "pre.json", tmp_path / "gt.json"
    dets.write_text(json.dumps([{"image_id": 1, "bbox": b, "score": s} for b, s in PRE]))
    gt.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 1200, "height": 300}],
        "annotations": [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": b, "iscrowd": 0}
                        for k, b in enumerate(PEOPLE)],
        "categories": [{"id": 1, "name": "person"}]}))
    result = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--at", "score=0.5"],
                           terminal_width=80)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "AP50 (trapezoid, not COCO AP) 31.00 %" in text
    assert "removed by NMS (another person) │ 1 (33 %)" in text
    assert "nms_other_person" not in text and "never_proposed" not in text
