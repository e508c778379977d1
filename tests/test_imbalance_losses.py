"""Sample-imbalance losses (issue 11): hand-computed values and gradients of focal
loss, GHM-C / GHM-R, ISR-P / ISR-N / CARL, QFL and OHEM selection, plus
independent loops (the official per-bin / per-group algorithms written out
plainly here) on random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.focal import focal_loss, prior_bias
from pedcrowd.losses.ghm import GHMState, ghmc_loss, ghmr_loss
from pedcrowd.losses.ohem import ohem_row_loss, ohem_select
from pedcrowd.losses.pisa import carl_loss, hlr_rank, isr_n_select, isr_p_weights, nms_groups
from pedcrowd.losses.qfl import quality_focal_loss, quality_targets


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logit(p):
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------- focal


def test_focal_values_and_gradients_by_hand():
    x = t([0.0, 2.0, -1.0], grad=True)
    y = t([1.0, 0.0, 1.0])
    loss = focal_loss(x, y, gamma=2.0, alpha=0.25)
    p = [sig(0.0), sig(2.0), sig(-1.0)]
    expected = [
        -0.25 * (1 - p[0]) ** 2 * math.log(p[0]),
        -0.75 * p[1] ** 2 * math.log(1 - p[1]),
        -0.25 * (1 - p[2]) ** 2 * math.log(p[2]),
    ]
    torch.testing.assert_close(loss, t(expected))
    assert loss[0].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-12)
    loss.sum().backward()
    # y = 1: a (1-p)^g (g p ln p - (1-p));  y = 0: (1-a) p^g (p - g (1-p) ln(1-p))
    grads = [
        0.25 * (1 - p[0]) ** 2 * (2 * p[0] * math.log(p[0]) - (1 - p[0])),
        0.75 * p[1] ** 2 * (p[1] - 2 * (1 - p[1]) * math.log(1 - p[1])),
        0.25 * (1 - p[2]) ** 2 * (2 * p[2] * math.log(p[2]) - (1 - p[2])),
    ]
    torch.testing.assert_close(x.grad, t(grads))


def test_focal_gamma_zero_no_alpha_is_cross_entropy():
    x = t([0.3, -2.0, 4.0])
    y = t([1.0, 0.0, 0.0])
    expected = [-math.log(sig(0.3)), -math.log(1 - sig(-2.0)), -math.log(1 - sig(4.0))]
    torch.testing.assert_close(focal_loss(x, y, gamma=0.0, alpha=-1.0), t(expected))


def test_prior_bias_value():
    b = prior_bias(0.01)
    assert b == pytest.approx(-math.log(99.0), rel=1e-15)
    assert sig(b) == pytest.approx(0.01, rel=1e-12)
    with pytest.raises(PedcrowdError, match="prior"):
        prior_bias(1.0)


# ---------------------------------------------------------------- GHM


def official_ghm_loop(g, loss, valid, bins, momentum, acc, last_edge):
    """The official per-bin loop (GHMDetection / mmdetection), written out plainly."""
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] = last_edge
    tot = max(sum(valid), 1.0)
    w = [0.0] * len(g)
    n = 0
    for i in range(bins):
        inds = [j for j in range(len(g)) if valid[j] and edges[i] <= g[j] < edges[i + 1]]
        if inds:
            n += 1
            if momentum > 0:
                acc[i] = momentum * acc[i] + (1 - momentum) * len(inds)
                for j in inds:
                    w[j] = tot / acc[i]
            else:
                for j in inds:
                    w[j] = tot / len(inds)
    if n:
        w = [v / n for v in w]
    return sum(wj * lj for wj, lj in zip(w, loss, strict=True)) / tot, w


def test_ghmc_hand_values_and_gradient():
    # y = 0 everywhere, so g = p: g = 0.1, 0.1 (region 0), 0.6 (region 2), 0.9 (region 3) of 4
    ps = [0.1, 0.1, 0.6, 0.9]
    x = t([logit(p) for p in ps], grad=True)
    y = t([0.0, 0.0, 0.0, 0.0])
    per, tot = ghmc_loss(x, y, torch.ones(4, dtype=torch.bool), bins=4, momentum=0.0)
    assert tot == 4.0
    w = [4 / (2 * 3), 4 / (2 * 3), 4 / 3, 4 / 3]  # tot / (count * non-empty regions)
    torch.testing.assert_close(per, t([wi * -math.log(1 - p) for wi, p in zip(w, ps, strict=True)]))
    (per.sum() / tot).backward()
    torch.testing.assert_close(x.grad, t([wi * p / 4 for wi, p in zip(w, ps, strict=True)]))


def test_ghmc_matches_official_loop_with_momentum():
    gen = torch.Generator().manual_seed(0)
    state = GHMState(bins=30)
    acc = [0.0] * 30
    for _ in range(3):
        x = torch.randn(200, generator=gen, dtype=torch.float64) * 3
        y = (torch.rand(200, generator=gen) < 0.2).double()
        valid = torch.rand(200, generator=gen) < 0.9
        per, tot = ghmc_loss(x, y, valid, bins=30, momentum=0.75, state=state)
        g = (torch.sigmoid(x) - y).abs().tolist()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none").tolist()
        ref, _ = official_ghm_loop(g, bce, valid.tolist(), 30, 0.75, acc, 1 + 1e-6)
        assert (per.sum() / tot).item() == pytest.approx(ref, rel=1e-6)
        torch.testing.assert_close(state.acc_sum, torch.tensor(acc, dtype=torch.float64))


def test_ghmc_one_region_no_positive_and_empty_batch_are_finite():
    x = t([-5.0, -5.0, -5.0], grad=True)  # every g = sigmoid(-5): one region, no positive
    y = t([0.0, 0.0, 0.0])
    per, tot = ghmc_loss(x, y, torch.ones(3, dtype=torch.bool), bins=30, momentum=0.0)
    bce = -math.log(1 - sig(-5.0))
    torch.testing.assert_close(per / tot * 3, t([bce] * 3))  # weight exactly 1: the mean BCE
    state = GHMState(bins=30)
    per, tot = ghmc_loss(x, y, torch.ones(3, dtype=torch.bool), bins=30, momentum=0.75, state=state)
    torch.testing.assert_close(
        per, t([bce / 0.25] * 3)
    )  # first EMA step: acc = 0.25 * count (official)
    (per.sum() / tot).backward()
    assert torch.isfinite(x.grad).all()
    x = t([1.0, 2.0], grad=True)
    per, tot = ghmc_loss(
        x, t([1.0, 0.0]), torch.zeros(2, dtype=torch.bool), bins=30, momentum=0.75, state=state
    )
    assert tot == 1.0 and per.abs().sum() == 0
    per, tot = ghmc_loss(
        t([]), t([]), torch.zeros(0, dtype=torch.bool), bins=30, momentum=0.75, state=state
    )
    assert per.numel() == 0 and tot == 1.0


def test_ghmr_hand_values_and_gradient():
    mu = 0.02
    d = [0.0, 0.01, -0.5, 2.0]  # g = |d| / sqrt(d^2 + mu^2): 0, 0.447, 0.9992, 0.99995
    deltas = t([d, [9.0] * 4], grad=True)  # row 1 is not a positive
    targets = t([[0.0] * 4, [0.0] * 4])
    per, tot = ghmr_loss(deltas, targets, torch.tensor([True, False]), mu=mu, bins=10, momentum=0.0)
    assert tot == 4.0
    # regions: 0 -> 0, 0.447 -> 4, both ~1 -> 9: three non-empty regions
    w = [4 / (1 * 3), 4 / (1 * 3), 4 / (2 * 3), 4 / (2 * 3)]
    asl = [math.sqrt(v * v + mu * mu) - mu for v in d]
    assert per[0].item() == pytest.approx(
        sum(a * b for a, b in zip(w, asl, strict=True)), rel=1e-12
    )
    assert per[1].item() == 0.0
    (per.sum() / tot).backward()
    expected = [wi * v / math.sqrt(v * v + mu * mu) / 4 for wi, v in zip(w, d, strict=True)]
    torch.testing.assert_close(deltas.grad[0], t(expected))
    assert deltas.grad[1].abs().sum() == 0


def test_ghmr_matches_official_loop_and_no_positive():
    gen = torch.Generator().manual_seed(1)
    state = GHMState(bins=10)
    acc = [0.0] * 10
    for _ in range(3):
        deltas = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.1
        targets = torch.randn(50, 4, generator=gen, dtype=torch.float64) * 0.1
        valid = torch.rand(50, generator=gen) < 0.3
        per, tot = ghmr_loss(deltas, targets, valid, mu=0.02, bins=10, momentum=0.7, state=state)
        diff = (deltas - targets).flatten()
        g = (diff / torch.sqrt(diff**2 + 0.02**2)).abs().tolist()
        asl = (torch.sqrt(diff**2 + 0.02**2) - 0.02).tolist()
        v4 = valid[:, None].expand(50, 4).flatten().tolist()
        ref, _ = official_ghm_loop(g, asl, v4, 10, 0.7, acc, 1e3)
        assert (per.sum() / tot).item() == pytest.approx(ref, rel=1e-6)
    deltas = t([[0.1] * 4], grad=True)
    per, tot = ghmr_loss(
        deltas, t([[float("nan")] * 4]), torch.tensor([False]), momentum=0.7, state=state
    )
    (per.sum() / tot).backward()
    assert per.item() == 0.0 and tot == 1.0 and torch.isfinite(deltas.grad).all()


# ---------------------------------------------------------------- PISA


def official_iou_hlr(ious, gts):
    """mmdetection's two-step ranking for one class: add (n - local rank) to the IoU, sort."""
    n = len(ious)
    key = list(ious)
    for gt in set(gts):
        members = [i for i in range(n) if gts[i] == gt]
        members.sort(key=lambda i: -ious[i])
        for local, i in enumerate(members):
            key[i] += n - local
    order = sorted(range(n), key=lambda i: -key[i])
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def test_iou_hlr_and_isr_p_by_hand():
    ious = t([0.9, 0.6, 0.7, 0.8, 0.5])
    gts = torch.tensor([0, 0, 0, 1, 1])
    # local ranks 0,2,1 | 0,1; HLR: 0.9, 0.8 (rank 0s), 0.7, 0.5 (rank 1s), 0.6
    assert hlr_rank(ious, gts).tolist() == [0, 4, 2, 1, 3]
    loss = t([1.0, 2.0, 3.0, 4.0, 5.0])
    w = isr_p_weights(ious, gts, loss, k=2.0, bias=0.0)
    raw = [1.0, 0.04, 0.36, 0.64, 0.16]  # ((5 - r) / 5) ** 2
    ratio = 15.0 / sum(a * b for a, b in zip(raw, [1, 2, 3, 4, 5], strict=True))
    torch.testing.assert_close(w, t([r * ratio for r in raw]))
    assert (w * loss).sum().item() == pytest.approx(15.0, rel=1e-12)  # positive loss sum kept
    w = isr_p_weights(ious, gts, loss, k=1.0, bias=0.5)  # (0.5 + 0.5 u)
    raw = [1.0, 0.6, 0.8, 0.9, 0.7]
    ratio = 15.0 / sum(a * b for a, b in zip(raw, [1, 2, 3, 4, 5], strict=True))
    torch.testing.assert_close(w, t([r * ratio for r in raw]))
    assert isr_p_weights(t([]), torch.zeros(0, dtype=torch.int64), t([])).numel() == 0


