"""The second hostile round (issue 23), one section per class of the catalogue:

(a) every write lands inside the named directory and never through a planted link;
reads stay under the given roots; (b) no silent wrong results; (c) no tracebacks;
(d) clear errors; (e) signals; (f) strict JSON. The config's ranges and the
property tests are tests/test_config_properties.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pedcrowd.cli import app, error_line
from pedcrowd.data.config import SynthConfig
from pedcrowd.engine.config import Config, apply_overrides
from pedcrowd.errors import PedcrowdError
from pedcrowd.reference.tiny import TINY_SYNTH, tiny_overrides

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def write_png(path: Path, seed: int = 0) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    return path


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


# ----------------------------------------------------------------------------- (a) where writes land


def test_glob_names_with_dotdot_never_climb_out_of_out(tmp_path, monkeypatch, tiny_checkpoint):
    from pedcrowd.media.sources import collect_sources

    root = tmp_path / "r"
    cwd = root / "c1" / "c2" / "c3"
    (cwd / "d").mkdir(parents=True)
    write_png(root / "z" / "p.png")
    monkeypatch.chdir(cwd)
    pattern = "*/../../../../z/*.png"  # d/.. = c3, then c2, c1, r: r/z/p.png
    assert [s.name for s in collect_sources([pattern])] == ["z/p.png"]
    before = files_under(tmp_path)
    result = runner.invoke(app, ["infer", pattern, "--weights", str(tiny_checkpoint), "--vis",
                                 "--out", "a/out", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    new = files_under(tmp_path) - before
    out = (cwd / "a" / "out").relative_to(tmp_path).as_posix()
    assert new and all(p == "r/c1/c2/c3/a" or p.startswith(out) for p in new), sorted(new)
    assert (cwd / "a" / "out" / "vis" / "z" / "p.png").is_file()


@pytest.mark.slow
def test_two_images_with_one_base_name_keep_apart(tmp_path, tiny_checkpoint):
    from pedcrowd.media.sources import collect_sources

    a, b = write_png(tmp_path / "a" / "x.png", 1), write_png(tmp_path / "b" / "x.png", 2)
    assert [s.name for s in collect_sources([a, b])] == ["a/x.png", "b/x.png"]
    # and a name a folder input already has is not taken twice
    write_png(tmp_path / "f" / "a" / "x.png", 3)
    names = [s.name for s in collect_sources([tmp_path / "f", a, b])]
    assert len(set(names)) == 3 and names[0] == "a/x.png", names
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(a), str(b), "--weights", str(tiny_checkpoint), "--vis",
                                 "--out", str(out), "--device", "cpu", "--score-thr", "0"])
    assert result.exit_code == 0, result.output
    assert {p.relative_to(out / "vis").as_posix() for p in (out / "vis").rglob("*.png")} == {"a/x.png", "b/x.png"}
    dets = json.loads((out / "detections.json").read_text())
    by_name = {d["file_name"]: d["image_id"] for d in dets}
    assert set(by_name) <= {"a/x.png", "b/x.png"} and len(set(by_name.values())) == len(by_name)


def test_a_planted_lock_link_is_refused_not_truncated(tmp_path, victim, one_line_exit_2):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    result = runner.invoke(app, ["train", "--out", str(run)])
    one_line_exit_2(result, f"{run / '.lock'}: is a symbolic link; pedcrowd does not write through a link")
    assert victim.read_text() == "precious\n"


def test_atomic_writes_never_follow_a_planted_link(tmp_path, victim):
    import torch

    from pedcrowd.engine.checkpoint import save_checkpoint
    from pedcrowd.fileio import write_text_atomic

    out = tmp_path / "out"
    out.mkdir()
    # the old predictable temporary names, and the target itself, as links to the victim
    for name in (".r.json.tmp", f".last.pt.tmp-{os.getpid()}", ".best.pt.tmp"):
        (out / name).symlink_to(victim)
    (out / "r.json").symlink_to(victim)
    write_text_atomic(out / "r.json", "{}")
    save_checkpoint(out / "last.pt", model={"w": torch.zeros(2)})
    assert victim.read_text() == "precious\n"
    assert not (out / "r.json").is_symlink() and (out / "r.json").read_text() == "{}"
    assert torch.load(out / "last.pt", weights_only=True)["model"]["w"].tolist() == [0.0, 0.0]
    # the temporary files are private to the write: none is left, the links are untouched
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == ["last.pt", "r.json"]
    assert (out / "r.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_metrics_log_link_is_refused_on_resume_and_append(tmp_path, victim):
    from pedcrowd.engine.metrics import MetricsLog
    from pedcrowd.engine.rundir import truncate_metrics

    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(PedcrowdError, match="metrics.jsonl: is a symbolic link"):
        truncate_metrics(tmp_path, 3)
    with pytest.raises(PedcrowdError, match="metrics.jsonl: is a symbolic link"):
        MetricsLog(tmp_path).write({"kind": "train", "iter": 1})
    assert victim.read_text() == "precious\n"


def test_vis_writer_refuses_a_link_or_a_name_outside(tmp_path, victim):
    from pedcrowd.vis import VisWriter

    vis = VisWriter(tmp_path / "vis", 0.3)
    (tmp_path / "vis").mkdir()
    (tmp_path / "vis" / "x.png").symlink_to(victim)
    image, empty = np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4))
    with pytest.raises(PedcrowdError, match="outside .* or is a symbolic link"):
        vis.write(image, "x.png", empty, np.zeros(0))
    with pytest.raises(PedcrowdError, match="outside"):
        vis.write(image, "../escaped.png", empty, np.zeros(0))
    assert victim.read_text() == "precious\n" and not (tmp_path / "escaped.png").exists()


def odgt(tmp_path, lines, name="gt.odgt") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


PERSON = {"tag": "person", "fbox": [10, 10, 30, 80], "vbox": [10, 10, 30, 80], "extra": {}}


@pytest.mark.parametrize("image_id", ["../secret/x", "/etc/passwd", "a/b", ".."])
def test_a_crowdhuman_id_is_a_file_name_not_a_path(tmp_path, image_id):
    from pedcrowd.formats.crowdhuman import read_odgt

    path = odgt(tmp_path, [{"ID": image_id, "gtboxes": [PERSON]}])
    with pytest.raises(PedcrowdError) as e:
        read_odgt(path)
    assert str(e.value) == f"{path}:1: 'ID' must be a file name, not a path, got {image_id!r}"


def test_a_dataset_never_reads_outside_its_image_folder(tmp_path):
    from pedcrowd.data.datasets import DetectionDataset
    from pedcrowd.formats.records import ImageRecord

    secret = write_png(tmp_path / "secret" / "x.png")
    record = ImageRecord(id=1, file_name="../secret/x.png")
    dataset = DetectionDataset([record], tmp_path / "images")
    with pytest.raises(PedcrowdError, match=r"image '../secret/x.png' lies outside the image folder"):
        dataset.image_path(0)
    assert secret.is_file()


# ----------------------------------------------------------------------------- (b) silent wrong results


def test_an_annotation_listed_twice_in_an_eval_gt_is_refused(tmp_path, gt_doc, one_line_exit_2):
    doc = gt_doc
    doc["annotations"] = doc["annotations"] * 2  # every annotation twice: MR^-2 would be ~50 %
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(doc))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": 0.9}]))
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets)])
    one_line_exit_2(result, f"{gt}: annotation id 1 is listed twice: its person would be counted twice")


def test_the_same_box_under_another_id_is_warned(tmp_path, caplog, gt_doc):
    doc = gt_doc
    doc["annotations"].append({**doc["annotations"][0], "id": 7})  # renumbered copy (or two synthetic people)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(doc))
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets)])
    assert result.exit_code == 0
    assert f"{gt}: annotations 1 and 7 of image 1 are the same box [10.0, 10.0, 41.0, 100.0]" in caplog.text


def test_two_people_at_one_place_but_one_ignored_are_not_duplicates(tmp_path, gt_doc):
    from pedcrowd.formats.citypersons import read_citypersons_json

    doc = gt_doc
    doc["annotations"].append({**doc["annotations"][0], "id": 7, "ignore": 1})
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    assert len(read_citypersons_json(tmp_path / "gt.json")[0]) == 2


@pytest.mark.parametrize(("box", "message"), [
    ({"fbox": [10, 10, -30, 80]}, "fbox 1 has a negative size [10.0, 10.0, -30.0, 80.0]"),
    ({"fbox": [10, 10, 1e12, 80]}, "fbox 1 has a value beyond 100000 px"),
    ({"vbox": [10, 10, 30, -80]}, "vbox 1 has a negative size"),
])
def test_odgt_boxes_that_cannot_be_right(tmp_path, box, message):
    from pedcrowd.formats.crowdhuman import read_odgt

    path = odgt(tmp_path, [{"ID": "p1", "gtboxes": [{**PERSON, **box}]}])
    with pytest.raises(PedcrowdError) as e:
        read_odgt(path)
    assert str(e.value) == f"{path}:1: image 'p1': {message}" or str(e.value).startswith(f"{path}:1: image 'p1': {message}")


def test_an_odgt_line_without_gtboxes_and_an_empty_odgt(tmp_path, one_line_exit_2):
    from pedcrowd.formats.crowdhuman import read_odgt

    path = odgt(tmp_path, [{"ID": "p1", "gtboxes": [PERSON]}, {"ID": "p2"}])
    with pytest.raises(PedcrowdError, match=r"gt.odgt:2: image 'p2' has no 'gtboxes' field"):
        read_odgt(path)
    empty = tmp_path / "empty.odgt"
    empty.write_text("\n")
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    result = runner.invoke(app, ["eval", "--gt", str(empty), "--dets", str(dets)])
    one_line_exit_2(result, f"{empty}: the CrowdHuman file lists no images")


@pytest.mark.parametrize("width", ["-640", "0", "NaN", "640.5", '"wide"'])
def test_images_file_sizes_are_checked_and_name_that_file(tmp_path, width, one_line_exit_2):
    gt = odgt(tmp_path, [{"ID": "p1", "gtboxes": [PERSON]}])
    images = tmp_path / "images.json"
    images.write_text('{"images": [{"id": 1, "file_name": "p1.jpg", "width": ' + width + ', "height": 480}]}')
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"file_name": "p1.jpg", "category_id": 1, "bbox": [10, 10, 30, 80], "score": 0.9}]))
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets), "--images", str(images)])
    shown = {"NaN": "nan", '"wide"': "'wide'"}.get(width, width)
    one_line_exit_2(result, f"{images}: image 1: 'width' must be a positive integer number of pixels, got {shown}")


@pytest.mark.parametrize("point", ["fppi=nan", "fppi=inf", "fppi=-1", "score=nan"])
def test_analyze_operating_points_must_be_finite(tmp_path, point, gt_doc, one_line_exit_2):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    dets = tmp_path / "pre.json"
    dets.write_text("[]")
    result = runner.invoke(app, ["analyze", str(dets), "--gt", str(gt), "--at", point])
    one_line_exit_2(result, f"--at '{point}': ")


@pytest.mark.slow
def test_a_run_that_never_took_a_finite_step_fails(tmp_path, monkeypatch):
    """Every step's loss non-finite, fewer of them than the abort limit: not exit 0 with an untrained best.pt."""
    import pedcrowd.engine.train as train_module
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine.train import fit

    real_build = train_module.build_model

    def nan_in_training(cfg, **kwargs):  # the detector's training losses are all NaN
        model = real_build(cfg, **kwargs)
        forward = model.forward

        def nan_forward(images, targets=None):
            out = forward(images, targets)
            return {k: v * math.nan for k, v in out.items()} if model.training else out

        model.forward = nan_forward
        return model

    monkeypatch.setattr(train_module, "build_model", nan_in_training)
    ensure_synth(tmp_path / "synth", TINY_SYNTH)
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp_path / "synth"), "train.epochs=2",
                                     "train.eval_every=1", "train.max_nonfinite_steps=50"])
    with pytest.raises(PedcrowdError) as e:
        fit(cfg, tmp_path / "run")
    assert "training ended without a single optimisation step" in str(e.value)
    # the first epoch's checkpoint (untrained, evaluated) is there; the run still fails
    assert (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_a_run_whose_weights_became_infinite_fails_before_writing_them(tmp_path, monkeypatch):
    import torch

    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine import train as train_module
    from pedcrowd.engine.train import check_trained, fit

    real_build = train_module.build_optimizer

    def overflowing(model, cfg):  # the optimiser's second step overflows one weight to inf
        optimizer = real_build(model, cfg)
        steps = []

        def after_step(opt, args, kwargs):
            steps.append(1)
            if len(steps) == 2:
                with torch.no_grad():
                    next(iter(model.parameters())).view(-1)[0] = math.inf

        optimizer.register_step_post_hook(after_step)
        return optimizer

    monkeypatch.setattr(train_module, "build_optimizer", overflowing)
    ensure_synth(tmp_path / "synth", TINY_SYNTH)
    # the later steps' losses are non-finite but fewer than the abort limit: only the
    # end-of-epoch check can catch it
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp_path / "synth"), "train.epochs=1",
                                     "train.eval_every=0", "train.max_nonfinite_steps=50"])
    with pytest.raises(PedcrowdError) as e:
        fit(cfg, tmp_path / "run")
    assert "after epoch 1 the weights hold NaN or infinite values" in str(e.value)
    assert "left as it was" in str(e.value)
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "best.pt").exists()
    # and the all-skipped rule on its own
    ok = torch.nn.Linear(2, 2)
    with pytest.raises(PedcrowdError, match="without a single optimisation step"):
        check_trained(ok, [{"finite_steps": 0}, {"finite_steps": 0}], last=True, epoch=2)
    check_trained(ok, [{"finite_steps": 0}, {"finite_steps": 3}], last=True, epoch=2)
    check_trained(ok, [{"finite_steps": 0}], last=False, epoch=1)  # an epoch more may still train


