"""``pedcrowd eval`` through CliRunner: table, --json, --out, --plot, acceptance commands, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app

runner = CliRunner()


def test_table(tmp_path, small_gt, small_dets):
    result = runner.invoke(app, ["eval", "--gt", str(small_gt()), "--dets", str(small_dets())])
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in ln.split("│") if c.strip()] for ln in result.stdout.splitlines()]
    rows = {r[0]: r[1:] for r in rows if r}
    # Reasonable: 2 GT, 2 images; TP (0.9) then FP (0.8) at fppi 0.5, the 0.95
    # detection is inside the ignore region. Recall 1/2 at every ref -> 50.00 %.
    assert rows["Reasonable"] == ["50.00", "2", "2"]
    assert rows["All"][1:] == ["3", "2"]


def test_json_out_and_plot(tmp_path, small_gt, small_dets):
    out, plot = tmp_path / "r.json", tmp_path / "c.png"
    args = ["eval", "--gt", str(small_gt()), "--dets", str(small_dets()), "--json",
            "--out", str(out), "--plot", str(plot), "--setup", "Reasonable", "--setup", "All", "--setup", "tall:90-200:0-2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["protocol"] == "citypersons" and doc["metric"] == "MR-2" and doc["ap"] is None
    assert list(doc["results"]) == ["Reasonable", "All", "tall"]
    assert doc["results"]["Reasonable"] == {"mr": 0.5, "n_gt": 2, "n_images": 2, "recall_at_fppi": [0.5] * 9}
    # All: 3 GT, the 40 px one missed: recall 1/3.
    assert doc["results"]["All"]["mr"] == pytest.approx(2 / 3, abs=1e-15)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_detections_and_no_gt_setup(tmp_path, small_gt, small_dets):
    args = ["eval", "--gt", str(small_gt()), "--dets", str(small_dets([])), "--json",
            "--setup", "Reasonable", "--setup", "huge:500-600:0-1"]
    doc = json.loads(runner.invoke(app, args).stdout)
    assert doc["results"]["Reasonable"]["mr"] == 1.0
    assert doc["results"]["huge"]["mr"] is None and doc["results"]["huge"]["n_gt"] == 0


def test_metric_ap(tmp_path, small_gt, small_dets):
    args = ["eval", "--gt", str(small_gt()), "--dets", str(small_dets()), "--json", "--metric", "all"]
    doc = json.loads(runner.invoke(app, args).stdout)
    assert set(doc["ap"]) == {"AP", "AP50", "AP75"}
    # 3 GT; TP first (precision 1 up to recall 1/3), then FPs: AP50 = 1/3 over 101 recall points -> 34/101.
    assert doc["ap"]["AP50"] == pytest.approx(34 / 101, abs=1e-9)


@pytest.mark.parametrize(
    "dets, message",
    [
        (None, "no such file"),
        ("{oops", "invalid JSON"),
        ([{"image_id": 1, "bbox": [0, 0, 1, 1]}], "no 'score' field"),
        ([{"image_id": 7, "bbox": [0, 0, 1, 1], "score": 1}], "unknown image id 7"),
        ('[{"image_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]', "NaN score"),
        ([{"image_id": 1, "bbox": [0, 0, 1, -2], "score": 1}], "negative box size"),
    ],
)
def test_bad_detections_exit_2_with_one_line(tmp_path, dets, message, small_gt, small_dets):
    path = tmp_path / "dets.json" if dets is None else small_dets(dets)
    result = runner.invoke(app, ["eval", "--gt", str(small_gt()), "--dets", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and message in lines[0]
    assert "Traceback" not in result.output


def test_bad_ground_truth_and_options(tmp_path, small_gt, small_dets):
    dets = str(small_dets())
    bad = tmp_path / "bad_gt.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "im_name": "a_1.png"}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    cases = [
        (["--gt", str(tmp_path / "none.json")], "none.json: no such file"),
        (["--gt", str(bad)], "no 'height' field"),
        (["--gt", str(small_gt()), "--setup", "Nope"], "--setup 'Nope'"),
        (["--gt", str(small_gt()), "--protocol", "voc"], "--protocol 'voc'"),
        (["--gt", str(small_gt()), "--metric", "F1"], "--metric 'F1'"),
        (["--gt", str(small_gt()), "--metric", "AP", "--plot", str(tmp_path / "p.png")],
         "use it with --metric MR-2 or all"),
        (["--gt", str(small_gt()), "--out", str(tmp_path / "bad_gt.json" / "o.json")],
         "o.json: cannot write"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", "--dets", dets, *args])
        assert result.exit_code == 2, args
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_caltech_cache_needs_images(shared_data):
    result = runner.invoke(app, ["eval", "--protocol", "caltech", "--gt", str(shared_data / "caltech/gt/ori"),
                                 "--dets", str(shared_data / "caltech/nmsped")])
    assert result.exit_code == 2 and "--images" in result.stderr


def test_acceptance_citypersons(shared_data):
    expected = json.loads((shared_data / "nmsped/EXPECTED.json").read_text())["mr"]
    for gt in ("val_gt.json", "anno_val.mat"):
        result = runner.invoke(app, ["eval", "--gt", str(shared_data / "citypersons" / gt),
                                     "--dets", str(shared_data / "nmsped/citypersons_val_dets.json"), "--json"])
        assert result.exit_code == 0, result.output
        got = json.loads(result.stdout)["results"]
        for name, value in expected.items():
            assert got[name]["mr"] == pytest.approx(value, abs=1e-9)


def test_acceptance_caltech(shared_data):
    expected = json.loads((shared_data / "caltech/EXPECTED.json").read_text())["mr"]["new-pedestron"]
    base = ["eval", "--protocol", "caltech", "--images", str(shared_data / "caltech/test_images.json"),
            "--dets", str(shared_data / "caltech/nmsped"), "--json"]
    result = runner.invoke(app, [*base, "--gt", str(shared_data / "caltech/gt/ori")])
    assert json.loads(result.stdout)["results"]["Reasonable"]["mr"] == pytest.approx(0.05917912822508259, abs=1e-9)
    result = runner.invoke(app, [*base, "--gt", str(shared_data / "caltech/gt/new-pedestron"), "--no-resize-dets"])
    got = json.loads(result.stdout)["results"]
    for name, value in expected["no_dt_resize"].items():
        assert got[name]["mr"] == pytest.approx(value, abs=1e-9)


def test_eval_does_not_import_torch(tmp_path, small_gt, small_dets):
    code = (
        "import sys; from pedcrowd.cli import app\n"
        f"app(['eval', '--gt', {str(small_gt())!r}, '--dets', {str(small_dets())!r}, '--json'],"
        " standalone_mode=False)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'cv2', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_coco_ap_twice_and_plot_into_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import pedcrowd.eval
    from pedcrowd.eval.plot import plot_mr_fppi
    from pedcrowd.formats.records import ImageRecord

    rec = ImageRecord(id=1, file_name="a.png", boxes=np.array([[0.0, 0, 10, 20]]), ignore=np.zeros(1, bool),
                      crowd=np.zeros(1, bool), categories=np.array(["pedestrian"], dtype=object))
    dets = {1: (np.array([[0.0, 0, 10, 20]]), np.array([0.9]))}
    assert pedcrowd.eval.coco_ap([rec], dets)["AP50"] == pytest.approx(1.0)
    assert pedcrowd.eval.coco_ap([rec], {})["AP"] == 0.0  # still the function after the submodule import

    fig, axes = plt.subplots(1, 2)
    curves = {"A": (np.array([0.1, 1.0]), np.array([0.5, 0.4]), 0.45), "B": (np.array([]), np.array([]), None)}
    ax = plot_mr_fppi(curves, title="panel", ax=axes[1])
    assert ax is axes[1] and ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["45.00% A", "n/a B"]
    plt.close(fig)


def test_caltech_text_annotations_end_to_end(tmp_path):
    # Two frames of set06/V000; frame I00029 has a 100 px person and a 'people'
    # group, I00059 a person of 40 px (not Reasonable) at the image border.
    gt = tmp_path / "annotations"
    (gt / "set06" / "V000").mkdir(parents=True)
    (gt / "set06" / "V000" / "I00029.txt").write_text(
        "% bbGt version=3\nperson 100 50 41 100 0 0 0 0 0 0 0\npeople 300 50 80 100 0 0 0 0 0 0 0\n")
    (gt / "set06" / "V000" / "I00059.txt").write_text("% bbGt version=3\nperson 2 50 16 40 0 0 0 0 0 0 0\n")
    res = tmp_path / "res" / "set06"
    res.mkdir(parents=True)
    # frame 30 = I00029: a TP and a detection inside the group (ignored); frame 60: an FP.
    (res / "V000.txt").write_text("30,100,50,41,100,0.9\n30,320,50,41,100,0.95\n60,500,50,41,100,0.5\n")
    result = runner.invoke(app, ["eval", "--protocol", "caltech", "--gt", str(gt), "--dets", str(tmp_path / "res"),
                                 "--json", "--setup", "Reasonable", "--setup", "All"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["results"]
    # Reasonable: 1 GT found before the FP (fppi 0 then 1/2): recall 1 at every ref -> MR 0.
    assert doc["Reasonable"] == {"mr": 0.0, "n_gt": 1, "n_images": 2, "recall_at_fppi": [1.0] * 9}
    # All: the 40 px person lies outside the x >= 5 bound: still 1 GT.
    assert doc["All"]["n_gt"] == 1