def test_iou_hlr_matches_official_ranking_on_random_groups():
    gen = torch.Generator().manual_seed(2)
    ious = torch.rand(60, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    gts = torch.randint(0, 9, (60,), generator=gen)
    assert hlr_rank(ious, gts).tolist() == official_iou_hlr(ious.tolist(), gts.tolist())


def test_isr_n_by_hand():
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 9], [20, 0, 30, 10], [20, 0, 30, 9.5], [50, 0, 60, 10]])
    scores = t([0.9, 0.8, 0.7, 0.3, 0.02])  # the last is below score_thr 0.05
    assert nms_groups(boxes[:4], scores[:4], iou_thr=0.5).tolist() == [0, 0, 2, 2]
    loss = t([1.0, 2.0, 3.0, 4.0, 5.0])
    pick, w = isr_n_select(scores, boxes, loss, num=3, k=0.5)
    assert pick.tolist() == [0, 2, 1]  # Score-HLR: 0.9, 0.7 (group bests), then 0.8
    raw = [1.0, math.sqrt(0.75), math.sqrt(0.5)]  # ((4 - r) / 4) ** 0.5, m = max(3, 4 valid)
    sel = [1.0, 3.0, 2.0]
    ratio = sum(sel) / sum(a * b for a, b in zip(raw, sel, strict=True))
    torch.testing.assert_close(w, t([r * ratio for r in raw]))
    pick, w = isr_n_select(scores, boxes, loss, num=8, k=1.0)  # too few valid: the low one fills up
    assert pick.tolist() == [0, 2, 1, 3, 4]
    raw = [1.0, 0.8, 0.6, 0.4, 0.4]  # (5 - r) / 5, the fill-up gets the smallest
    sel = [1.0, 3.0, 2.0, 4.0, 5.0]
    ratio = sum(sel) / sum(a * b for a, b in zip(raw, sel, strict=True))
    torch.testing.assert_close(w, t([r * ratio for r in raw]))
    pick, w = isr_n_select(
        t([0.01, 0.02]), boxes[:2], loss[:2], num=1
    )  # nothing valid: random, weight 1
    assert pick.numel() == 1 and w.tolist() == [1.0]