TINY_SET = SynthConfig(train_images=3, val_images=2, height=64, width=96, seed=1)


def test_synth_marker_only_after_every_file_and_a_failed_set_leaves_the_old_one(tmp_path, monkeypatch):
    import cv2

    from pedcrowd.data import synth

    out = tmp_path / "s"
    synth.generate(out, TINY_SET)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = [0]
    real = cv2.imwrite

    def full_disk(path, image, params=None):  # the third image does not fit
        calls[0] += 1
        return False if calls[0] == 3 else real(path, image, params)

    monkeypatch.setattr(cv2, "imwrite", full_disk)
    with pytest.raises(PedcrowdError, match=r"cannot write the image \(disk full or not writable\?\)"):
        synth.generate(out, dataclasses.replace(TINY_SET, seed=2))
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the complete old set, its synth.json included; no temporary folder
    assert not [p for p in out.iterdir() if p.name.startswith(".generating")]


def test_a_set_missing_files_is_detected_and_regenerated(tmp_path):
    from pedcrowd.data.synth import ensure_synth

    out = tmp_path / "s"
    assert not ensure_synth(out, TINY_SET).reused
    assert ensure_synth(out, TINY_SET).reused
    next((out / "leftImg8bit" / "train").rglob("*.png")).unlink()  # a partial set
    again = ensure_synth(out, TINY_SET)
    assert not again.reused and len(list((out / "leftImg8bit" / "train").rglob("*.png"))) == 3


