"""Mixed precision that keeps the crowd losses exact (issue 26).

Under CPU bfloat16 autocast (the path CUDA float16/bfloat16 takes too): one
training step of every technique gives finite float32 terms; the criteria, the
samplers and the post-processing compute on float32 with autocast off, so on a
fixed scene (network outputs rounded to bfloat16, as autocast makes them) their
pairs, selections, bins and detections equal the float32 run's on the same
values; anchors and decoded boxes stay float32. Also: no technique leaves a
parameter without gradient (DDP's ``find_unused_parameters`` stays off).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from pedcrowd.losses.criterion import StageCriterion
from pedcrowd.losses.standard import SamplerContext
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.model.postprocess import suppress
from pedcrowd.precision import Float32AnchorGenerator
from pedcrowd.reference.tiny import TECHNIQUES
from pedcrowd.reference.tiny import crowd_batch as batch
from pedcrowd.reference.tiny import technique_model as model_for

BF16 = torch.bfloat16


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_one_bf16_autocast_step_of_every_technique_gives_finite_float32_terms_and_grads(name):
    model = model_for(name)
    seen = []  # the dtype the backbone's first stage computes in: bfloat16 under autocast
    first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    images, targets = batch()
    with torch.autocast("cpu", dtype=BF16):
        losses = model(images, targets)
    assert seen == [BF16]
    assert losses and all(v.dtype == torch.float32 for v in losses.values()), losses
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # every trainable parameter has a gradient: why DDP runs with find_unused_parameters off
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


# ----------------------------------------------------------------------------- the criteria


def _captured_samples(name: str, monkeypatch):
    """[(criterion, StageSamples)] of both stages from one float32 step on the fixed scene."""
    model = model_for(name)
    captured = []
    original = StageCriterion.__call__

    def spy(crit, s):
        captured.append((crit, s))
        return original(crit, s)

    with monkeypatch.context() as m:
        m.setattr(StageCriterion, "__call__", spy)
        model(*batch())
    assert [c.stage for c, _ in captured] == ["rpn", "roi"]
    return captured


def _as_network_output(s, dtype):
    """``s`` with the heads' outputs (logits, deltas, extras) rounded to ``dtype``: what
    the heads hand over under autocast."""
    return dataclasses.replace(
        s, class_logits=s.class_logits.detach().to(dtype), deltas=s.deltas.detach().to(dtype),
        extras={k: v.detach().to(dtype) for k, v in s.extras.items()},
    )


CRITERIA = ["default", "nms-roi", "nms-rpn", "rep", "focal", "rpn-focal", "ghm", "qfl", "pisa", "kl"]


@pytest.mark.parametrize("name", CRITERIA)
def test_criteria_under_autocast_equal_float32_on_the_same_values(name, monkeypatch):
    """NMS-Loss pairs, RepLoss, GHM bins, PISA weights, ...: the terms of bfloat16 head
    outputs under autocast equal, bit for bit, the float32 terms of the same values."""
    for crit, s in _captured_samples(name, monkeypatch):
        half = _as_network_output(s, BF16)
        full = half.float32()
        state = copy.deepcopy(crit.state)  # GHM's moving averages: both runs start from them
        with torch.autocast("cpu", dtype=BF16):
            got = crit(half)
        crit.state = state
        want = crit(full)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == torch.float32, key
            assert torch.equal(got[key], want[key]), (key, got[key], want[key])


def test_float32_samples_are_a_noop_on_float32(monkeypatch):
    (_, s), *_ = _captured_samples("default", monkeypatch)
    assert s.float32() is s
    half = _as_network_output(s, BF16)
    assert half.float32() is not half and half.float32().deltas.dtype == torch.float32


@pytest.mark.parametrize("name", ["ohem", "pisa"])
def test_sampler_selections_under_autocast_equal_float32(name):
    """OHEM's hard RoIs and PISA's Score-HLR negatives: the same rows on the same values."""
    model = model_for(name)
    sampler = model.roi_heads.criterion.sampler
    contexts = []
    original = sampler.select
    sampler.select = lambda ctx: contexts.append(ctx) or original(ctx)
    model(*batch())
    (ctx,) = contexts

    def rounded_score(rows):  # the box head's outputs as bfloat16 autocast hands them over
        with torch.autocast("cpu", enabled=False):
            return _as_network_output(ctx.score(rows), BF16).float32()

    fixed = SamplerContext(ctx.proposals, ctx.labels, ctx.fg_bg_sampler, rounded_score)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=BF16):
        got = original(fixed)
    torch.manual_seed(5)
    want = original(fixed)
    assert len(got) == len(want) == 2
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert sum(len(w) for w in want) > 0


@pytest.mark.parametrize("name", ["ohem", "pisa"])
def test_samplers_run_in_float32_inside_an_autocast_step(name):
    """The seam: in the model, select() runs with autocast off on float32 scores, while
    the box head inside its scoring pass keeps the step's bfloat16."""
    model = model_for(name)
    sampler = model.roi_heads.criterion.sampler
    original = sampler.select
    seen = {}

    def spy(ctx):
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        real_score = ctx.score

        def score(rows):
            out = real_score(rows)
            seen["score_dtype"] = out.class_logits.dtype
            return out

        return original(SamplerContext(ctx.proposals, ctx.labels, ctx.fg_bg_sampler, score))

    head_dtypes = []
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: head_dtypes.append(o[0].dtype))
    sampler.select = spy
    with torch.autocast("cpu", dtype=BF16):
        model(*batch())
    assert seen == {"autocast": False, "score_dtype": torch.float32}
    assert head_dtypes == [BF16, BF16]  # the scoring pass and the training pass


