"""``pedcrowd infer`` on folders, globs and videos with a tiny randomly initialised FasterRCNN.

The reference for every box is a bare forward of the same model on the same
images decoded by hand (cv2.imread, BGR->RGB, /255), so the tests check that
the loader, batching and output format change nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from typer.testing import CliRunner

import pedcrowd.infer as infer_mod
from pedcrowd.cli import app
from pedcrowd.infer import infer
from pedcrowd.media.sources import Source, collect_sources

runner = CliRunner()
H, W = 72, 96


@pytest.fixture()
def model(monkeypatch, tiny_fasterrcnn) -> FasterRCNN:
    """The tiny model (72 x 96 = H x W inputs), also returned by ``--weights`` whatever the path."""
    m = tiny_fasterrcnn
    monkeypatch.setattr(infer_mod, "load_model", lambda weights, device: m.to(device))
    return m


def random_image(rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    # A bright "pedestrian" bar gives the detector some structure.
    image[10:60, 30:45] = 230
    return image


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """root/{a,b}/imgN.png (+ a .jpg and a corrupt .png, + a .txt to be ignored)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i, sub in enumerate(["a", "a", "b"]):
        (root / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / sub / f"img{i}.png"), random_image(rng))
    cv2.imwrite(str(root / "b" / "img3.jpg"), random_image(rng))
    (root / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "notes.txt").write_text("not an image")
    return root