def _hold_lock_in_another_process(path: Path, mode: str) -> subprocess.Popen:
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
        f"fcntl.flock(fd, fcntl.LOCK_{mode})\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_set_another_process_trains_on_is_never_regenerated(tmp_path):
    from pedcrowd.data.synth import LOCK_NAME, ensure_synth, generate

    out = tmp_path / "s"
    generate(out, TINY_SET)
    other = _hold_lock_in_another_process(out / LOCK_NAME, "SH")  # a training reading it
    try:
        assert ensure_synth(out, TINY_SET).reused  # the same set: shared, fine
        with pytest.raises(PedcrowdError, match="another process is using this synthetic set"):
            ensure_synth(out, dataclasses.replace(TINY_SET, seed=9))
    finally:
        other.kill()
        other.wait()
    assert json.loads((out / "synth.json").read_text())["params"]["seed"] == 1


def test_infer_takes_the_out_lock_like_train(tmp_path, tiny_checkpoint, one_line_exit_2):
    from pedcrowd.engine.rundir import RunLock

    image = write_png(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    other = _hold_lock_in_another_process(out / ".lock", "EX")  # another infer or train
    try:
        result = runner.invoke(app, ["infer", str(image), "--weights", str(tiny_checkpoint), "--out", str(out)])
        one_line_exit_2(result, f"{out}: another pedcrowd process", "is writing into this folder")
    finally:
        other.kill()
        other.wait()
    assert not (out / "detections.json").exists()
    assert RunLock(out).acquire()  # released by the dead process


def test_an_infer_that_fails_early_leaves_no_out_folder(tmp_path, tiny_checkpoint, one_line_exit_2):
    image = write_png(tmp_path / "x.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(image), "--weights", str(tiny_checkpoint), "--out", str(out),
                                 "--score-thr", "2"])
    one_line_exit_2(result, "--score-thr 2.0: must be in [0, 1]")
    assert not out.exists()


