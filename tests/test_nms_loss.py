"""NMS-Loss: hand-built scenes per rule, edge cases, options, and equality with
the plain greedy loop (pedcrowd/reference/greedy_nms_loss.py) on random crowded scenes."""

from __future__ import annotations

import math

import pytest
import torch

from pedcrowd.losses.nms_loss import nms_loss
from pedcrowd.reference.greedy_nms_loss import greedy_nms_loss

EPS = 1e-6  # the per-image normalisation: sum / (count + 1e-6)


def t(rows, dtype=torch.float64, grad=False):
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def idx(values):
    return torch.tensor(values, dtype=torch.int64)


def test_one_duplicate_gives_one_pull():
    # Person 0 has two predictions with IoU 40/100 = 0.4 <= 0.5: NMS keeps both, the
    # second is an FP pulled towards the first. Person 1 is far away.
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 4], [50, 50, 60, 60]], grad=True)
    scores = t([0.9, 0.8, 0.7], grad=True)
    gts = t([[0, 0, 10, 10], [50, 50, 60, 60]])
    pull, push = nms_loss(boxes, scores, idx([0, 0, 1]), gts, add_gt=False)
    assert pull.item() == pytest.approx(-math.log(1 - 0.5 + 0.4) * 0.8 / (1 + EPS), rel=1e-12)
    assert push.item() == 0.0
    pull.backward()
    # Gradient only into the lower-scored box; the reference and both scores are stopped.
    assert boxes.grad[0].abs().sum() == 0 and boxes.grad[2].abs().sum() == 0
    # d/dy2 of -ln(0.5 + IoU) * 0.8 with IoU = 10*y2/100: -(0.8 / 0.9) * 0.1
    assert boxes.grad[1, 3].item() == pytest.approx(-0.8 / 0.9 * 0.1 / (1 + EPS), rel=1e-9)
    assert scores.grad.abs().sum() == 0


def test_pull_grad_max_moves_b_max_not_the_duplicate():
    # The official Caltech NMSLoss: the duplicate's row of the IoU is detached.
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 4], [50, 50, 60, 60]], grad=True)
    scores = t([0.9, 0.8, 0.7], grad=True)
    gts = t([[0, 0, 10, 10], [50, 50, 60, 60]])
    pull, _ = nms_loss(boxes, scores, idx([0, 0, 1]), gts, add_gt=False, pull_grad="max")
    assert pull.item() == pytest.approx(-math.log(1 - 0.5 + 0.4) * 0.8 / (1 + EPS), rel=1e-12)
    pull.backward()
    assert boxes.grad[1].abs().sum() == 0  # the duplicate's box gets no gradient
    # b_max [0,0,10,10] vs the fixed duplicate [0,0,10,4]: IoU = 40 / (100 w h / 100 ...);
    # d IoU / d y2 of b_max at y2 = 10: inter 40 fixed, union = 10 * y2 -> -40 / 100^2 * 10
    d_iou = -40.0 / 100.0**2 * 10.0
    assert boxes.grad[0, 3].item() == pytest.approx(-0.8 / 0.9 * d_iou / (1 + EPS), rel=1e-9)
    # with add_gt the GT becomes b_max: no box gradient at all, as in the official code
    boxes.grad = None
    pull, _ = nms_loss(boxes, scores, idx([0, 0, 1]), gts, add_gt=True, pull_grad="max")
    assert pull.item() > 0
    pull.backward()
    assert boxes.grad.abs().sum() == 0


def test_pull_options():
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 4]], grad=True)
    scores = t([0.9, 0.8], grad=True)
    gts = t([[0, 0, 10, 10]])
    pull, _ = nms_loss(boxes, scores, idx([0, 0]), gts, add_gt=False, pull_relax=False)
    assert pull.item() == pytest.approx(-math.log(0.4) * 0.8 / (1 + EPS), rel=1e-12)
    pull, _ = nms_loss(boxes, scores, idx([0, 0]), gts, add_gt=False, detach_pull_score=False)
    pull.backward()
    # A live pull score: d pull / d s_FP = -ln(0.9), and the kept box's score gets nothing.
    assert scores.grad[1].item() == pytest.approx(-math.log(0.9) / (1 + EPS), rel=1e-12)
    assert scores.grad[0].item() == 0.0


def test_two_people_wrongly_merged_give_one_push():
    # GT IoU = 40/360 = 0.11; predicted IoU = 160/240 = 2/3 > 0.5: person 1's box is
    # suppressed by person 0's, and the predictions overlap more than their GTs.
    gts = t([[0, 0, 10, 20], [8, 0, 18, 20]])
    boxes = t([[0, 0, 10, 20], [2, 0, 12, 20]], grad=True)
    scores = t([0.9, 0.6], grad=True)
    pull, push = nms_loss(boxes, scores, idx([0, 1]), gts, add_gt=False)
    assert pull.item() == 0.0
    assert push.item() == pytest.approx(-math.log(1 - 2 / 3) * 0.6 / (1 + EPS), rel=1e-12)
    push.backward()
    assert boxes.grad[0].abs().sum() == 0  # the suppressor is the stopped reference
    assert boxes.grad[1].abs().sum() > 0
    assert scores.grad.abs().sum() == 0  # sg[s_i]
    # Moving the suppressed box right lowers the overlap, hence the loss.
    assert boxes.grad[1, 0].item() < 0 and boxes.grad[1, 2].item() < 0

    _, push = nms_loss(boxes, scores, idx([0, 1]), gts, add_gt=False, push_relax=True)
    assert push.item() == pytest.approx(-math.log(1 + 0.5 - 2 / 3) * 0.6 / (1 + EPS), rel=1e-12)


