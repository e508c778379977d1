"""Repulsion Loss: hand-computed RepGT / RepBox values, Smooth_ln branches, edge
cases and float64 gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from pedcrowd.losses.repulsion import repulsion_loss, smooth_ln


def t(rows, grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def idx(values):
    return torch.tensor(values, dtype=torch.int64)


def test_smooth_ln_branches_values_and_gradients():
    x = t([0.0, 0.3, 0.5, 0.7], grad=True)
    y = smooth_ln(x, 0.5)
    expected = [0.0, -math.log(0.7), -math.log(0.5), (0.7 - 0.5) / 0.5 - math.log(0.5)]
    torch.testing.assert_close(y, t(expected))
    y.sum().backward()
    # -ln(1 - x)' = 1 / (1 - x); the linear branch has slope 1 / (1 - sigma) = 2.
    torch.testing.assert_close(x.grad, t([1.0, 1 / 0.7, 2.0, 2.0]))

    x = t([0.0, 0.4], grad=True)
    y = smooth_ln(x, 0.0)  # sigma 0: linear, Smooth_ln(x) = x
    torch.testing.assert_close(y, t([0.0, 0.4]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, t([1.0, 1.0]))

    x = t([0.5, 1.0], grad=True)
    y = smooth_ln(x, 1.0)  # sigma 1: only -ln(1 - x), clamped so x = 1 stays finite
    torch.testing.assert_close(y, t([math.log(2), -math.log(1e-6)]))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].item() == pytest.approx(2.0)


def test_rep_gt_hand_values():
    gts = t([[0, 0, 10, 10], [5, 0, 15, 10], [40, 40, 50, 50]])
    # Proposal 0 (of GT 0) overlaps GT 1 (IoU 1/3): the target. Its box covers 70 of
    # GT 1's 100 px: IoG 0.7. Proposal 1 (of GT 2) overlaps no other GT: term 0, but it
    # still counts among the positives.
    proposals = t([[0, 0, 10, 10], [40, 40, 50, 50]])
    boxes = t([[2, 0, 12, 10], [40, 40, 50, 50]], grad=True)
    rep_gt, _ = repulsion_loss(boxes, proposals, idx([0, 2]), gts)
    assert rep_gt.item() == pytest.approx(-math.log(1 - 0.7) / 2, rel=1e-12)
    rep_gt.backward()
    # d/dx2 of -ln(1 - (x2 - 5) / 10) / 2 at x2 = 12: (1 / 0.3) * 0.1 / 2
    assert boxes.grad[0, 2].item() == pytest.approx(0.1 / 0.3 / 2, rel=1e-9)
    assert boxes.grad[1].abs().sum() == 0

    rep_gt, _ = repulsion_loss(boxes, proposals, idx([0, 2]), gts, sigma_gt=0.5)
    assert rep_gt.item() == pytest.approx(((0.7 - 0.5) / 0.5 - math.log(0.5)) / 2, rel=1e-12)


def test_rep_gt_target_is_chosen_by_the_proposal_among_all_gts():
    # The regressed box overlaps GT 2 more, but the proposal overlaps GT 1 more (IoU 1/3
    # against 1/19): the target is GT 1, whose IoG with the box is 20/100.
    gts = t([[0, 0, 10, 10], [5, 0, 15, 10], [-9, 0, 1, 10]])
    proposals = t([[0, 0, 10, 10]])
    boxes = t([[-5, 0, 7, 10]])
    rep_gt, rep_box = repulsion_loss(boxes, proposals, idx([0]), gts)
    assert rep_gt.item() == pytest.approx(-math.log(1 - 0.2), rel=1e-12)
    assert rep_box.item() == 0.0


def test_rep_box_hand_values():
    # Boxes 0 and 3 belong to person 0, boxes 1 and 2 to person 1. Pairs of different
    # persons: (0,1) and (3,1) overlap with IoU 1/3; (0,2), (3,2) do not. Boxes 0 and 3
    # coincide but share their target, so they are no pair.
    boxes = t([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 110, 110], [0, 0, 10, 10]], grad=True)
    gts = t([[0, 0, 10, 10], [5, 0, 15, 10]])
    gt_index = idx([0, 1, 1, 0])
    _, rep_box = repulsion_loss(boxes, boxes.detach(), gt_index, gts)
    # sigma 0: Smooth_ln(IoU) = IoU; 4 ordered overlapping pairs of 1/3, over 4 pairs.
    assert rep_box.item() == pytest.approx((4 / 3) / (4 + 1e-6), rel=1e-12)
    _, rep_box = repulsion_loss(boxes, boxes.detach(), gt_index, gts, sigma_box=0.5)
    assert rep_box.item() == pytest.approx(-4 * math.log(2 / 3) / (4 + 1e-6), rel=1e-12)
    rep_box.backward()
    assert boxes.grad[2].abs().sum() == 0  # overlaps nobody
    assert boxes.grad[1, 0].item() < 0  # moving box 1 right separates it


def test_no_positives_and_lonely_positive_give_zero_with_gradients():
    boxes = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    rep_gt, rep_box = repulsion_loss(boxes, boxes.detach(), idx([]), t([[0, 0, 10, 10]]))
    assert (rep_gt.item(), rep_box.item()) == (0.0, 0.0)
    (rep_gt + rep_box).backward()
    assert boxes.grad is not None

    boxes = t([[0, 0, 10, 10]], grad=True)  # one positive, one GT: nothing to repel from
    rep_gt, rep_box = repulsion_loss(boxes, boxes.detach(), idx([0]), t([[0, 0, 10, 10]]))
    assert (rep_gt.item(), rep_box.item()) == (0.0, 0.0)
    (rep_gt + rep_box).backward()
    assert boxes.grad.abs().sum() == 0


def test_iog_one_stays_finite():
    gts = t([[0, 0, 10, 10], [5, 0, 15, 10]])
    boxes = t([[5, 0, 15, 10]], grad=True)  # covers all of the other GT
    rep_gt, _ = repulsion_loss(boxes, t([[0, 0, 10, 10]]), idx([0]), gts)
    assert rep_gt.item() == pytest.approx(-math.log(1e-6), rel=1e-9)
    rep_gt.backward()
    assert torch.isfinite(boxes.grad).all()


@pytest.mark.parametrize("sigmas", [(1.0, 0.0), (0.5, 0.3)])
def test_gradcheck(sigmas):
    sigma_gt, sigma_box = sigmas
    gen = torch.Generator().manual_seed(0)
    gts = t([[0, 0, 10, 20], [6, 1, 17, 22], [13, -1, 23, 19]])
    gt_index = idx([0, 0, 1, 1, 2, 2])
    proposals = gts[gt_index] + torch.rand(6, 4, generator=gen, dtype=torch.float64)
    boxes = gts[gt_index] + 2 * torch.rand(6, 4, generator=gen, dtype=torch.float64) - 1

    def fn(b):
        return repulsion_loss(b, proposals, gt_index, gts, sigma_gt=sigma_gt, sigma_box=sigma_box)

    rep_gt, rep_box = fn(boxes)
    assert rep_gt.item() > 0 and rep_box.item() > 0
    assert torch.autograd.gradcheck(fn, (boxes.clone().requires_grad_(),))