def test_detections_all_of_another_category_are_warned(tmp_path, caplog, gt_doc):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 2, "bbox": [10, 10, 41, 100], "score": 0.9}]))
    with caplog.at_level("WARNING"):
        result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets)])
    assert result.exit_code == 0
    assert "every detection has category_id 2, none the pedestrian's 1" in caplog.text


# ----------------------------------------------------------------------------- (c) no tracebacks


@pytest.mark.parametrize(("change", "message"), [
    ({"points": [{"name": "fppi=0.1"}]}, "points[0].n_missed must be a count, got None"),
    ({"mr": "low"}, "'mr' must be a rate, got low"),
    ({"points": [7]}, "points[0] is not an operating point with a 'name'"),
])
def test_a_malformed_analysis_file_is_one_line(tmp_path, change, message, one_line_exit_2):
    good = {"mr": 0.1, "points": [{"name": "fppi=0.1", "score": 0.5, "n_missed": 1, "n_fp": 2,
                                   "misses": dict.fromkeys(("nms_other_person", "nms_false_positive",
                                                            "low_score", "never_proposed", "other"), 0),
                                   "false_positives": dict.fromkeys(("duplicate", "localisation", "background"), 0),
                                   "oracle": {f: {"mr": 0.1} for f in ("nms_all", "duplicate", "low_score",
                                                                       "never_proposed")}}]}
    ok, bad = tmp_path / "ok.json", tmp_path / "bad.json"
    ok.write_text(json.dumps(good))
    bad.write_text(json.dumps({**good, **change}))
    assert runner.invoke(app, ["compare", str(ok), str(ok), "--analysis"]).exit_code == 0
    one_line_exit_2(runner.invoke(app, ["compare", str(ok), str(bad), "--analysis"]), f"{bad}: {message}")


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import torch

    from pedcrowd.engine import checkpoint

    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint(path, model={"w": torch.ones(1)})
    good = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(PedcrowdError) as e:
        checkpoint.save_checkpoint(path, keep_previous_as="prev.pt", model={"w": torch.zeros(1)})
    assert str(e.value) == (
        f"{path}: cannot write the checkpoint ([enforce fail at inline_container.cc:603] . unexpected pos "
        "64 vs 0); the previous checkpoint there is left as it was"
    )
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_oserror_anywhere_is_one_line_naming_path_and_cause(tmp_path, monkeypatch, gt_doc, one_line_exit_2):
    import errno

    from pedcrowd.commands import eval as eval_command

    def no_space(text, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r.json"))

    monkeypatch.setattr(eval_command, "_write", no_space)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    dets = tmp_path / "dets.json"  # one detection: no "images without detections" warning
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 41, 100], "score": 0.9}]))
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets), "--out", str(tmp_path / "r.json")])
    err = one_line_exit_2(result)
    assert err == f"pedcrowd: error: {tmp_path / 'r.json'}: No space left on device"