# ----------------------------------------------------------------------------- geometry


def test_anchors_stay_float32_under_autocast():
    sizes, ratios = ((32,), (64,)), ((0.41,), (0.41,))
    images = ImageList(torch.zeros(1, 3, 1024, 2048), [(1024, 2048)])
    maps = [torch.zeros(1, 8, 256, 512, dtype=BF16), torch.zeros(1, 8, 128, 256, dtype=BF16)]
    want = AnchorGenerator(sizes, ratios)(images, [m.float() for m in maps])
    got = Float32AnchorGenerator(sizes, ratios)(images, maps)
    assert got[0].dtype == torch.float32 and torch.equal(got[0], want[0])
    # the reason: torchvision's generator makes them in the maps' dtype, bfloat16 moves a
    # coordinate near 2000 by up to 4 pixels
    plain = AnchorGenerator(sizes, ratios)(images, maps)[0]
    assert plain.dtype == BF16 and (plain.float() - want[0]).abs().max() >= 4


def test_inference_under_autocast_gives_float32_detections():
    model = model_for("kl").eval()
    model.roi_heads.set_postprocess(PostprocessConfig(nms="soft-gaussian", var_voting=True))
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        (out,) = model([batch()[0][0]])
    assert out["boxes"].shape[0] > 0
    assert {k: v.dtype for k, v in out.items()} == {
        "boxes": torch.float32, "scores": torch.float32, "labels": torch.int64, "box_std": torch.float32
    }


def _scene(n: int = 60):
    """Boxes in crowded clusters (IoUs around N_t), scores, per-edge variances; bfloat16."""
    g = torch.Generator().manual_seed(7)
    centres = torch.tensor([[200.0, 300.0], [230.0, 310.0], [900.0, 500.0], [1500.0, 700.0]])
    c = centres[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 12
    wh = torch.tensor([40.0, 100.0]) * (1 + 0.2 * torch.rand(n, 2, generator=g))
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    scores = torch.rand(n, generator=g)
    variances = 0.01 + 0.2 * torch.rand(n, 4, generator=g)
    return boxes.to(BF16), scores.to(BF16), variances.to(BF16)


@pytest.mark.parametrize("nms", ["hard", "soft-linear", "soft-gaussian"])
@pytest.mark.parametrize("var_voting", [False, True])
def test_soft_nms_and_variance_voting_under_autocast_equal_float32(nms, var_voting):
    boxes, scores, variances = _scene()
    cfg = PostprocessConfig(nms=nms, var_voting=var_voting)
    with torch.autocast("cpu", dtype=BF16):
        got = suppress(boxes, scores, cfg, nms_thresh=0.5, max_det=100, variances=variances)
    want = suppress(boxes.float(), scores.float(), cfg, nms_thresh=0.5, max_det=100,
                    variances=variances.float())
    assert 1 < len(want[0]) < len(boxes)  # some suppressed, some kept
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