def test_isr_n_with_nothing_to_sample_selects_nothing():
    scores = t([0.9, 0.5, 0.01])
    boxes = t([[0, 0, 10, 20], [1, 0, 11, 20], [50, 0, 60, 20]])
    for num, q in ((0, 3), (5, 0)):  # no room left for negatives; no negative at all
        pick, w = isr_n_select(scores[:q], boxes[:q], -torch.log1p(-scores[:q]), num=num)
        assert pick.numel() == 0 and w.numel() == 0 and pick.dtype == torch.int64


def test_carl_values_and_gradients_by_hand():
    p = t([0.9, 0.4], grad=True)
    b = t([2.0, 1.0], grad=True)
    loss = carl_loss(p, b, k=1.0, bias=0.2, avg_factor=4.0)
    w = [0.2 + 0.8 * 0.9, 0.2 + 0.8 * 0.4]
    sw, swb = sum(w), w[0] * 2 + w[1] * 1
    assert loss.item() == pytest.approx(2 * swb / sw / 4, rel=1e-12)
    loss.backward()
    # L = 2 * sum(w b) / sum(w) / 4: dL/dp_j = 2/4 * 0.8 * (b_j sum(w) - sum(w b)) / sum(w)^2
    torch.testing.assert_close(
        p.grad, t([0.5 * 0.8 * (bj * sw - swb) / sw**2 for bj in (2.0, 1.0)])
    )
    torch.testing.assert_close(b.grad, t([2 * wj / sw / 4 for wj in w]))
    empty = carl_loss(t([], grad=True), t([], grad=True), avg_factor=4.0)
    assert empty.item() == 0.0