def test_out_naming_a_file_and_convert_onto_a_folder(tmp_path, tiny_checkpoint, gt_doc, one_line_exit_2):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    one_line_exit_2(runner.invoke(app, ["train", "--out", str(a_file)]), f"{a_file}: names a file")
    image = write_png(tmp_path / "x.png")
    one_line_exit_2(runner.invoke(app, ["infer", str(image), "--weights", str(tiny_checkpoint), "--out", str(a_file)]),
                    f"{a_file}: --out names a file")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    one_line_exit_2(runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(gt.with_name("d.json")),
                                        "--out", str(a_file / "r.json")]))
    folder = tmp_path / "folder"
    folder.mkdir()
    one_line_exit_2(runner.invoke(app, ["convert-checkpoint", str(tiny_checkpoint), str(folder), "--trust"]),
                    f"{folder}: is a folder")


def test_a_100k_deep_json_line_is_one_line(tmp_path, gt_doc, one_line_exit_2):
    deep = "[" * 100_000 + "]" * 100_000
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    dets = tmp_path / "dets.json"
    dets.write_text(deep)
    one_line_exit_2(runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets)]),
                    f"{dets}: invalid JSON (nested too deeply)")
    lines = tmp_path / "gt.odgt"
    lines.write_text(deep + "\n")
    one_line_exit_2(runner.invoke(app, ["eval", "--gt", str(lines), "--dets", str(dets)]),
                    f"{lines}:1: not a JSON object (nested too deeply)")