def reference(model: nn.Module, paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    """A bare forward on images decoded by hand, one at a time."""
    outs = []
    with torch.inference_mode():
        for p in paths:
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
            outs.append(model([x])[0])
    return outs


def by_name(dets: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in dets:
        out.setdefault(d["file_name"], []).append(d)
    return out


def assert_same_boxes(dets: list[dict], ref: dict[str, torch.Tensor]) -> None:
    xywh = np.array([d["bbox"] for d in dets]).reshape(-1, 4)
    boxes = ref["boxes"].double().numpy()
    assert len(dets) == len(boxes) > 0
    np.testing.assert_allclose(xywh[:, :2], boxes[:, :2], atol=1e-4)
    np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=1e-4)
    np.testing.assert_allclose([d["score"] for d in dets], ref["scores"].numpy(), atol=1e-5)


def test_collect_sources_names_and_order(folder: Path):
    sources = collect_sources([folder, str(folder / "a" / "img0.png")])
    # Folder names are relative to it, sorted; the repeated file appears once.
    assert [s.name for s in sources] == [
        "a/img0.png",
        "a/img1.png",
        "b/broken.png",
        "b/img2.png",
        "b/img3.jpg",
    ]
    assert [s.name for s in collect_sources([str(folder / "**" / "img*.png")])] == [
        "a/img0.png",
        "a/img1.png",
        "b/img2.png",
    ]


def test_collect_sources_errors(tmp_path: Path):
    from pedcrowd.errors import PedcrowdError

    with pytest.raises(PedcrowdError, match="nothere.png: no such file"):
        collect_sources([tmp_path / "nothere.png"])
    with pytest.raises(PedcrowdError, match="matches no image"):
        collect_sources([str(tmp_path / "*.png")])


def test_infer_folder_cli(folder: Path, model: FasterRCNN, tmp_path: Path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "infer",
            str(folder),
            "--weights",
            "run",
            "--out",
            str(out),
            "--batch-size",
            "3",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    # The corrupt file is reported by name and counted, the rest still run.
    assert "b/broken.png" in result.output
    assert "4 images" in result.output and "1 unreadable skipped" in result.output
    assert "images/s" in result.output
    dets = json.loads((out / "detections.json").read_text())
    names = ["a/img0.png", "a/img1.png", "b/img2.png", "b/img3.jpg"]
    groups = by_name(dets)
    assert sorted(groups) == names
    refs = reference(model, [folder / n for n in names])
    for i, (name, ref) in enumerate(zip(names, refs, strict=True)):
        assert_same_boxes(groups[name], ref)
        assert {d["image_id"] for d in groups[name]} == {i + 1}
        assert {d["category_id"] for d in groups[name]} == {1}


def test_infer_glob_and_thresholds(folder: Path, model: FasterRCNN):
    res = infer(
        [str(folder / "a" / "*.png")],
        model=model,
        score_thr=0.5,
        nms_thr=0.3,
        device="cpu",
        batch_size=2,
    )
    assert res.n_images == 2 and not res.skipped
    assert model.roi_heads.score_thresh == 0.5 and model.roi_heads.nms_thresh == 0.3
    scores = np.array([d["score"] for d in res.detections])
    assert (scores >= 0.5).all()
    # The reference forward uses the same (now changed) thresholds.
    refs = reference(model, [folder / "a" / "img0.png", folder / "a" / "img1.png"])
    groups = by_name(res.detections)
    for name, ref in zip(["img0.png", "img1.png"], refs, strict=True):
        if len(ref["boxes"]):
            assert_same_boxes(groups[name], ref)
        else:
            assert name not in groups


def write_video(path: Path, n: int, fourcc: str = "mp4v") -> list[np.ndarray]:
    """Write n frames; return them as decoded back (the codec is lossy)."""
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
    assert writer.isOpened(), f"no {fourcc} encoder here"
    for _ in range(n):
        writer.write(random_image(rng))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def test_infer_video_cli_with_vis(tmp_path: Path, model: FasterRCNN):
    video = tmp_path / "clip.mp4"
    frames = write_video(video, 5)
    assert len(frames) == 5
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "infer",
            str(video),
            "--weights",
            "run",
            "--out",
            str(out),
            "--vis",
            "--vis-score-thr",
            "0.0",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5 images (1 videos)" in result.output
    dets = json.loads((out / "detections.json").read_text())
    groups = by_name(dets)
    assert sorted(groups) == [f"clip.mp4#{i:06d}" for i in range(5)]
    for i in range(5):
        g = groups[f"clip.mp4#{i:06d}"]
        assert {(d["video"], d["frame"]) for d in g} == {("clip.mp4", i)}
    # Frame 3 gives what the model gives on decoded frame 3.
    rgb = cv2.cvtColor(frames[3], cv2.COLOR_BGR2RGB)
    with torch.inference_mode():
        ref = model([torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)])[0]
    assert_same_boxes(groups["clip.mp4#000003"], ref)
    # The annotated video has every frame, and boxes were drawn on it.
    cap = cv2.VideoCapture(str(out / "vis" / "clip_vis.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    ok, first = cap.read()
    assert ok and first.shape == (H, W, 3)


def test_infer_unopenable_video_is_skipped_like_an_unreadable_image(
    folder: Path, tmp_path: Path, model: FasterRCNN
):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"definitely not a video" * 20)
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["infer", str(folder), str(bad), "--weights", "run", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "skipped bad.avi: cannot open video" in result.output
    # the images were processed; the video is counted among the skipped inputs
    dets = json.loads((out / "detections.json").read_text())
    assert dets and not any(d["file_name"].startswith("bad.avi") for d in dets)
    assert "2 unreadable skipped (b/broken.png, bad.avi)" in " ".join(result.output.split())
    # only the video: nothing could be read, exit 2
    result = runner.invoke(app, ["infer", str(bad), "--weights", "run", "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2
    assert "none of the 1 inputs could be read (bad.avi)" in result.output


def test_vis_images_and_gt_overlay(folder: Path, model: FasterRCNN, tmp_path: Path):
    from pedcrowd.vis import GT_COLOR, draw_detections, score_colors

    image = cv2.imread(str(folder / "a" / "img0.png"))
    drawn = draw_detections(
        image,
        np.array([[5.0, 5, 25, 60], [50, 10, 70, 50]]),
        np.array([0.9, 0.1]),
        score_thr=0.3,
        gt_boxes=np.array([[60.0, 5, 90, 65]]),
        label_scores=False,
    )
    assert (image == cv2.imread(str(folder / "a" / "img0.png"))).all()  # input untouched
    # The 0.9 box is drawn in its colormap colour, the 0.1 box (below 0.3) not at all,
    # the GT box in green.
    assert tuple(drawn[30, 5]) == tuple(score_colors(np.array([0.9]), 0.3)[0])
    assert (drawn[30, 50] == image[30, 50]).all()
    assert tuple(drawn[30, 90]) == GT_COLOR
    # Higher scores map further along the ramp: distinct colours at both ends.
    lo, hi = score_colors(np.array([0.3, 1.0]), 0.3)
    assert tuple(lo) != tuple(hi)


# --- a pedcrowd checkpoint: infer -> eval equals the evaluation during training --------------


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic CityPersons-layout val set and a checkpoint of a tiny_fpn detector."""
    from pedcrowd.data.synth import SynthConfig, generate
    from pedcrowd.engine.checkpoint import save_checkpoint
    from pedcrowd.engine.config import Config, config_to_dict
    from pedcrowd.model import build_model

    root = tmp_path_factory.mktemp("synth")
    generate(root / "data", SynthConfig(train_images=0, val_images=6, height=128, width=256))
    cfg = Config()
    cfg.model.min_size, cfg.model.max_size = 128, 256
    cfg.model.box_score_thresh = 0.01
    cfg.data.root = str(root / "data")
    torch.manual_seed(0)
    # Untrained (a training step costs ~7 s here): what matters is that the same
    # weights give the same numbers through both paths.
    model = build_model(cfg.model)
    model.eval()
    run = root / "run"
    save_checkpoint(run / "best.pt", model=model.state_dict(), config=config_to_dict(cfg))
    return {"root": root / "data", "run": run, "cfg": cfg}


@pytest.mark.slow
def test_infer_then_eval_matches_training_evaluation(synth_run, tmp_path: Path):
    from pedcrowd.data.config import build_dataset
    from pedcrowd.engine.checkpoint import load_for_inference
    from pedcrowd.engine.train import evaluate_model

    data = synth_run["root"]
    gt = data / "annotations" / "val_gt.json"
    model, cfg = load_for_inference(synth_run["run"])
    dataset = build_dataset(cfg.data, "val", train=False)
    _, report = evaluate_model(model, dataset, torch.device("cpu"))
    assert report.results["All"].n_gt > 0

    out = tmp_path / "pred"
    result = runner.invoke(
        app,
        [
            "infer",
            str(data / "leftImg8bit" / "val"),
            "--weights",
            str(synth_run["run"]),
            "--out",
            str(out),
            "--gt",
            str(gt),
            "--device",
            "cpu",
            "--vis",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output
    ev = runner.invoke(
        app,
        [
            "eval",
            "--gt",
            str(gt),
            "--dets",
            str(out / "detections.json"),
            "--json",
            "--setup",
            "Reasonable",
            "--setup",
            "All",
        ],
    )
    assert ev.exit_code == 0, ev.output
    got = json.loads(ev.stdout)["results"]
    for setup in ("Reasonable", "All"):
        assert got[setup]["mr"] == report.results[setup].mr, setup
        assert got[setup]["recall_at_fppi"] == [
            float(x) for x in report.results[setup].recall_at_fppi
        ]
    assert len(list((out / "vis").rglob("*.png"))) == 6


# --- GT ids, device parsing, output file, help text ------------------------------------------


def test_gt_ids_empty_gt_images_and_made_up_ids_after_the_largest(
    folder: Path, model: FasterRCNN, tmp_path: Path
):
    # a/img0.png has no boxes (an ImageRecord of length 0, falsy) and shares its base
    # name with b/img0.png, so only its full name finds it; b/img2.png and b/img3.jpg
    # are not in the GT and get ids after its largest (9), not 1, 2, ... (which clash).
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [
            {"id": 7, "file_name": "a/img0.png"},
            {"id": 9, "file_name": "b/img0.png"},
            {"id": 1, "file_name": "a/img1.png"},
        ],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 10, 15, 50]}],
        "categories": [{"id": 1, "name": "person"}],
    }))
    res = infer([folder], model=model, gt=gt, device="cpu", batch_size=3)
    ids = {name: {d["image_id"] for d in g} for name, g in by_name(res.detections).items()}
    assert ids == {"a/img0.png": {7}, "a/img1.png": {1}, "b/img2.png": {10}, "b/img3.jpg": {11}}
    lookup = infer_mod.gt_image_ids(gt, "citypersons")
    rec = lookup.record("a/img0.png")
    assert rec is not None and rec.id == 7 and len(rec) == 0
    assert lookup.record("img0.png") is None  # ambiguous: no GT, no error
    # Without --gt the images are numbered 1..N as before.
    res = infer([folder], model=model, device="cpu")
    assert sorted({d["image_id"] for d in res.detections}) == [1, 2, 3, 4]


def test_resolve_device(monkeypatch):
    from pedcrowd.errors import PedcrowdError

    resolve = infer_mod.resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("cpu") == torch.device("cpu") and resolve("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(PedcrowdError, match=f"--device {name}.*no CUDA device"):
            resolve(name)
    with pytest.raises(PedcrowdError, match="expected auto, cpu or cuda"):
        resolve("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU is touched
    assert resolve("auto") == torch.device("cuda", 0) == resolve("cuda")
    assert resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(PedcrowdError, match="expected auto, cpu, cuda or cuda:N"):
        resolve("cuda:x")


def test_detections_json_written_atomically(folder: Path, model: FasterRCNN, tmp_path: Path):
    from pedcrowd.errors import PedcrowdError

    out = tmp_path / "o" / "detections.json"
    out.parent.mkdir()
    out.write_text("old")
    res = infer([folder / "a"], model=model, device="cpu", out_file=out)
    assert res.out_file == out
    assert json.loads(out.read_text()) == res.detections and len(res.detections) > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["detections.json"]  # no temp file left
    # An unwritable place is a PedcrowdError naming the file, not an OSError traceback.
    (tmp_path / "blocker").write_text("a file, not a folder")
    bad = tmp_path / "blocker" / "detections.json"
    with pytest.raises(PedcrowdError, match=f"{bad}: cannot write"):
        infer([folder / "a"], model=model, device="cpu", out_file=bad)


def test_decoding_is_the_training_datasets_own(folder: Path):
    from pedcrowd.data.datasets import read_image

    path = folder / "b" / "img3.jpg"
    from pedcrowd.media.decode import decode_image

    item = decode_image(Source(path, "img3.jpg", False), keep_image=False)
    expected = read_image(path)
    assert torch.equal(item.tensor, expected) and item.tensor.stride() == expected.stride()


def test_infer_help_names_the_checkpoint_used():
    # The options' own help strings, not the rendered help (which depends on the terminal).
    import typer.main

    infer_cmd = typer.main.get_command(app).get_command(None, "infer")
    text = " ".join(" ".join(p.help or "" for p in infer_cmd.params).split())
    assert "uses its best.pt, else last.pt, and the config stored in it" in text
    assert "config.yaml" not in text
    assert runner.invoke(app, ["infer", "--help"]).exit_code == 0