# ---------------------------------------------------------------- QFL


def test_qfl_values_and_gradients_by_hand():
    x = t([0.3, -1.2, 2.0], grad=True)
    y = t([0.7, 0.0, 1.0])
    loss = quality_focal_loss(x, y, beta=2.0)
    s = [sig(0.3), sig(-1.2), sig(2.0)]
    bce = [-(0.7 * math.log(s[0]) + 0.3 * math.log(1 - s[0])), -math.log(1 - s[1]), -math.log(s[2])]
    expected = [abs(yi - si) ** 2 * bi for yi, si, bi in zip([0.7, 0.0, 1.0], s, bce, strict=True)]
    torch.testing.assert_close(loss, t(expected))
    loss.sum().backward()
    # d/dx: |y-s|^2 (s - y) + BCE * 2 (s - y) s (1 - s)
    grads = [
        (si - yi) ** 2 * (si - yi) + bi * 2 * (si - yi) * si * (1 - si)
        for yi, si, bi in zip([0.7, 0.0, 1.0], s, bce, strict=True)
    ]
    torch.testing.assert_close(x.grad, t(grads))


def test_quality_targets_iou_positive_zero_negative():
    pred = t([[0, 0, 10, 10], [0, 0, 10, 10], [5, 0, 15, 10]], grad=True)
    gt = t([[0, 0, 10, 20], [0, 0, 10, 10], [0, 0, 10, 10]])
    q = quality_targets(pred, gt, torch.tensor([True, False, True]))
    torch.testing.assert_close(q, t([0.5, 0.0, 50 / 150]))
    assert not q.requires_grad


# ---------------------------------------------------------------- OHEM


