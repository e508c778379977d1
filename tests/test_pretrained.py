"""Pretrained weights: downloads through torchvision's loader from a loopback HTTP server,
and torchvision's COCO detectors mapped onto pedcrowd's (files of torchvision's exact
architecture with random weights: the real COCO weights cannot be fetched here)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models._api import Weights, WeightsEnum

from pedcrowd.errors import PedcrowdError
from pedcrowd.model import build_model
from pedcrowd.model.config import ModelConfig
from pedcrowd.model.pretrained import fetch_state_dict


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        CountingHandler.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A loopback HTTP server over tmp_path/served; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    CountingHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("PEDCROWD_OFFLINE", raising=False)
    return home


def weights_entry(url: str) -> WeightsEnum:
    return WeightsEnum("Served", [("V1", Weights(url=url, transforms=None, meta={}))]).V1


def served_file(folder: Path, stem: str, state: dict, corrupt: bool = False) -> str:
    """Save ``state`` in ``folder`` as STEM-<first 8 of its sha256>.pth (torchvision's naming);
    ``corrupt``: then change its bytes, so the name's hash no longer fits."""
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(data[:-10] + b"0123456789" if corrupt else data)
    return name


SMALL_STATE = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1.5, -2.0])}


def test_good_file_is_downloaded_then_read_from_the_cache(server, torch_home):
    folder, base = server
    name = served_file(folder, "tiny", SMALL_STATE)
    entry = weights_entry(f"{base}/{name}")
    state = fetch_state_dict(entry, "model.weights: imagenet")
    assert torch.equal(state["w"], SMALL_STATE["w"]) and torch.equal(state["b"], SMALL_STATE["b"])
    cached = torch_home / "hub" / "checkpoints" / name
    assert cached.read_bytes() == (folder / name).read_bytes()
    assert CountingHandler.requests == [f"/{name}"]
    # the cached file needs no network: the server is gone for this URL's file
    (folder / name).unlink()
    again = fetch_state_dict(entry, "model.weights: imagenet")
    assert torch.equal(again["w"], SMALL_STATE["w"]) and CountingHandler.requests == [f"/{name}"]


def test_corrupt_file_is_refused_and_not_cached(server, torch_home):
    folder, base = server
    name = served_file(folder, "tiny", SMALL_STATE, corrupt=True)
    with pytest.raises(PedcrowdError, match=r"failed torchvision's sha256 check .*it was not kept in"):
        fetch_state_dict(weights_entry(f"{base}/{name}"), "model.weights: imagenet")
    checkpoints = torch_home / "hub" / "checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []


def test_offline_names_url_and_cache_path(server, torch_home, monkeypatch):
    folder, base = server
    name = served_file(folder, "tiny", SMALL_STATE)
    url = f"{base}/{name}"
    path = torch_home / "hub" / "checkpoints" / name
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")
    with pytest.raises(PedcrowdError) as err:
        fetch_state_dict(weights_entry(url), "model.weights: imagenet")
    assert f"download {url} and put it at {path}" in str(err.value) and "PEDCROWD_OFFLINE" in str(err.value)
    assert CountingHandler.requests == [] and not path.exists()
    # no switch, but no network (nothing listens on the port): the same advice
    monkeypatch.delenv("PEDCROWD_OFFLINE")
    dead = f"http://127.0.0.1:9/{name}"
    with pytest.raises(PedcrowdError) as err:
        fetch_state_dict(weights_entry(dead), "model.weights: imagenet")
    assert f"cannot download {dead}" in str(err.value) and f"put it at {path}" in str(err.value)
    assert not path.exists()


def test_imagenet_start_downloads_through_torchvision(server, torch_home, monkeypatch):
    """``model.weights: imagenet`` end to end: the body's tensors are the served file's."""
    from torchvision.models import resnet18

    from pedcrowd.model import backbones

    folder, base = server
    torch.manual_seed(5)
    body = resnet18()
    name = served_file(folder, "resnet18", body.state_dict())
    monkeypatch.setattr(backbones, "_torchvision_weights", lambda name_: weights_entry(f"{base}/{name}"))
    cfg = ModelConfig(backbone="resnet18_fpn", weights="imagenet", anchor_sizes=(16, 32, 64, 128, 256))
    model = build_model(cfg)
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, body.layer3[1].conv2.weight)
    assert (torch_home / "hub" / "checkpoints" / name).is_file()


