"""Dual Weighting: golden weights on hand-built cases and the loss against a plain loop."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxLinearCoder

from pedcrowd.losses.dw import (
    center_prior,
    combine_negative,
    dw_image_terms,
    dw_loss,
    negative_iou_weights,
    positive_weights,
)

E = math.e


def test_positive_weights_sum_and_ratio_golden():
    # GT 0: two candidates with p = 0.5, prior 1 -> each e^{2.5} 0.5 / (2 e^{1.5} 0.5) = e / 2
    # GT 1: p = 0.5 and 0.25 (prior 1 and 0.5): ratio e^{2.5} 0.5 / (e^{1.25} 0.25 0.5) = 4 e^{1.25}
    p = torch.tensor([0.5, 0.5, 0.5, 0.25], dtype=torch.float64)
    prior = torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    gt = torch.tensor([0, 0, 1, 1])
    w = positive_weights(p, prior, gt, 2)
    assert w[0].item() == pytest.approx(E / 2, rel=1e-12)
    assert w[:2].sum().item() == pytest.approx(E, rel=1e-12)  # sum e^{5p} / sum e^{3p} = e^{2p}
    assert (w[2] / w[3]).item() == pytest.approx(4 * math.exp(1.25), rel=1e-12)
    den = math.exp(1.5) * 0.5 + math.exp(0.75) * 0.25 * 0.5
    assert w[3].item() == pytest.approx(math.exp(1.25) * 0.25 * 0.5 / den, rel=1e-12)
    # the 5 over 3: the weights of a GT sum to more than 1 when its candidates score well
    assert w[2:].sum().item() > 1


def test_negative_weights_at_iou_04_05_075_095():
    ious = torch.tensor([0.4, 0.5, 0.75, 0.95], dtype=torch.float64)
    y = negative_iou_weights(ious, torch.zeros(4, dtype=torch.int64), 1)
    # t(x) = (1 - x^2) / 0.75: t(0.75) = 0.58333, t(0.95) = 0.13; min-max over [0.13, min(1, 1.12)]
    assert y[0].item() == 1.0  # below 0.5: surely a negative
    assert y[1].item() == pytest.approx(1.0, abs=1e-12)  # t(0.5) = 1 = the upper end
    assert y[2].item() == pytest.approx((0.4375 / 0.75 - 0.13) / 0.87, rel=1e-9)  # 0.521073
    assert y[2].item() == pytest.approx(0.521073, abs=1e-6)
    assert y[3].item() == pytest.approx(0.0, abs=1e-9)  # the best box of its GT
    # a GT whose candidates are all above 0.5: the upper end is its own max t, not 1
    y2 = negative_iou_weights(torch.tensor([0.6, 0.8, 0.7], dtype=torch.float64),
                              torch.zeros(3, dtype=torch.int64), 1)
    t = [(1 - x * x) / 0.75 for x in (0.6, 0.8, 0.7)]
    expect = [(v - min(t)) / (max(t) - min(t)) for v in t]
    assert y2.tolist() == pytest.approx(expect, abs=1e-9)


def test_negative_weights_of_a_location_in_two_gts():
    # location 0 is in GT 0 (P_neg 0.2) and GT 1 (P_neg 0.9); location 1 in GT 0 only; 2 in none
    w = torch.tensor([0.2, 0.9, 0.5], dtype=torch.float64)
    point, gt = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    assert combine_negative(w, point, gt, 3, "min").tolist() == [0.2, 0.5, 1.0]
    assert combine_negative(w, point, gt, 3, "last").tolist() == [0.9, 0.5, 1.0]


def test_center_prior_values():
    # stride 8, sigma 1.11; GT centred at (40, 40)
    gt = torch.tensor([[20.0, 10.0, 60.0, 70.0]])
    points = torch.tensor([[40.0, 40.0], [48.0, 40.0], [48.0, 48.0], [40.0, 24.0], [70.0, 40.0]])
    strides = torch.tensor([8.0, 8.0, 8.0, 16.0, 8.0])
    prior = center_prior(points, strides, gt, sigma=1.11)[:, 0]
    s2 = 2 * 1.11**2
    expect = [1.0, math.exp(-1 / s2), math.exp(-2 / s2), math.exp(-1 / s2), 0.0]  # last: outside
    assert prior.tolist() == pytest.approx(expect, abs=1e-6)
    assert expect[1] == pytest.approx(0.666436, abs=1e-6)  # exp(-1 / 2.4642)


def _giou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    iou = inter / union
    return iou, iou - (hull - union) / hull


def _reference_terms(cls, ctr, boxes, anchors, gts, ignore, sigma, how):
    """The official per-image sums, one location and one GT at a time."""
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    n = len(cls)
    s = [sig(cls[i]) * sig(ctr[i]) for i in range(n)]
    pairs = []  # (i, g, prior, giou_loss, iou)
    for g, (x1, y1, x2, y2) in enumerate(gts):
        for i, (a0, a1, a2, a3) in enumerate(anchors):
            px, py, st = (a0 + a2) / 2, (a1 + a3) / 2, a2 - a0
            if min(px - x1, py - y1, x2 - px, y2 - py) <= 0:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            prior = math.exp(-(((px - cx) / st) ** 2 + ((py - cy) / st) ** 2) / (2 * sigma**2))
            iou, giou = _giou(boxes[i], gts[g])
            pairs.append((i, g, prior, 1 - giou, iou))
    cls_pos = loc = 0.0
    p_neg = [1.0] * n
    chosen: dict[int, list[tuple[int, float]]] = {}
    for g in range(len(gts)):
        mine = [q for q in pairs if q[1] == g]
        if not mine:
            continue
        p = {q[0]: s[q[0]] * math.exp(-5 * q[3]) for q in mine}
        den = sum(math.exp(3 * p[q[0]]) * p[q[0]] * q[2] for q in mine)
        t = {q[0]: (1 - q[4] ** 2) / 0.75 for q in mine}
        t1, t2 = min(t.values()), min(1.0, max(t.values()))
        for i, _, prior, loss, iou in mine:
            w = math.exp(5 * p[i]) * p[i] * prior / max(den, 1e-12)
            cls_pos += -math.log(s[i]) * w * 0.25
            loc += 5 * loss * w * 0.25
            y = 1.0 if iou < 0.5 else (t[i] - t1 + 1e-12) / (t2 - t1 + 1e-12)
            chosen.setdefault(i, []).append((g, y))
    for i, ys in chosen.items():
        p_neg[i] = min(y for _, y in ys) if how == "min" else max(ys)[1]
    keep = [i in chosen or not ignore[i] for i in range(n)]
    neg = sum(p_neg[i] * s[i] ** 2 * -math.log(1 - s[i]) for i in range(n) if keep[i])
    norm = sum(1 - p_neg[i] for i in range(n) if keep[i])
    return cls_pos, loc, neg, norm


# two overlapping GTs, eight locations (stride-8 and stride-16 anchors), one ignore region
GTS = [[10.0, 4.0, 30.0, 60.0], [22.0, 8.0, 42.0, 64.0]]
ANCHORS = [
    [c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2]
    for c, s in [((16, 24), 8), ((24, 32), 8), ((32, 40), 8), ((24, 56), 8), ((8, 8), 8),
                 ((56, 24), 8), ((24, 32), 16), ((60, 60), 16)]
]
PRED = [[12.0, 6.0, 31.0, 58.0], [18.0, 5.0, 36.0, 62.0], [21.0, 9.0, 41.0, 66.0],
        [11.0, 20.0, 29.0, 59.0], [0.0, 0.0, 16.0, 16.0], [50.0, 10.0, 62.0, 40.0],
        [15.0, 2.0, 40.0, 62.0], [50.0, 50.0, 70.0, 70.0]]
CLS = [1.5, 0.3, 2.0, -1.0, -3.0, 0.5, 0.8, 1.0]
CTR = [0.5, 1.0, -0.5, 0.2, 0.0, -1.0, 0.3, 2.0]
IGNORE = [False, False, False, False, False, True, False, True]


@pytest.mark.parametrize("how", ["min", "last"])
def test_dw_image_terms_equal_a_plain_loop(how):
    f = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = dw_image_terms(f(CLS), f(CTR), f(PRED), f(ANCHORS), f(GTS), torch.tensor(IGNORE),
                         prior_sigma=1.11, neg_overlap=how)
    ref = _reference_terms(CLS, CTR, PRED, ANCHORS, GTS, IGNORE, 1.11, how)
    assert [float(v) for v in got] == pytest.approx(ref, rel=1e-9)
    assert ref[0] > 0 and ref[2] > 0 and ref[3] > 0


def test_dw_loss_normalises_by_gts_and_negative_mass():
    coder = BoxLinearCoder(normalize_by_size=True)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    pred = torch.tensor(PRED, dtype=torch.float64)
    reg = coder.encode(anchors, pred)  # the l, t, r, b that decode to PRED
    outputs = {
        "cls_logits": torch.tensor(CLS, dtype=torch.float64)[None, :, None].requires_grad_(),
        "bbox_ctrness": torch.tensor(CTR, dtype=torch.float64)[None, :, None],
        "bbox_regression": reg[None],
    }
    targets = [{"boxes": torch.tensor(GTS, dtype=torch.float64),
                "ignore_boxes": torch.tensor([[48.0, 0.0, 80.0, 80.0]], dtype=torch.float64)}]
    losses = dw_loss(outputs, [anchors], targets, coder)
    cls_pos, loc, neg, norm = _reference_terms(CLS, CTR, PRED, ANCHORS, GTS, IGNORE, 1.11, "min")
    assert losses["loss_cls_pos"].item() == pytest.approx(cls_pos / 2, rel=1e-9)
    assert losses["loss_loc"].item() == pytest.approx(loc / 2, rel=1e-9)
    assert losses["loss_cls_neg"].item() == pytest.approx(neg / max(norm, 1), rel=1e-9)
    sum(losses.values()).backward()
    assert outputs["cls_logits"].grad.abs().sum() > 0


def test_dw_loss_of_an_image_without_gts_is_all_negative():
    coder = BoxLinearCoder(normalize_by_size=True)
    anchors = torch.tensor(ANCHORS)
    outputs = {"cls_logits": torch.zeros(1, 8, 1), "bbox_ctrness": torch.zeros(1, 8, 1),
               "bbox_regression": torch.ones(1, 8, 4)}
    losses = dw_loss(outputs, [anchors], [{"boxes": torch.zeros(0, 4)}], coder)
    assert losses["loss_cls_pos"].item() == 0 and losses["loss_loc"].item() == 0
    # every P_neg is 1, normaliser clamped to 1: 8 x 0.25^2 x -log(0.75)
    assert losses["loss_cls_neg"].item() == pytest.approx(8 * 0.0625 * -math.log(0.75), rel=1e-6)