def test_ohem_row_loss_by_hand():
    logits = t([[0.0, 1.0], [2.0, -1.0], [0.0, 0.0]])
    deltas = t([[0.05, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0] * 4])
    targets = t([[0.0] * 4, [0.0] * 4, [0.0] * 4])
    labels = torch.tensor([1, 0, -1])
    loss = ohem_row_loss(logits, deltas, labels, targets)
    ce0 = math.log(1 + math.exp(-1.0))
    # the authors' smooth L1 (sigma 1 = beta 1): |d| < 1: 0.5 d^2, so 0.00125 + 0.125
    sl1 = 0.5 * 0.05**2 + 0.5 * 0.5**2
    assert loss[0].item() == pytest.approx(ce0 + sl1, rel=1e-12)
    # torchvision's beta 1/9 as an option: 0.5 d^2 / beta below beta, |d| - beta / 2 above
    old = ohem_row_loss(logits, deltas, labels, targets, beta=1 / 9)
    assert old[0].item() == pytest.approx(ce0 + 0.5 * 0.05**2 * 9 + (0.5 - 0.5 / 9), rel=1e-12)
    # the minimal input: a positive with a 0.5 delta error scores 0.125 (not 0.444)
    one = ohem_row_loss(t([[0.0, 50.0]]), t([[0.5, 0, 0, 0]]), torch.tensor([1]), t([[0.0] * 4]))
    assert one.item() == pytest.approx(0.125 + math.log1p(math.exp(-50.0)), abs=1e-12)
    assert loss[1].item() == pytest.approx(math.log(1 + math.exp(-3.0)), rel=1e-12)  # no box term
    assert loss[2].item() == float("-inf")
    assert ohem_row_loss(logits, deltas, labels, targets, with_box=False)[
        0
    ].item() == pytest.approx(ce0)


def brute_force_ohem(loss, boxes, labels, num, thr):
    """The authors' loop (minibatch.py): greedy NMS per label, then the num hardest kept."""
    from pedcrowd.box_torch import box_iou

    iou = box_iou(boxes, boxes).tolist()
    kept = []
    for label in sorted({x for x in labels if x >= 0}):
        order = sorted((i for i in range(len(loss)) if labels[i] == label), key=lambda i: -loss[i])
        mine = []
        for i in order:
            if all(iou[i][j] <= thr for j in mine):
                mine.append(i)
        kept += mine
    return sorted(sorted(kept, key=lambda i: -loss[i])[:num])


def test_ohem_select_hardest_after_dedup_ignored_never_hard():
    boxes = t([[0, 0, 10, 20], [0, 0, 10, 19], [30, 0, 40, 20], [60, 0, 70, 20], [90, 0, 99, 20]])
    loss = t([3.0, 2.9, 1.0, 2.0, 9.0])
    labels = torch.tensor([1, 0, 0, 0, -1])  # the hardest row is ignored
    # row 1 (background) overlaps row 0 (a positive) by IoU 0.95 but has another label:
    # the authors' per-label NMS keeps it (one NMS over all labels would drop it for row 3)
    mask = ohem_select(loss, boxes, labels, num=2, nms_thresh=0.7)
    assert torch.nonzero(mask).flatten().tolist() == [0, 1]
    same = torch.tensor([0, 0, 0, 0, -1])  # same label: row 1 duplicates row 0
    mask = ohem_select(loss, boxes, same, num=2, nms_thresh=0.7)
    assert torch.nonzero(mask).flatten().tolist() == [0, 3]
    mask = ohem_select(loss, boxes, same, num=2, nms_thresh=1.0)  # NMS off
    assert torch.nonzero(mask).flatten().tolist() == [0, 1]
    assert ohem_select(loss, boxes, torch.full((5,), -1), num=2).sum() == 0
    gen = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 100
    wh = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 30 + 5
    boxes = torch.cat([xy, xy + wh], dim=1)
    loss = torch.rand(300, generator=gen, dtype=torch.float64)
    labels = torch.randint(-1, 2, (300,), generator=gen)
    mask = ohem_select(loss, boxes, labels, num=40, nms_thresh=0.7)
    assert torch.nonzero(mask).flatten().tolist() == brute_force_ohem(
        loss.tolist(), boxes, labels.tolist(), 40, 0.7
    )
