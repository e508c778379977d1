"""The detector: build, train-mode forward on edge cases, ignore-box scaling, weights, the seam."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou

from pedcrowd.errors import PedcrowdError
from pedcrowd.model import (
    ModelConfig,
    PedRegionProposalNetwork,
    PedRoIHeads,
    build_model,
    load_weights,
)
from pedcrowd.model.transform import PedTransform
from pedcrowd.reference.tiny import SMALL

# small and fast: 96 x 192 inputs, few proposals


def _model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(dataclasses.replace(SMALL, **overrides))


def _target(boxes=(), ignore=None) -> dict[str, torch.Tensor]:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)}
    if ignore is not None:
        t["ignore_boxes"] = torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)
    return t


def _images(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 96, 192, generator=g) for _ in range(n)]


class Recorder:
    """Wraps a stage's criterion and keeps the last StageSamples it saw (test only)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, s):
        self.seen = s
        return self.inner(s)


def _record(model):
    """Installs recorders on both stages; returns them as (rpn, roi)."""
    model.rpn.criterion = Recorder(model.rpn.criterion)
    model.roi_heads.criterion = Recorder(model.roi_heads.criterion)
    return model.rpn.criterion, model.roi_heads.criterion


PEOPLE = [[20.0, 20.0, 40.0, 70.0], [30.0, 22.0, 50.0, 72.0], [120.0, 10.0, 150.0, 85.0]]
LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def test_default_model_structure():
    model = build_model(ModelConfig())
    assert isinstance(model.rpn, PedRegionProposalNetwork)
    assert isinstance(model.roi_heads, PedRoIHeads)
    assert isinstance(model.transform, PedTransform)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert model.roi_heads.nms_thresh == 0.5
    # one anchor per location, h/w = 2.44: size 20 -> w = 20 / sqrt(2.44) = 12.80, h = 31.24,
    # centred and rounded by torchvision to [-6.40, -15.62, 6.40, 15.62] -> [-6, -16, 6, 16]
    assert model.rpn.anchor_generator.num_anchors_per_location() == [1, 1, 1]
    assert ModelConfig().anchor_sizes == (20, 40, 80)
    cell = model.rpn.anchor_generator.cell_anchors
    assert cell[0].tolist() == [[-6.0, -16.0, 6.0, 16.0]]
    # size 80: w = 51.22, h = 124.96 -> [-25.61, -62.48, 25.61, 62.48] -> [-26, -62, 26, 62]
    assert cell[2].tolist() == [[-26.0, -62.0, 26.0, 62.0]]


def test_train_forward_with_ignore_empty_and_ignore_only():
    model = _model().train()
    rpn, roi = _record(model)
    targets = [
        _target(PEOPLE, ignore=[[60.0, 5.0, 110.0, 90.0]]),
        _target(),  # background image
        _target(ignore=[[0.0, 0.0, 50.0, 90.0]]),  # ignore-only image
    ]
    losses = model(_images(3), targets)
    assert set(losses) == LOSS_KEYS
    total = sum(losses.values())
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    grad = model.backbone.stem[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    # positives only where there are people
    s = roi.seen
    n_pos = [int((s.positive & s.sampled & (s.image_index == i)).sum()) for i in range(3)]
    assert n_pos[0] >= 3 and n_pos[1] == 0 and n_pos[2] == 0
    assert s.gt_image_index.tolist() == [0, 0, 0] and s.num_images == 3
    r = rpn.seen
    assert [int((r.positive & (r.image_index == i)).sum()) for i in (1, 2)] == [0, 0]
    assert int((r.positive & (r.image_index == 0)).sum()) > 0


def test_everything_ignored_gives_zero_losses_not_nan():
    # one ignore-only image whose ignore region covers everything: nothing can be sampled
    model = _model().train()
    losses = model(_images(1), [_target(ignore=[[-100.0, -100.0, 300.0, 200.0]])])
    assert set(losses) == LOSS_KEYS
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()  # the graph is intact


def test_ignore_boxes_are_scaled_with_the_image():
    transform = PedTransform(96, 192, [0.0] * 3, [1.0] * 3).train()
    target = _target([[10.0, 20.0, 30.0, 60.0]], ignore=[[100.0, 50.0, 200.0, 150.0]])
    images, targets = transform([torch.zeros(3, 120, 240)], [target])  # scale 0.8
    assert images.image_sizes == [(96, 192)]
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[8.0, 16.0, 24.0, 48.0]]))
    torch.testing.assert_close(
        targets[0]["ignore_boxes"], torch.tensor([[80.0, 40.0, 160.0, 120.0]])
    )
    assert target["ignore_boxes"][0, 0] == 100.0  # the caller's target is not modified

    # inside the model, the RPN receives the scaled ignore boxes
    model = _model().train()
    seen = {}
    model.rpn.register_forward_pre_hook(lambda m, args: seen.update(targets=args[2]))
    model([torch.rand(3, 192, 384)], [_target(PEOPLE, ignore=[[100.0, 50.0, 200.0, 150.0]])])
    torch.testing.assert_close(
        seen["targets"][0]["ignore_boxes"], torch.tensor([[50.0, 25.0, 100.0, 75.0]])
    )
    torch.testing.assert_close(seen["targets"][0]["boxes"], torch.tensor(PEOPLE) / 2)