def test_crowd_rule_blocks_push():
    boxes = t([[0, 0, 10, 20], [2, 0, 12, 20]])  # predicted IoU 2/3, suppressed
    scores = t([0.9, 0.6])
    gt_close = t([[0, 0, 10, 20], [1, 0, 11, 20]])  # GT IoU 9/11 = 0.82 >= 2/3: no push
    pull, push = nms_loss(boxes, scores, idx([0, 1]), gt_close, add_gt=False)
    assert (pull.item(), push.item()) == (0.0, 0.0)
    gt_apart = t([[0, 0, 10, 20], [3, 0, 13, 20]])  # GT IoU 7/13 = 0.54 < 2/3: push
    _, push = nms_loss(boxes, scores, idx([0, 1]), gt_apart, add_gt=False)
    assert push.item() == pytest.approx(math.log(3) * 0.6 / (1 + EPS), rel=1e-12)


def test_push_is_mean_per_suppressor_over_pair_count():
    # One suppressor removes the boxes of two other persons whose GTs lie apart.
    gts = t([[0, 0, 10, 20], [30, 0, 40, 20], [60, 0, 70, 20]])
    boxes = t([[0, 0, 10, 20], [2, 0, 12, 20], [0, 0, 10, 16]])
    scores = t([0.9, 0.6, 0.5])
    _, push = nms_loss(boxes, scores, idx([0, 1, 2]), gts, add_gt=False)
    # IoU(b0, b1) = 2/3, IoU(b0, b2) = 160/200 = 0.8; both removed by b0, GTs disjoint.
    mean = (0.6 * math.log(3) + 0.5 * -math.log(0.2)) / 2
    assert push.item() == pytest.approx(mean / (2 + EPS), rel=1e-12)


def test_add_gt_makes_the_gt_the_reference():
    # Two predictions of one person, each IoU 0.4 with the GT and 0 with each other.
    gts = t([[0, 0, 10, 10]])
    boxes = t([[0, 0, 10, 4], [0, 6, 10, 10]], grad=True)
    scores = t([0.9, 0.8])
    pull, _ = nms_loss(boxes, scores, idx([0, 0]), gts, add_gt=False)
    # Without GT the first prediction is b_max; IoU 0 is clamped to 1e-6.
    assert pull.item() == pytest.approx(-math.log(0.5 + 1e-6) * 0.8 / (1 + EPS), rel=1e-12)
    pull, _ = nms_loss(boxes, scores, idx([0, 0]), gts, add_gt=True)
    # The GT (score 1.0) comes first: both predictions are FPs pulled towards it.
    expected = (-math.log(0.9) * 0.9 - math.log(0.9) * 0.8) / (2 + EPS)
    assert pull.item() == pytest.approx(expected, rel=1e-12)
    pull.backward()
    assert boxes.grad[0].abs().sum() > 0 and boxes.grad[1].abs().sum() > 0


def test_ties_take_index_order_and_predictions_before_gts():
    gts = t([[0, 0, 10, 10]])
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 4]], grad=True)
    nms_loss(boxes, t([0.7, 0.7]), idx([0, 0]), gts, add_gt=False)[0].backward()
    assert boxes.grad[0].abs().sum() == 0 and boxes.grad[1].abs().sum() > 0  # box 0 is b_max
    # Swapped, the smaller box comes first and becomes b_max: the other one is pulled.
    swapped = boxes.detach().flip(0).requires_grad_()
    nms_loss(swapped, t([0.7, 0.7]), idx([0, 0]), gts, add_gt=False)[0].backward()
    assert swapped.grad[0].abs().sum() == 0 and swapped.grad[1].abs().sum() > 0
    # y2 of the pulled 10x10 box: IoU = 40 / (10 * y2), so growing it lowers IoU.
    assert swapped.grad[1, 3].item() > 0

    # A prediction scoring 1.0 ties with the appended GT and goes first: it becomes
    # b_max and the GT the (gradient-free) duplicate.
    boxes = t([[0, 0, 10, 4], [40, 0, 50, 4]], grad=True)
    gts = t([[0, 0, 10, 10], [40, 0, 50, 10]])
    pull, _ = nms_loss(boxes, t([1.0, 0.3]), idx([0, 1]), gts, add_gt=True)
    # Person 0: GT pulled to the prediction (no gradient); person 1: prediction pulled to GT.
    expected = (-math.log(0.9) * 1.0 - math.log(0.9) * 0.3) / (2 + EPS)
    assert pull.item() == pytest.approx(expected, rel=1e-12)
    pull.backward()
    assert boxes.grad[0].abs().sum() == 0 and boxes.grad[1].abs().sum() > 0


