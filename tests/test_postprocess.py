"""Post-processing: hard NMS bit-identical to torchvision, soft-NMS and variance voting
against independent loops and hand-computed values, the KL head at inference."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads

from pedcrowd.errors import PedcrowdError
from pedcrowd.model import ModelConfig, build_model
from pedcrowd.model.config import PostprocessConfig
from pedcrowd.model.postprocess import greedy_suppress, suppress
from pedcrowd.model.postprocess import vote as vote_fn

SMALL = ModelConfig(
    min_size=96, max_size=192, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=60,
    representation_size=64,
)


# --------------------------------------------------------------------------- reference loop


def _iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_soft_nms(boxes, scores, *, method, nt, sigma, floor, max_det,
                       variances=None, sigma_t=0.01, vote_iou=0.01):
    """Per-box Python loop of the official algorithm (cython soft_nms + py_cpu_nms.soft)."""
    boxes = [list(map(float, b)) for b in boxes]
    cur = [float(s) for s in scores]
    remaining = list(range(len(boxes)))
    out = []
    while remaining and len(out) < max_det:
        best = max(cur[j] for j in remaining)
        m = min(j for j in remaining if cur[j] == best)  # ties: the lowest index
        remaining.remove(m)
        box = boxes[m]
        if variances is not None:
            num, den = [0.0] * 4, [0.0] * 4
            for j in [m] + remaining:
                o = 1.0 if j == m else _iou(boxes[m], boxes[j])
                if j != m and not o > vote_iou:
                    continue
                p = math.exp(-((1 - o) ** 2) / sigma_t)
                for c in range(4):
                    num[c] += p * boxes[j][c] / variances[j][c]
                    den[c] += p / variances[j][c]
            box = [num[c] / den[c] for c in range(4)]
        out.append((m, cur[m], box))
        for j in list(remaining):
            o = _iou(boxes[m], boxes[j])
            if o <= 0:
                continue
            if method == "hard":
                w = 0.0 if o > nt else 1.0
            elif method == "soft-linear":
                w = 1 - o if o > nt else 1.0
            else:
                w = math.exp(-(o * o) / sigma)
            cur[j] *= w
            if cur[j] < floor:
                remaining.remove(j)
    return out


def _crowd(seed: int, n: int):
    """A crowded scene in float64: people in clusters, scores from 6 values (many ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 180, size=(max(2, n // 15), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, size=(n, 2))
    w = rng.uniform(10, 30, n)
    h = w * rng.uniform(2.0, 2.8, n)
    boxes = np.stack([c[:, 0] - w / 2, c[:, 1] - h / 2, c[:, 0] + w / 2, c[:, 1] + h / 2], 1)
    scores = rng.choice([0.3, 0.5, 0.6, 0.8, 0.9, 0.95], n)
    variances = rng.uniform(0.05, 2.0, size=(n, 4))
    return (torch.tensor(boxes), torch.tensor(scores), torch.tensor(variances))


@pytest.mark.parametrize("method", ["soft-linear", "soft-gaussian", "hard"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("vote", [False, True])
# the official rule with a floor; the seed's IoU > N_t rule with no floor (nothing ever drops)
@pytest.mark.parametrize("floor, vote_iou", [(0.001, 0.01), (0.0, 0.5)])
def test_greedy_and_vote_match_per_box_loop(method, seed, vote, floor, vote_iou):
    if method == "hard" and floor == 0:
        pytest.skip("with no floor the per-box loop keeps hard-suppressed boxes at score 0; hard NMS drops them")
    boxes, scores, variances = _crowd(seed, 120)
    kw = dict(nt=0.5, sigma=0.5, floor=floor, max_det=80)
    ref = reference_soft_nms(
        boxes.tolist(), scores.tolist(), method=method, **kw,
        variances=variances.tolist() if vote else None, sigma_t=0.05, vote_iou=vote_iou,
    )
    keep, kept_scores = greedy_suppress(
        boxes, scores, method=method, nms_thresh=0.5, sigma=0.5, score_floor=floor, max_det=80,
    )
    kept_boxes = boxes[keep]
    if vote:
        kept_boxes = vote_fn(boxes, scores, keep, variances, method=method, nms_thresh=0.5,
                             sigma=0.5, score_floor=floor, sigma_t=0.05, vote_iou=vote_iou)
    assert len(ref) == (80 if method != "hard" else len(ref)) and len(ref) > 30
    assert keep.tolist() == [m for m, _, _ in ref]
    np.testing.assert_allclose(kept_scores.numpy(), [s for _, s, _ in ref], rtol=1e-12)
    np.testing.assert_allclose(kept_boxes.numpy(), [b for _, _, b in ref], rtol=1e-10)
    if method != "hard":  # decay changed the order of at least some tied scores
        assert not torch.equal(kept_scores, scores[keep])


@pytest.mark.parametrize("method", ["soft-linear", "soft-gaussian", "hard"])
def test_masked_loop_without_host_sync_gives_the_same(method):
    # the GPU path: max_det masked steps, selections past the last box filtered out
    boxes, scores, _ = _crowd(7, 60)
    kw = dict(method=method, nms_thresh=0.5, sigma=0.5, score_floor=0.001, max_det=100)
    a = greedy_suppress(boxes, scores, early_exit=True, **kw)
    b = greedy_suppress(boxes, scores, early_exit=False, **kw)
    assert len(a[0]) < 60 if method == "hard" else len(a[0]) <= 60
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_soft_nms_stops_when_every_box_is_gone():
    # two identical boxes: hard suppression leaves one detection, linear decays to 0 (floor)
    boxes = torch.tensor([[0.0, 0, 10, 20], [0.0, 0, 10, 20], [50.0, 0, 60, 20]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, s = greedy_suppress(boxes, scores, method="soft-linear", nms_thresh=0.3,
                                 score_floor=0.001, max_det=10)
    assert keep.tolist() == [0, 2]  # 0.8 * (1 - 1.0) = 0 < floor
    keep, s = greedy_suppress(boxes, scores, method="soft-gaussian", nms_thresh=0.3, sigma=0.5,
                              max_det=10)
    assert keep.tolist() == [0, 2, 1]
    assert s[2].item() == pytest.approx(0.8 * math.exp(-1 / 0.5))


# --------------------------------------------------------------------------- variance voting


# b0 best; b1 overlaps it (IoU 180 / 220 = 9/11), b3 overlaps it (IoU 100 / 200 = 0.5), b2 alone
CLUSTER = torch.tensor(
    [[0.0, 0.0, 10.0, 20.0], [1.0, 0.0, 11.0, 20.0], [40.0, 0.0, 50.0, 20.0], [0.0, 0.0, 10.0, 10.0]]
)
CLUSTER_SCORES = torch.tensor([0.9, 0.8, 0.75, 0.7])
CLUSTER_VAR = torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [0.5, 2.0, 0.25, 1.0], [1.0, 1.0, 1.0, 1.0], [4.0, 1.0, 1.0, 0.1]]
)


def _by_hand(sigma_t: float, with_b3: bool) -> list[float]:
    """b0's voted edges: sum_j p_j x_j / v_j / sum_j p_j / v_j over b0, b1 (and b3)."""
    p = {0: 1.0, 1: math.exp(-((1 - 9 / 11) ** 2) / sigma_t), 3: math.exp(-(0.5**2) / sigma_t)}
    members = [0, 1, 3] if with_b3 else [0, 1]
    out = []
    for c in range(4):
        num = sum(p[j] * CLUSTER[j, c].item() / CLUSTER_VAR[j, c].item() for j in members)
        den = sum(p[j] / CLUSTER_VAR[j, c].item() for j in members)
        out.append(num / den)
    return out


def test_variance_voting_hand_built_cluster():
    sigma_t = 0.1
    b0 = _by_hand(sigma_t, with_b3=True)
    # e.g. x1: (0/1 + 0.7185 * 1/0.5 + 0.0821 * 0/4) / (1 + 0.7185/0.5 + 0.0821/4) = 0.5847
    assert b0[0] == pytest.approx(0.7185 * 2 / (1 + 0.7185 * 2 + 0.0821 / 4), abs=1e-3)
    expected = torch.tensor([b0, CLUSTER[2].tolist(), CLUSTER[3].tolist()])
    cfg = PostprocessConfig(nms="hard", var_voting=True, sigma_t=sigma_t)
    keep, scores, boxes = suppress(CLUSTER, CLUSTER_SCORES, cfg, nms_thresh=0.5, max_det=10,
                                   variances=CLUSTER_VAR)
    assert keep.tolist() == [0, 2, 3]  # b1 suppressed (9/11 > 0.5), b3 not (0.5 is not > 0.5)
    torch.testing.assert_close(boxes, expected)
    torch.testing.assert_close(scores, CLUSTER_SCORES[[0, 2, 3]])
    # the same after the greedy loop's hard kernel
    keep2, _ = greedy_suppress(CLUSTER, CLUSTER_SCORES, method="hard", nms_thresh=0.5, max_det=10)
    assert keep2.tolist() == [0, 2, 3]
    boxes2 = vote_fn(CLUSTER, CLUSTER_SCORES, keep2, CLUSTER_VAR, method="hard", nms_thresh=0.5,
                     sigma_t=sigma_t)
    torch.testing.assert_close(boxes2, expected)
    # the seed's neighbourhood (IoU > N_t = 0.5) leaves b3 out of b0's vote
    nt = dataclasses.replace(cfg, vote_neighbours="nt")
    _, _, boxes3 = suppress(CLUSTER, CLUSTER_SCORES, nt, nms_thresh=0.5, max_det=10,
                            variances=CLUSTER_VAR)
    torch.testing.assert_close(boxes3[0], torch.tensor(_by_hand(sigma_t, with_b3=False)))


def test_variance_voting_after_soft_nms_hand_built():
    # Gaussian soft-NMS: b0 votes with everything left (b1, b3); b1 survives decayed,
    # and when it is selected later only b3 (and b2, IoU 0) remain around it
    sigma_t = 0.1
    cfg = PostprocessConfig(nms="soft-gaussian", var_voting=True, sigma_t=sigma_t)
    keep, scores, boxes = suppress(CLUSTER, CLUSTER_SCORES, cfg, nms_thresh=0.5, max_det=10,
                                   variances=CLUSTER_VAR)
    s3 = 0.7 * math.exp(-(0.5**2) / 0.5)  # 0.4246, decayed by b0
    iou31 = 90 / 210  # b3 is selected before b1 and decays it too
    s1 = 0.8 * math.exp(-((9 / 11) ** 2) / 0.5) * math.exp(-(iou31**2) / 0.5)  # 0.1453
    assert keep.tolist() == [0, 2, 3, 1]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.75, s3, s1]))
    torch.testing.assert_close(boxes[0], torch.tensor(_by_hand(sigma_t, with_b3=True)))
    # b3's vote includes b1, still a candidate
    p = math.exp(-((1 - iou31) ** 2) / sigma_t)
    for c in range(4):
        v3, v1 = CLUSTER_VAR[3, c].item(), CLUSTER_VAR[1, c].item()
        want = (CLUSTER[3, c].item() / v3 + p * CLUSTER[1, c].item() / v1) / (1 / v3 + p / v1)
        assert boxes[2, c].item() == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(boxes[3], CLUSTER[1])  # nothing left around b1


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_hard_nms_vote_matches_per_box_loop(seed):
    # torchvision's NMS, then the vote; continuous scores (torchvision's tie order is its own)
    boxes, _, variances = _crowd(seed, 300)
    scores = torch.tensor(np.random.default_rng(seed).uniform(0.05, 1, 300))
    cfg = PostprocessConfig(nms="hard", var_voting=True, sigma_t=0.05)
    keep, _, voted = suppress(boxes, scores, cfg, nms_thresh=0.5, max_det=100, variances=variances)
    ref = reference_soft_nms(boxes.tolist(), scores.tolist(), method="hard", nt=0.5, sigma=0.5,
                             floor=0.001, max_det=100, variances=variances.tolist(),
                             sigma_t=0.05, vote_iou=0.01)
    assert keep.tolist() == [m for m, _, _ in ref]
    np.testing.assert_allclose(voted.numpy(), [b for _, _, b in ref], rtol=1e-10)
    assert (voted - boxes[keep]).abs().max() > 0.1  # voting moved boxes


def test_empty_inputs():
    e = torch.zeros((0, 4))
    for cfg in (PostprocessConfig(nms="soft-gaussian"), PostprocessConfig(var_voting=True)):
        keep, scores, boxes = suppress(e, torch.zeros(0), cfg, nms_thresh=0.5, max_det=100,
                                       variances=e)
        assert keep.numel() == 0 and boxes.shape == (0, 4)


# --------------------------------------------------------------------------- in the model


def _images(n: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 96, 150 + 20 * i, generator=g) for i in range(n)]


def test_hard_nms_bit_identical_to_torchvision():
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    reference = copy.deepcopy(model)
    rh = reference.roi_heads
    reference.roi_heads = RoIHeads(  # plain torchvision inference around the same modules
        rh.box_roi_pool, rh.box_head, rh.box_predictor, 0.5, 0.5, 64, 0.25, None,
        rh.score_thresh, rh.nms_thresh, rh.detections_per_img,
    ).eval()
    images = _images(3)
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    assert sum(len(o["boxes"]) for o in ours) > 50
    for a, b in zip(ours, theirs, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_kl_head_box_std_and_voting_in_the_model():
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMALL, box_std_head=True)).eval()
    images = _images(2)
    with torch.no_grad():
        hard = model(images)
        model.roi_heads.set_postprocess(PostprocessConfig(var_voting=True))
        voted = model(images)
    for h, v, img in zip(hard, voted, images, strict=True):
        assert h["box_std"].shape == h["boxes"].shape
        # untrained head: alpha ~ 0, sigma = 1 code unit = proposal size / 10 in input
        # pixels, mapped back to the image by the resize factor (image pixels)
        assert h["box_std"].min() > 0
        torch.testing.assert_close(h["scores"], v["scores"])
        assert not torch.equal(h["boxes"], v["boxes"])
        assert (v["boxes"][:, 2] <= img.shape[-1] + 1e-4).all()


def test_variance_voting_needs_the_kl_head():
    model = build_model(SMALL)
    with pytest.raises(PedcrowdError, match="var_voting.*--box-loss kl"):
        model.roi_heads.set_postprocess(PostprocessConfig(var_voting=True))
    model.roi_heads.set_postprocess(PostprocessConfig(nms="soft-linear"))  # fine without it


def test_postprocess_config_ranges():
    from pedcrowd.engine.config import load_config

    for bad, key in (("postprocess.soft_sigma=0", "soft_sigma"), ("postprocess.sigma_t=-1", "sigma_t"),
                     ("postprocess.score_floor=1", "score_floor"), ("loss.kl.beta=0", "beta"),
                     ("postprocess.nms=soft", "nms")):
        with pytest.raises(PedcrowdError, match=key):
            load_config(None, [bad])
    cfg = load_config(None, ["postprocess.nms=soft-gaussian", "postprocess.var_voting=true"])
    assert cfg.postprocess.describe() == "soft-gaussian+var-voting"