def test_error_lines_are_cut_to_a_readable_length():
    line = error_line(PedcrowdError("x: " + "y" * 10_000 + "\nsecond line"))
    assert len(line) < 540 and "\n" not in line and line.endswith("(10015 characters)")
    assert error_line(RecursionError()) == "an input is nested too deeply to read (recursion limit reached)"


# ----------------------------------------------------------------------------- (d) clear errors


def test_analyze_names_a_crowddet_dump_instead_of_calling_it_a_checkpoint(tmp_path, one_line_exit_2):
    dump = tmp_path / "dump.odgt"
    dump.write_text(json.dumps({"ID": "p1", "dtboxes": []}) + "\n")
    gt = odgt(tmp_path, [{"ID": "p1", "gtboxes": [PERSON]}])
    result = runner.invoke(app, ["analyze", str(dump), "--gt", str(gt)])
    one_line_exit_2(result, f"{dump}: a JSON-lines file (a CrowdDet dump or .odgt), not pre-NMS detections")


def test_odgt_gt_is_evaluated_with_its_own_protocol_unless_asked_otherwise(tmp_path):
    gt = odgt(tmp_path, [{"ID": "p1", "gtboxes": [PERSON], "width": 200, "height": 100}])
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"file_name": "p1.jpg", "category_id": 1, "bbox": [10, 10, 30, 80], "score": 0.9}]))
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["protocol"] == "crowdhuman"
    asked = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets), "--json", "--protocol", "citypersons"])
    assert asked.exit_code == 0 and "with the citypersons protocol as asked" in " ".join(asked.stderr.split())


