"""The bad-input catalogue of issue 15: each case is one line naming the file/option, exit 2.

Cases that used to give a wrong number with exit 0, a traceback, or a hang.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app
from pedcrowd.config_check import in_range
from pedcrowd.engine.config import Config, apply_overrides, load_config
from pedcrowd.errors import PedcrowdError

runner = CliRunner()

@pytest.fixture
def run_eval(small_gt, small_dets):
    """``pedcrowd eval`` on ``dets`` (a path, or a list / text for :func:`small_dets`) and
    ``gt`` (default :func:`small_gt`), with ``extra`` options."""

    def run(dets, gt=None, *extra):
        gt_path = small_gt() if gt is None else gt
        dets_path = dets if not isinstance(dets, list | str) else small_dets(dets)
        return runner.invoke(app, ["eval", "--gt", str(gt_path), "--dets", str(dets_path), *extra])

    return run


DET = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": 0.9}


# ----------------------------------------------------------------------------- detections


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image_id": 1 - 1e-9}, "detection 0: image id must be an integer, got 0.999999999"),
        ({"image_id": [1]}, "detection 0: image id must be an integer, got [1]"),
        ({"image_id": 10**30}, "detection 0: image id 1000000000000000000000000000000 is out of range"),
        ({"category_id": None}, "detection 0: category_id must be an integer, got None"),
        ({"category_id": "person"}, "detection 0: category_id must be an integer, got 'person'"),
        ({"bbox": [[10, 10], [41, 100]]}, "detection 0: 'bbox' must be [x, y, w, h], got [[10, 10], [41, 100]]"),
        ({"bbox": [[10], [10], [41], [100]]}, "detection 0: 'bbox' value must be a number, got [10]"),
        ({"score": "Infinity"}, "detection 0: score must be a number, got 'Infinity'"),
    ],
)
def test_malformed_detection_entries(tmp_path, change, message, run_eval, one_line_exit_2):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps([{**DET, **change}]))
    one_line_exit_2(run_eval(path), str(path), message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": Infinity}]',
         "detection 0: infinite score (inf; numbers must be finite)"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": 1e400}]',
         "detection 0: infinite score"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 1e400, 100], "score": 0.5}]',
         "detection 0: infinite 'bbox' value"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [10, NaN, 41, 100], "score": 0.5}]',
         "detection 0: NaN 'bbox' value"),
    ],
)
def test_infinite_and_nan_detection_numbers(tmp_path, text, message, run_eval, one_line_exit_2):
    path = tmp_path / "dets.json"
    path.write_text(text)
    one_line_exit_2(run_eval(path), str(path), message)


def test_integral_float_ids_are_read_exactly(tmp_path, run_eval):
    result = run_eval([{**DET, "image_id": 1.0}], None, "--json")
    assert result.exit_code == 0, result.output
    as_int = run_eval([DET], None, "--json")
    assert json.loads(result.stdout) == json.loads(as_int.stdout)


def test_empty_dets_folder(tmp_path, run_eval, one_line_exit_2):
    (tmp_path / "empty").mkdir()
    one_line_exit_2(run_eval(tmp_path / "empty"), f"{tmp_path / 'empty'}: no Caltech result files")


@pytest.mark.parametrize("flag", ["--gt", "--dets"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, flag, small_gt, small_dets, one_line_exit_2):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    gt = fifo if flag == "--gt" else small_gt()
    dets = fifo if flag == "--dets" else small_dets()
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets)])
    one_line_exit_2(result, f"{fifo}: is a FIFO, not a")


# ----------------------------------------------------------------------------- ground truth


@pytest.mark.parametrize(
    ("change", "message"),  # change: fields of the valid document, or of its one "annotation"
    [
        ({"images": [{"id": 1, "im_name": "a_1.png"}, {"id": 2, "im_name": "b_2.png"},
                     {"id": 1, "im_name": "a_1.png"}]}, "image id 1 is listed twice"),
        ({"images": [{"id": 1, "im_name": "a_1.png"}, {"id": 2, "im_name": "b_2.png"},
                     {"id": 3, "im_name": "a_1.png"}]}, "image 'a_1.png' is listed twice"),
        ({"images": [{"id": 1.5, "im_name": "a_1.png"}]}, "image 0: image id must be an integer, got 1.5"),
        ({"annotation": {"image_id": 1 - 1e-9}}, "annotation 1: image id must be an integer, got 0.999999999"),
        ({"annotation": {"category_id": None}}, "annotation 1: category_id must be an integer, got None"),
        ({"annotation": {"bbox": [[10, 10], [41, 100]]}}, "annotation 1: 'bbox' must be [x, y, w, h]"),
        ({"images": [], "annotations": []}, "the ground truth lists no images"),
    ],
)
def test_malformed_citypersons_gt(tmp_path, change, message, gt_doc, run_eval, one_line_exit_2):
    doc = {**gt_doc, **{k: v for k, v in change.items() if k != "annotation"}}
    doc["annotations"] = [{**a, **change.get("annotation", {})} for a in doc["annotations"]]
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(doc))
    one_line_exit_2(run_eval([DET], gt), str(gt), message)


def test_nan_box_in_gt_json_is_not_dropped(tmp_path, run_eval, gt_doc, one_line_exit_2):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc).replace('"bbox": [10, 10, 41, 100]', '"bbox": [10, NaN, 41, 100]'))
    one_line_exit_2(run_eval([DET], gt), str(gt), "annotation 1: NaN or infinite 'bbox' [10.0, nan, 41.0, 100.0]")


def test_nan_box_in_a_training_mat(tmp_path):
    """A float .mat (the released files are uint16, which has no NaN) with a NaN y."""
    import scipy.io

    from pedcrowd.formats.citypersons import read_citypersons_mat

    bbs = np.array([[1, 10, 10, 41, 100, 24000, 10, 10, 41, 100], [1, 50, np.nan, 41, 100, 24001, 0, 0, 0, 0]])
    struct = np.empty((1, 1), dtype=[("cityname", object), ("im_name", object), ("bbs", object)])
    struct[0, 0] = (np.array(["aachen"]), np.array(["aachen_1.png"]), bbs)
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = struct
    path = tmp_path / "anno_train.mat"
    scipy.io.savemat(path, {"anno_train_aligned": cells})
    with pytest.raises(PedcrowdError) as e:
        read_citypersons_mat(path)
    assert str(e.value).startswith(f"{path}: cell 1 (aachen_1.png): box 2 has a NaN or infinite value")


# ----------------------------------------------------------------------------- Caltech results


def caltech_gt(tmp_path):
    root = tmp_path / "ann" / "set06" / "V000"
    root.mkdir(parents=True)
    for frame in (29, 59):
        (root / f"I{frame:05d}.txt").write_text("% bbGt version=3\nperson 10 10 41 100 0 0 0 0 0 0 0\n")
    return tmp_path / "ann"


@pytest.mark.parametrize(("frame", "shown"), [("0", "0"), ("30.7", "30.7"), ("nan", "nan")])
def test_caltech_result_frames_must_be_1_based_integers(tmp_path, frame, shown, one_line_exit_2):
    res = tmp_path / "res" / "set06"
    res.mkdir(parents=True)
    (res / "V000.txt").write_text(f"30,10,10,41,100,0.9\n{frame},10,10,41,100,0.8\n")
    result = runner.invoke(app, ["eval", "--gt", str(caltech_gt(tmp_path)), "--dets", str(tmp_path / "res"),
                                 "--protocol", "caltech"])
    if frame == "nan":
        one_line_exit_2(result, str(res / "V000.txt"), "line 2: NaN or infinite value")
    else:
        one_line_exit_2(result, str(res / "V000.txt"), f"line 2: frame {shown} is not a 1-based frame number")


def test_an_empty_caltech_video_file_is_valid_input(tmp_path):
    res = tmp_path / "res" / "set06"
    res.mkdir(parents=True)
    (res / "V000.txt").write_text("")
    (res / "V001.txt").write_text("30,10,10,41,100,0.9\n")
    result = runner.invoke(app, ["eval", "--gt", str(caltech_gt(tmp_path)), "--dets", str(tmp_path / "res"),
                                 "--protocol", "caltech", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["Reasonable"]["mr"] == 1.0  # no detection on these frames


# ----------------------------------------------------------------------------- eval options


def test_nan_setup_bounds(tmp_path, run_eval, one_line_exit_2):
    one_line_exit_2(run_eval([DET], None, "--setup", "odd:nan-100:0-1"),
                    "--setup 'odd:nan-100:0-1': a bound is NaN")


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_plot_given_a_folder(tmp_path, command, run_eval, small_gt, small_dets, one_line_exit_2):
    (tmp_path / "plots").mkdir()
    if command == "eval":
        result = run_eval([DET], None, "--plot", str(tmp_path / "plots"))
    else:
        result = runner.invoke(app, ["compare", f"a={small_dets([DET])}", "--gt", str(small_gt()),
                                     "--plot", str(tmp_path / "plots")])
    one_line_exit_2(result, f"--plot {tmp_path / 'plots'}: is a folder")
    assert list((tmp_path / "plots").iterdir()) == [] and not list(tmp_path.glob("plots.*"))


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.box_nms_thresh=1.5", "'model.box_nms_thresh' must be in (0, 1], got 1.5"),
        ("model.rpn_nms_thresh=0", "'model.rpn_nms_thresh' must be in (0, 1], got 0.0"),
        ("train.epochs=0", "'train.epochs' must be >= 1, got 0"),
        ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
        ("optim.lr=-0.01", "'optim.lr' must be > 0, got -0.01"),
        ("optim.lr=.nan", "'optim.lr' must be > 0, got nan"),
        ("optim.momentum=-0.5", "'optim.momentum' must be in [0, 1), got -0.5"),
        ("optim.momentum=1", "'optim.momentum' must be in [0, 1), got 1.0"),
        ("model.anchor_sizes=[8,0,32]", "'model.anchor_sizes[1]' must be >= 1, got 0"),
        ("loss.nms.nms_thresh=1.5", "'loss.nms.nms_thresh' must be in (0, 1], got 1.5"),
        ("data.augment.flip_prob=2", "'data.augment.flip_prob' must be in [0, 1], got 2.0"),
    ],
)
def test_config_values_out_of_range(tmp_path, override, message, one_line_exit_2):
    result = runner.invoke(app, ["train", "--set", override, "--out", str(tmp_path / "r")])
    one_line_exit_2(result, f"--set {override}: {message}")


def test_config_file_values_are_checked_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(PedcrowdError, match=r"c.yaml: 'train.epochs' must be >= 1, got 0"):
        load_config(path)


def test_invalid_yaml_is_one_line(tmp_path, one_line_exit_2):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1, 2\n  lr: 3\n")
    result = runner.invoke(app, ["train", "-c", str(path)])
    one_line_exit_2(result, f"{path}: not valid YAML (", "at line")


def test_range_specs():
    assert in_range("(0, 1]", 1.0) and not in_range("(0, 1]", 0.0) and not in_range("(0, 1]", float("nan"))
    assert in_range("[0, 1)", 0.0) and not in_range("[0, 1)", 1.0)
    assert in_range(">= 1", 1) and not in_range("> 0", 0) and in_range("[0, inf]", float("inf"))
    defaults = Config()
    assert apply_overrides(defaults, []) == defaults  # every default satisfies its own range
    assert load_config(None) == defaults


# ----------------------------------------------------------------------------- infer options and degraded input


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--score-thr", "2", "--score-thr 2.0: must be in [0, 1]"),
    ("--score-thr", "-0.1", "--score-thr -0.1: must be in [0, 1]"),
    ("--nms-thr", "-1", "--nms-thr -1.0: must be in (0, 1]"),
    ("--nms-thr", "0", "--nms-thr 0.0: must be in (0, 1]"),
])
def test_infer_thresholds(tmp_path, option, value, message, one_line_exit_2):
    result = runner.invoke(app, ["infer", str(tmp_path), "--weights", str(tmp_path), option, value])
    one_line_exit_2(result, message)


def images_folder(tmp_path, good: int, bad: int, truncated: int = 0):
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(good + truncated):
        cv2.imwrite(str(folder / f"good{i}.jpg"), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    for i in range(truncated):  # cut off: OpenCV would decode the top half silently
        path = folder / f"good{good + i}.jpg"
        path.rename(folder / f"a_cut{i}.jpg")
        data = (folder / f"a_cut{i}.jpg").read_bytes()
        (folder / f"a_cut{i}.jpg").write_bytes(data[: len(data) // 2])
    for i in range(bad):
        (folder / f"bad{i}.png").write_bytes(b"not an image")
    return folder


def test_infer_on_only_unreadable_images_exits_2(tmp_path, tiny_checkpoint):
    folder = images_folder(tmp_path, good=0, bad=4)
    result = runner.invoke(app, ["infer", str(folder), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    err, skips = lines[-1], [line for line in lines if line.startswith("skipped")]
    assert err == (
        "pedcrowd: error: none of the 4 inputs could be read (bad0.png, bad1.png, bad2.png, ...); "
        "nothing was detected"
    )
    assert [line.split(":")[0] for line in skips] == [f"skipped bad{i}.png" for i in range(4)]


@pytest.mark.slow
def test_infer_finishes_the_readable_images_and_names_the_rest(tmp_path, tiny_checkpoint):
    folder = images_folder(tmp_path, good=2, bad=7, truncated=1)
    result = runner.invoke(app, ["infer", str(folder), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    named = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(named) == 5  # the first five by name, then the count
    assert named[0] == "skipped a_cut0.jpg: truncated file (no end marker)"
    flat = " ".join(result.stderr.split())  # rich wraps long lines
    assert "2 images, " in flat and "8 unreadable skipped (a_cut0.jpg, bad0.png, bad1.png, ...)" in flat
    assert (tmp_path / "o" / "detections.json").is_file()


@pytest.mark.slow
def test_a_cut_off_video_is_reported_and_its_good_frames_kept(tmp_path, tiny_checkpoint):
    import cv2

    folder = images_folder(tmp_path, good=1, bad=0)
    writer = cv2.VideoWriter(str(tmp_path / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 64))
    rng = np.random.default_rng(1)
    for _ in range(40):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = (tmp_path / "full.avi").read_bytes()
    (folder / "clip.avi").write_bytes(data[: len(data) // 2])  # the header still says 40 frames
    result = runner.invoke(app, ["infer", str(folder), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("skipped clip.avi#"))
    frames = int(line.split("video ends after ")[1].split(" ")[0])
    assert 5 < frames < 40 and line.endswith("of 40 frames (corrupt or cut off)")
    flat = " ".join(result.stderr.split())
    assert f"{1 + frames} images (1 videos)" in flat and "1 unreadable skipped" in flat