def test_ignore_region_changes_second_stage_sampling_in_the_model():
    # same seed, same proposals: with the ignore box no sampled negative lies inside it
    ignore = torch.tensor([[100.0, 0.0, 192.0, 96.0]])
    for with_ignore in (False, True):
        model = _model().train()
        _, roi = _record(model)
        torch.manual_seed(5)
        target = _target(PEOPLE[:2], ignore=ignore.tolist() if with_ignore else None)
        model(_images(1), [target])
        s = roi.seen
        neg = s.boxes[s.sampled & ~s.positive]
        inter = (
            torch.minimum(neg[:, 2:], ignore[:, 2:]) - torch.maximum(neg[:, :2], ignore[:, :2])
        ).clamp(min=0)
        ioa = inter.prod(1) / (neg[:, 2:] - neg[:, :2]).prod(1)
        if with_ignore:
            assert (ioa < 0.5).all()
        else:  # torchvision's rule does sample them: the test has teeth
            assert (ioa >= 0.5).any()


def test_roi_samples_match_torchvision_matcher_and_decode():
    model = _model().train()
    _, roi = _record(model)
    captured = {}
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: captured.update(out=o))
    target = _target(PEOPLE)
    model(_images(1), [target])
    s = roi.seen
    class_logits, box_regression = captured["out"]
    assert s.sampled.all()  # no term asks for more rows than the sampled ones

    # matched GT index: torchvision's matcher (0.5 / 0.5) on the sampled proposals, -1 for background
    matcher = det_utils.Matcher(0.5, 0.5, allow_low_quality_matches=False)
    expected = matcher(box_iou(s.gt_boxes, s.boxes))
    expected[expected < 0] = -1
    assert torch.equal(s.matched_gt, expected)
    assert int(s.positive.sum()) >= 3  # at least the appended GTs
    # 96 x 192 images at min_size 96 are not resized: GT in input pixels
    torch.testing.assert_close(s.gt_boxes, target["boxes"])
    # decoded pedestrian boxes and scores
    decoded = model.roi_heads.box_coder.decode(box_regression.detach(), [s.boxes])[:, 1]
    torch.testing.assert_close(s.pred_boxes.detach(), decoded)
    torch.testing.assert_close(s.scores().detach(), class_logits.detach().softmax(-1)[:, 1])
    torch.testing.assert_close(s.ped_logit().sigmoid().detach(), s.scores().detach())
    # regression targets: the box coder's encoding of the matched GT on positives
    pos = s.positive
    enc = model.roi_heads.box_coder.encode_single(s.gt_boxes[s.matched_gt[pos]], s.boxes[pos])
    torch.testing.assert_close(s.target_deltas[pos], enc)
    # gradient flows into the box and class branches
    (s.pred_boxes.sum() + s.scores().sum()).backward()
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_rpn_samples_are_every_anchor_with_torchvision_labels():
    model = _model().train()
    rpn, _ = _record(model)
    captured = {}
    model.rpn.head.register_forward_hook(lambda m, i, o: captured.update(head=o))
    model.rpn.anchor_generator.register_forward_hook(lambda m, i, o: captured.update(anchors=o))
    model.rpn.register_forward_pre_hook(lambda m, args: captured.update(targets=args[2]))
    model(_images(1), [_target(PEOPLE)])
    s = rpn.seen
    anchors = captured["anchors"][0]
    objectness, deltas = concat_box_prediction_layers(*captured["head"])

    torch.testing.assert_close(s.boxes, anchors)  # every anchor
    # labels of torchvision's own anchor labelling (no ignore boxes here)
    tv_labels, _ = model.rpn.assign_targets_to_anchors([anchors], captured["targets"])
    assert torch.equal(s.labels, tv_labels[0].long())
    pos = torch.where(s.positive)[0]
    assert len(pos) > 0
    iou = box_iou(s.gt_boxes, s.boxes[pos])
    assert torch.equal(s.matched_gt[pos], iou.argmax(0))
    assert (s.matched_gt[~s.positive] == -1).all()
    decoded = model.rpn.box_coder.decode(deltas.detach()[pos], [anchors[pos]])[:, 0]
    torch.testing.assert_close(s.pred_boxes[pos].detach(), decoded)
    torch.testing.assert_close(s.scores().detach(), objectness.detach()[:, 0].sigmoid())
    # torchvision's sampler: at most 256 anchors, half positives at most (a bool mask)
    assert s.sampled.dtype == torch.bool
    assert 0 < int(s.sampled.sum()) <= 256 and int((s.sampled & s.positive).sum()) <= 128
    (s.pred_boxes[pos].sum() + s.scores()[pos].sum()).backward()
    assert model.rpn.head.bbox_pred.weight.grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0