# ----------------------------------------------------------------------------- (e) signals


@pytest.mark.slow
def test_a_signal_during_the_final_evaluation_stops_it_and_the_resume_evaluates(tmp_path, monkeypatch, usual_handlers):
    from pedcrowd.data.synth import ensure_synth
    from pedcrowd.engine import predict as predict_module
    from pedcrowd.engine import train as train_module
    from pedcrowd.engine.checkpoint import load_checkpoint
    from pedcrowd.engine.signals import Interrupted

    ensure_synth(tmp_path / "synth", TINY_SYNTH)
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp_path / "synth"), "train.epochs=1",
                                     "train.eval_every=1"])
    real = predict_module.run_detector
    batches = []

    def sigterm_at_first_batch(*args, **kwargs):
        for batch in real(*args, **kwargs):
            if not batches:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
            batches.append(batch)
            yield batch

    monkeypatch.setattr(predict_module, "run_detector", sigterm_at_first_batch)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        train_module.fit(cfg, run)
    assert e.value.exit_code == 143 and len(batches) == 1  # the evaluation stopped at once
    assert f"continue with: pedcrowd train --out {run} --resume" in str(e.value)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["epoch_state"]["steps"] == 2  # both batches of the epoch done
    assert not (run / "val_eval.json").exists()
    monkeypatch.setattr(predict_module, "run_detector", real)
    _, summary = train_module.fit(cfg, run, resume=True)
    assert summary["iterations"] == 2 and summary["final_mr"] is not None  # evaluated on resume
    assert (run / "val_eval.json").is_file()


def test_a_signal_during_synth_stops_the_generation_within_an_image(tmp_path, monkeypatch, usual_handlers):
    from pedcrowd.data import synth
    from pedcrowd.engine.signals import Interrupted
    from pedcrowd.engine.train import fit

    real = synth._write_image
    drawn = []

    def sigterm_at_first_image(*args):
        if not drawn:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        drawn.append(args[3])
        return real(*args)

    monkeypatch.setattr(synth, "_write_image", sigterm_at_first_image)
    cfg = apply_overrides(Config(), [*tiny_overrides(tmp_path / "synth"), "synth.train_images=40"])
    with pytest.raises(Interrupted) as e:
        fit(cfg, tmp_path / "run")
    assert e.value.exit_code == 143 and len(drawn) == 1
    assert "stopped before its first step, no checkpoint written" in str(e.value)
    assert not (tmp_path / "synth" / "synth.json").exists()
    assert not list((tmp_path / "synth").glob(".generating-*"))


# ----------------------------------------------------------------------------- (f) strict JSON


def test_eval_json_is_strict(tmp_path, monkeypatch, gt_doc):
    """Whatever number comes out undefined (a setup without GT, a degenerate curve), the
    --json document spells it null: strict parsers reject the bare NaN token."""
    import pedcrowd.eval as eval_package

    real = eval_package.report_to_json

    def with_undefined_numbers(*args, **kwargs):
        doc = real(*args, **kwargs)
        first = next(iter(doc["results"].values()))
        first["mr"], first["recall_at_fppi"][0] = math.nan, math.inf
        return doc

    monkeypatch.setattr(eval_package, "report_to_json", with_undefined_numbers)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(gt_doc))
    dets = tmp_path / "dets.json"
    dets.write_text("[]")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["eval", "--gt", str(gt), "--dets", str(dets), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output

    def refuse(token):
        raise AssertionError(f"bare {token} in --json output")

    for text in (result.stdout, out.read_text()):
        doc = json.loads(text, parse_constant=refuse)
        first = next(iter(doc["results"].values()))
        assert first["mr"] is None and first["recall_at_fppi"][0] is None