@pytest.mark.parametrize(("num_pred", "num_gt"), [(0, 0), (0, 1), (0, 3), (1, 1), (1, 3)])
def test_at_most_one_positive_gives_zero_and_backward_works(num_pred, num_gt):
    boxes = t([[0, 0, 10, 10]] * num_pred).reshape(-1, 4).requires_grad_()
    scores = t([0.9] * num_pred).requires_grad_()
    gts = t([[0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]][:num_gt]).reshape(-1, 4)
    pull, push = nms_loss(boxes, scores, idx([0] * num_pred), gts)
    assert (pull.item(), push.item()) == (0.0, 0.0)
    (pull + push).backward()
    assert boxes.grad is not None and boxes.grad.abs().sum() == 0
    assert scores.grad is not None


def test_iou_one_push_stays_finite():
    # Two persons' predictions collapsed onto the same box: -ln(1 - IoU) is clamped.
    gts = t([[0, 0, 10, 20], [9, 0, 19, 20]])
    boxes = t([[0, 0, 10, 20], [0, 0, 10, 20]], grad=True)
    pull, push = nms_loss(boxes, t([0.9, 0.8]), idx([0, 1]), gts, add_gt=False)
    assert push.item() == pytest.approx(-math.log(1e-6) * 0.8 / (1 + EPS), rel=1e-6)
    push.backward()
    assert torch.isfinite(boxes.grad).all()


def crowded_scene(seed: int, n: int, g: int, dtype=torch.float64, ties: bool = False):
    """Random crowd: g overlapping people, n jittered predictions assigned to them."""
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(g, 2, generator=gen, dtype=dtype) * 60
    size = 20 + torch.rand(g, 2, generator=gen, dtype=dtype) * torch.tensor([20, 40], dtype=dtype)
    gts = torch.cat([corner, corner + size], 1)
    gt_index = torch.randint(0, g, (n,), generator=gen)
    boxes = gts[gt_index] + torch.randn(n, 4, generator=gen, dtype=dtype) * 5
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)], 1)
    scores = torch.rand(n, generator=gen, dtype=dtype)
    if ties:  # a handful of distinct values, and some predictions at 1.0 tying with the GTs
        scores = (scores * 4).round() / 4
    return boxes, scores, gt_index, gts


OPTION_SETS = [
    {},
    {"add_gt": False},
    {"pull_relax": False, "push_relax": True, "detach_pull_score": False},
    {"nms_thresh": 0.7},
    {"pull_grad": "max", "add_gt": False},
    {"pull_grad": "max", "detach_pull_score": False},  # the official Caltech setting
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_equals_greedy_reference_on_random_crowds(options):
    num_pushes = 0
    for seed in range(30):
        boxes, scores, gt_index, gts = crowded_scene(seed, n=25, g=6, ties=seed % 2 == 0)
        results = []
        for fn in (nms_loss, greedy_nms_loss):
            b = boxes.clone().requires_grad_()
            s = scores.clone().requires_grad_()
            pull, push = fn(b, s, gt_index, gts, **options)
            (pull + 0.37 * push).backward()
            results.append((pull, push, b.grad, s.grad))
        (pull, push, b_grad, s_grad), (ref_pull, ref_push, ref_b_grad, ref_s_grad) = results
        torch.testing.assert_close(pull, ref_pull, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(push, ref_push, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b_grad, ref_b_grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(s_grad, ref_s_grad, rtol=1e-10, atol=1e-12)
        num_pushes += push.item() > 0
    assert num_pushes > 8  # the scenes do exercise the push rule


def test_equals_greedy_reference_in_float32():
    for seed in range(20):
        boxes, scores, gt_index, gts = crowded_scene(seed, n=40, g=8, dtype=torch.float32)
        got = nms_loss(boxes, scores, gt_index, gts)
        ref = greedy_nms_loss(boxes, scores, gt_index, gts)
        torch.testing.assert_close(torch.stack(got), torch.stack(ref))


def test_gradcheck_where_no_stop_gradient_applies():
    # The stop-gradients make a finite-difference check fail by design wherever a
    # prediction is a reference; here every reference is a GT (add_gt) and the pull
    # score is live, so the whole function is differentiable as written.
    gts = t([[0, 0, 10, 10], [30, 0, 42, 20]])
    boxes = t([[0.5, 0.2, 9.1, 4.3], [0.3, 5.6, 9.6, 9.8], [31.0, 1.0, 41.0, 8.2]])
    scores = t([0.9, 0.8, 0.6])

    def fn(b, s):
        return nms_loss(b, s, idx([0, 0, 1]), gts, detach_pull_score=False)[0]

    assert fn(boxes, scores).item() > 0
    assert torch.autograd.gradcheck(
        fn, (boxes.clone().requires_grad_(), scores.clone().requires_grad_())
    )