def _dummy_terms(s, options, state):
    # a real function of the samples: mean positive score, and a box term
    return {"dummy": s.scores()[s.positive].mean(), "dummy_box": s.pred_boxes[s.positive].mean() * 0.01}


def _with_dummy_term(monkeypatch):
    from pedcrowd.losses.registry import TERMS, TermSpec

    monkeypatch.setitem(TERMS, "dummy", TermSpec("extra", _dummy_terms, ("rpn", "roi")))


def test_registered_extra_terms_are_added(monkeypatch):
    _with_dummy_term(monkeypatch)
    model = _model().train()
    from pedcrowd.model import install_criteria

    install_criteria(model, SMALL)
    rpn, roi = _record(model)
    losses = model(_images(2), [_target(PEOPLE), _target(PEOPLE[:1])])
    assert set(losses) == LOSS_KEYS | {
        "loss_dummy",
        "loss_dummy_box",
        "loss_rpn_dummy",
        "loss_rpn_dummy_box",
    }
    expected = roi.seen.scores()[roi.seen.positive].mean()
    torch.testing.assert_close(losses["loss_dummy"], expected)
    torch.testing.assert_close(losses["loss_rpn_dummy"], rpn.seen.scores()[rpn.seen.positive].mean())
    model.zero_grad()
    losses["loss_dummy"].backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0


def test_eval_outputs_bit_identical_with_extra_terms(monkeypatch):
    model = _model(box_score_thresh=0.0).eval()
    images = _images(2)
    with torch.no_grad():
        plain = model(images)
        _with_dummy_term(monkeypatch)
        from pedcrowd.model import install_criteria

        install_criteria(model, SMALL)
        seamed = model(images)
    assert len(plain[0]["boxes"]) > 0
    for a, b in zip(plain, seamed, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])