def test_checkpoint_of_a_pretrained_start_rebuilds_for_inference(tmp_path):
    """A model that started from pretrained weights trains with frozen BatchNorm (no
    num_batches_tracked): load_for_inference rebuilds those layers, nothing downloaded."""
    from torchvision.ops import FrozenBatchNorm2d

    from pedcrowd.engine.checkpoint import load_matching_state

    cfg = ModelConfig(backbone="resnet18_fpn", anchor_sizes=(16, 32, 64, 128, 256))
    torch.save(build_model(cfg).state_dict(), tmp_path / "start.pt")
    cfg = dataclasses.replace(cfg, weights=str(tmp_path / "start.pt"))
    trained = build_model(cfg).state_dict()
    (tmp_path / "start.pt").unlink()  # the start is not needed to rebuild
    rebuilt = build_model(cfg, load=False)
    assert isinstance(rebuilt.backbone.body.bn1, FrozenBatchNorm2d)
    load_matching_state(rebuilt, trained, "ckpt.pt")
    assert torch.equal(rebuilt.backbone.body.layer1[0].bn1.running_var, trained["backbone.body.layer1.0.bn1.running_var"])


# --- COCO ---------------------------------------------------------------------------------------

COCO_FRCNN = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
COCO_FCOS = "fcos_resnet50_fpn_coco-99b0c9b7.pth"