# --- weights ---------------------------------------------------------------------------------


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_load_pedcrowd_checkpoint_and_torchvision_state_dict(tmp_path):
    source = _model(seed=1)
    assert not _same_state(source, _model(seed=2))
    ckpt = tmp_path / "last.pt"
    torch.save({"model": source.state_dict(), "epoch": 3, "config": {"model": {}}}, ckpt)
    assert _same_state(build_model(dataclasses.replace(SMALL, weights=str(ckpt))), source)

    plain = tmp_path / "detector.pth"  # a plain state dict, saved from a DDP wrapper
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, plain)
    assert _same_state(build_model(dataclasses.replace(SMALL, weights=str(plain))), source)


def test_load_partial_state_dict_reports_what_was_skipped(tmp_path):
    source = _model(seed=1)
    state = {
        k: v for k, v in source.state_dict().items() if not k.startswith("roi_heads.box_predictor")
    }
    state["rpn.head.cls_logits.weight"] = torch.zeros(3, 64, 1, 1)  # a 3-anchor head
    state["roi_heads.extra"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    target = _model(seed=2)
    before = target.roi_heads.box_predictor.cls_score.weight.clone()
    report = load_weights(target, path)
    assert report.missing == [
        "rpn.head.cls_logits.weight",
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    ]
    assert report.unexpected == ["roi_heads.extra"]
    assert report.mismatched == [
        "rpn.head.cls_logits.weight: file (3, 64, 1, 1) vs model (1, 64, 1, 1)"
    ]
    assert torch.equal(target.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert torch.equal(target.roi_heads.box_predictor.cls_score.weight, before)


def test_load_wrong_architecture_or_file_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(PedcrowdError, match=r"other\.pth does not fit this model"):
        build_model(dataclasses.replace(SMALL, weights=str(path)))
    with pytest.raises(PedcrowdError, match=r"missing\.pt is not a file"):
        build_model(dataclasses.replace(SMALL, weights=str(tmp_path / "missing.pt")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PedcrowdError, match=r"model.weights .*garbage\.pt: not a readable checkpoint"):
        build_model(dataclasses.replace(SMALL, weights=str(garbage)))


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(*args, **kwargs):
        raise AssertionError("pedcrowd tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return home


def test_imagenet_weights_missing_is_a_clear_error(empty_torch_home, monkeypatch):
    """Downloads forbidden (issue 25: downloads are the default now; tests/test_pretrained.py)."""
    monkeypatch.setenv("PEDCROWD_OFFLINE", "1")
    cfg = dataclasses.replace(
        SMALL, backbone="resnet18_fpn", weights="imagenet", anchor_sizes=(16, 32, 64, 128, 256)
    )
    expected = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PedcrowdError) as err:
        build_model(cfg)
    assert str(expected) in str(err.value) and "PEDCROWD_OFFLINE forbids downloads" in str(err.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(err.value)
    assert not expected.exists()
    with pytest.raises(PedcrowdError, match="tiny_fpn has no ImageNet weights"):
        build_model(dataclasses.replace(SMALL, weights="imagenet"))


def test_imagenet_weights_from_the_hub_cache(empty_torch_home):
    from torchvision.models import resnet18

    torch.manual_seed(3)
    body = resnet18()
    path = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(body.state_dict(), path)
    cfg = dataclasses.replace(
        SMALL,
        backbone="resnet18_fpn",
        weights="imagenet",
        trainable_layers=2,
        anchor_sizes=(16, 32, 64, 128, 256),
    )
    model = build_model(cfg)
    assert torch.equal(model.backbone.body.layer4[0].conv1.weight, body.layer4[0].conv1.weight)
    assert torch.equal(model.backbone.body.bn1.running_mean, body.bn1.running_mean)
    # trainable_layers=2: layer3 and layer4 train, the rest is frozen
    assert model.backbone.body.layer4[0].conv1.weight.requires_grad
    assert not model.backbone.body.layer2[0].conv1.weight.requires_grad


# --- backbones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "sizes"),
    [
        ("resnet50_fpn", (32, 64, 128, 256, 512)),
        ("resnet18_fpn", (16, 32, 64, 128, 256)),
        ("mobilenet_v3_fpn", (32, 64, 128)),
    ],
)
def test_torchvision_backbones_build(backbone, sizes):
    model = build_model(dataclasses.replace(SMALL, backbone=backbone, anchor_sizes=sizes))
    assert model.rpn.anchor_generator.num_anchors_per_location() == [1] * len(sizes)
    if backbone == "mobilenet_v3_fpn":  # one tiny forward for the cheap one
        model.eval()
        with torch.no_grad():
            out = model(_images(1))
        assert set(out[0]) == {"boxes", "scores", "labels"}


def test_anchor_sizes_must_match_levels():
    with pytest.raises(PedcrowdError, match="resnet50_fpn has 5 feature levels"):
        build_model(dataclasses.replace(SMALL, backbone="resnet50_fpn"))
    with pytest.raises(PedcrowdError, match="unknown backbone 'vgg16'"):
        build_model(dataclasses.replace(SMALL, backbone="vgg16"))


# --- equivalence with plain torchvision --------------------------------------------------------


def _plain_torchvision_twin(model, cfg: ModelConfig):
    """A stock torchvision FasterRCNN sharing ``model``'s modules (so the same weights)."""
    from torchvision.models.detection import FasterRCNN

    return FasterRCNN(
        model.backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=model.rpn.anchor_generator,
        rpn_head=model.rpn.head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        box_roi_pool=model.roi_heads.box_roi_pool,
        box_head=model.roi_heads.box_head,
        box_predictor=model.roi_heads.box_predictor,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_score_thresh=cfg.box_score_thresh,
    )


def test_without_ignore_boxes_losses_equal_torchvision_and_with_them_differ():
    model = _model().train()
    plain = _plain_torchvision_twin(model, SMALL).train()
    images = _images(2)
    targets = [_target(PEOPLE), _target(PEOPLE[2:])]
    torch.manual_seed(7)
    ours = model(images, targets)
    torch.manual_seed(7)
    theirs = plain(images, targets)
    assert set(ours) == set(theirs)
    for key in ours:  # same samples, same arithmetic: bit-identical
        assert torch.equal(ours[key], theirs[key]), key

    ignore = [[60.0, 0.0, 110.0, 96.0]]  # a crowd region with no person inside
    torch.manual_seed(7)
    ours = model(images, [_target(PEOPLE, ignore=ignore), _target(PEOPLE[2:], ignore=ignore)])
    torch.manual_seed(7)
    theirs = plain(images, [_target(PEOPLE, ignore=ignore), _target(PEOPLE[2:], ignore=ignore)])
    assert not torch.equal(ours["loss_objectness"], theirs["loss_objectness"])

    model.eval()
    plain.eval()
    with torch.no_grad():
        a, b = model(images), plain(images)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])


def test_checkpoint_into_torchvision_backbone_freezes_batchnorm(tmp_path):
    from torchvision.ops import FrozenBatchNorm2d

    cfg = dataclasses.replace(SMALL, backbone="resnet18_fpn", anchor_sizes=(16, 32, 64, 128, 256))
    torch.manual_seed(4)
    scratch = build_model(cfg)  # from scratch: trainable BatchNorm
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    with torch.no_grad():
        scratch.backbone.body.bn1.running_mean.uniform_()  # statistics a training run would have
    path = tmp_path / "r18.pt"
    torch.save({"model": scratch.state_dict()}, path)

    model = build_model(dataclasses.replace(cfg, weights=str(path), trainable_layers=1))
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert torch.equal(model.backbone.body.bn1.running_mean, scratch.backbone.body.bn1.running_mean)
    assert torch.equal(model.roi_heads.box_head.fc6.weight, scratch.roi_heads.box_head.fc6.weight)
    assert not model.backbone.body.layer3[0].conv1.weight.requires_grad  # only layer4 trains
    assert model.backbone.body.layer4[0].conv1.weight.requires_grad
    report = load_weights(model, path)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