def without_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def hosted_names(state: dict) -> dict:
    """``state`` under the key names of torchvision's hosted COCO files, which predate the
    FPN's and the RPN head's current layout (``inner_blocks.0.weight``, ``rpn.head.conv.weight``;
    torchvision renames them in ``load_state_dict``), as a plain dict (no version metadata)."""
    import re

    def old(key: str) -> str:
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.0\.", r"\1.", key)
        return re.sub(r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv.", key)

    return {old(k): v for k, v in state.items()}


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    """torchvision's COCO Faster R-CNN and FCOS architectures, random weights, under the hub
    cache names and the hosted files' older key names (the returned dicts: today's names); the person (1) and car (3) classifier biases raised so that a random model
    detects people and cars (a zero-shot comparison with no detection could not fail)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn

    home = tmp_path_factory.mktemp("coco_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    # saved as torchvision's files are: without BatchNorm step counters (FrozenBatchNorm2d)
    frcnn = without_counters(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict())
    frcnn["roi_heads.box_predictor.cls_score.bias"][[1, 3]] += 6.0
    torch.save(hosted_names(frcnn), checkpoints / COCO_FRCNN)
    fcos = without_counters(fcos_resnet50_fpn(weights=None, weights_backbone=None).state_dict())
    torch.save(hosted_names(fcos), checkpoints / COCO_FCOS)
    return home, frcnn, fcos


R50 = dict(backbone="resnet50_fpn", weights="coco", min_size=64, max_size=96, representation_size=1024,
           anchor_sizes=(32, 64, 128, 256, 512))


@pytest.mark.slow
def test_faster_rcnn_from_coco(coco_files, monkeypatch, caplog):
    home, coco, _ = coco_files
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")  # the cached file: no network needed
    with caplog.at_level(logging.INFO):
        model = build_model(ModelConfig(**R50))  # pedestrian anchors: ratio 2.44 only
    own = model.state_dict()
    for key in ("backbone.body.layer2.0.conv1.weight", "backbone.body.bn1.running_var",
                "backbone.fpn.layer_blocks.3.0.weight", "roi_heads.box_head.fc7.weight"):
        assert torch.equal(own[key], coco[key]), key
    cls_w = coco["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(own["roi_heads.box_predictor.cls_score.weight"], cls_w[[0, 1]])
    assert not torch.equal(own["roi_heads.box_predictor.cls_score.weight"][1], cls_w[2])
    box_w = coco["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(own["roi_heads.box_predictor.bbox_pred.weight"], box_w[:8])
    assert torch.equal(own["roi_heads.box_predictor.cls_score.bias"], coco["roi_heads.box_predictor.cls_score.bias"][:2])
    # the RPN head: 1 anchor per location here, 3 in COCO's: re-initialised, and said so
    assert own["rpn.head.cls_logits.weight"].shape == (1, 256, 1, 1)
    conv = next(k for k in own if k.startswith("rpn.head.conv"))
    assert not torch.equal(own[conv], coco[conv])
    assert "RPN head re-initialised" in caplog.text
    # COCO's own anchors: the RPN head is COCO's too
    caplog.clear()
    with caplog.at_level(logging.INFO):
        same = build_model(ModelConfig(**R50, aspect_ratios=(0.5, 1.0, 2.0))).state_dict()
    assert torch.equal(same["rpn.head.cls_logits.weight"], coco["rpn.head.cls_logits.weight"])
    assert torch.equal(same[conv], coco[conv]) and "re-initialised" not in caplog.text
    # every tensor but the RPN head came from the file
    loaded = [k for k in own if not k.startswith("rpn.head.") and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(own[k], coco[k]) or "box_predictor" in k for k in loaded)
    with pytest.raises(PedcrowdError, match="representation_size: 1024"):
        build_model(ModelConfig(**{**R50, "representation_size": 256}))
    with pytest.raises(PedcrowdError, match="needs model.backbone resnet50_fpn"):
        build_model(ModelConfig(weights="coco"))


@pytest.mark.slow
def test_fcos_from_coco(coco_files, monkeypatch, caplog):
    home, _, coco = coco_files
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")
    cfg = ModelConfig(**{**R50, "arch": "fcos", "representation_size": 256})
    with caplog.at_level(logging.INFO):
        own = build_model(cfg).state_dict()
    assert torch.equal(own["backbone.body.layer4.2.conv3.weight"], coco["backbone.body.layer4.2.conv3.weight"])
    # torchvision's FPN levels C3..C5 are pedcrowd's inner/layer blocks 1..3
    for k in range(3):
        for part in ("inner_blocks", "layer_blocks"):
            assert torch.equal(own[f"backbone.fpn.{part}.{k + 1}.0.weight"], coco[f"backbone.fpn.{part}.{k}.0.weight"])
    cls = coco["head.classification_head.cls_logits.weight"]  # [91, 256, 3, 3]
    assert torch.equal(own["head.classification_head.cls_logits.weight"], cls[1:2])
    assert torch.equal(own["head.regression_head.bbox_ctrness.weight"], coco["head.regression_head.bbox_ctrness.weight"])
    assert torch.equal(own["head.classification_head.conv.0.weight"], coco["head.classification_head.conv.0.weight"])
    assert "C2's lateral" in caplog.text


@pytest.mark.slow
def test_zero_shot_equals_torchvision_person_detections(coco_files, monkeypatch, tmp_path):
    """``pedcrowd infer --weights coco``: torchvision's model as it is, its person rows only."""
    import cv2
    from torchvision.models.detection import (
        FasterRCNN_ResNet50_FPN_Weights,
        fasterrcnn_resnet50_fpn,
    )

    from pedcrowd.infer import infer
    from pedcrowd.model.pretrained import coco_person_detector

    home, _, _ = coco_files
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((60, 80), (48, 100))):
        paths.append(tmp_path / f"im{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    result = infer([str(p) for p in paths], model=coco_person_detector(min_size=64, max_size=128), device="cpu")
    # torchvision's own loader and builder on the same cached file
    reference = fasterrcnn_resnet50_fpn(weights=FasterRCNN_ResNet50_FPN_Weights.COCO_V1, min_size=64, max_size=128)
    reference.eval()
    from pedcrowd.data.datasets import read_image

    n_person = 0
    with torch.inference_mode():  # one batch, as infer's (torchvision pads a batch to one size)
        outputs = reference([read_image(p) for p in paths])
    for path, out in zip(paths, outputs, strict=True):
        labels = set(out["labels"].tolist())
        assert 1 in labels and len(labels) > 1  # people and other classes: the filter matters
        person = out["labels"] == 1
        mine = [d for d in result.detections if d["file_name"] == path.name]
        boxes = np.array([d["bbox"] for d in mine]).reshape(-1, 4)
        want = out["boxes"][person].double().numpy()
        np.testing.assert_allclose(boxes, np.c_[want[:, :2], want[:, 2:] - want[:, :2]], rtol=0, atol=1e-9)
        np.testing.assert_allclose([d["score"] for d in mine], out["scores"][person].double().numpy(), rtol=0, atol=1e-9)
        n_person += int(person.sum())
    assert n_person > 0 and len(result.detections) == n_person


@pytest.mark.slow
def test_infer_cli_coco_on_real_frames(coco_files, shared_data, monkeypatch, tmp_path):
    """``pedcrowd infer FRAMES --weights coco`` on a 1920 x 1080 and a 640 x 480 MOT17 frame
    (random weights: shapes only): boxes inside each frame, person label only."""
    from typer.testing import CliRunner

    from pedcrowd.cli import app
    from pedcrowd.model import pretrained

    home, _, _ = coco_files
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")
    # torchvision's 800 x 1333 takes ~20 s a frame on these CPUs; the boxes still come back
    # in each frame's own pixels at a smaller input size
    monkeypatch.setattr(pretrained, "coco_person_detector",
                        functools.partial(pretrained.coco_person_detector, min_size=200, max_size=360))
    root = shared_data / "mot17mini"
    frames = [root / "MOT17-02-FRCNN/img1/000001.jpg", root / "MOT17-05-FRCNN/img1/000001.jpg"]
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["infer", *map(str, frames), "--weights", "coco", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    dets = json.loads((out / "detections.json").read_text())
    for image_id, (w, h) in ((1, (1920, 1080)), (2, (640, 480))):
        mine = np.array([d["bbox"] for d in dets if d["image_id"] == image_id])
        assert 0 < len(mine) <= 100 and all(d["category_id"] == 1 for d in dets)
        assert (mine[:, :2] >= 0).all() and (mine[:, 2:] >= 0).all()
        assert (mine[:, 0] + mine[:, 2] <= w + 1e-3).all() and (mine[:, 1] + mine[:, 3] <= h + 1e-3).all()
    meta = json.loads((out / "postprocess.json").read_text())
    assert meta["weights"] == "coco" and meta["score_thresh"] == 0.05 and meta["nms_thresh"] == 0.5


def test_coco_mapping_rows_on_a_small_state_dict():
    """The row arithmetic alone: background and person rows, each class's four box rows."""
    from pedcrowd.model.pretrained import coco_state_dict

    coco = {
        "roi_heads.box_predictor.cls_score.weight": torch.arange(91.0)[:, None].repeat(1, 3),
        "roi_heads.box_predictor.cls_score.bias": torch.arange(91.0),
        "roi_heads.box_predictor.bbox_pred.weight": torch.arange(364.0)[:, None].repeat(1, 3),
        "roi_heads.box_predictor.bbox_pred.bias": torch.arange(364.0),
        "rpn.head.cls_logits.weight": torch.zeros(3, 2, 1, 1),
    }
    state, notes = coco_state_dict(coco, "faster_rcnn", anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(2.44,))
    assert state["roi_heads.box_predictor.cls_score.bias"].tolist() == [0.0, 1.0]
    assert state["roi_heads.box_predictor.bbox_pred.bias"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert state["roi_heads.box_predictor.cls_score.weight"][:, 0].tolist() == [0.0, 1.0]
    assert "rpn.head.cls_logits.weight" not in state and "RPN head re-initialised" in notes[0]
    state, notes = coco_state_dict(coco, "faster_rcnn")
    assert "rpn.head.cls_logits.weight" in state and notes == []
