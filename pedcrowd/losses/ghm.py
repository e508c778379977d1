"""Gradient Harmonized Single-stage Detector (Li, Liu and Wang, AAAI 2019).

GHM weights each sample by the inverse density of its gradient norm ``g``:
the unit interval is cut into ``bins`` equal regions, a region's density is
the number of valid samples whose ``g`` falls in it (an exponential moving
average over steps with ``momentum`` > 0), and a sample in region j gets
``w = tot / (GD_j * n)`` with ``tot`` the number of valid samples and ``n`` the
number of non-empty regions. The loss is ``sum(w * l) / tot``.

* GHM-C: ``g = |sigmoid(x) - y|``, ``l`` = binary cross-entropy; official
  defaults (GHMDetection's RetinaNet config) bins 30, momentum 0.75. The
  last region includes g = 1 (edge 1 + 1e-6, as official).
* GHM-R: Authentic Smooth L1 ``ASL1(d) = sqrt(d^2 + mu^2) - mu`` of
  ``d = delta - target``, ``g = |d| / sqrt(d^2 + mu^2)`` per coordinate;
  mu 0.02, bins 10, momentum 0.7, loss weight 10; the last edge is 1e3 (as
  official). The official RetinaNet config (libuyu/GHM_Detection,
  ``experiments/cfg_retinanet_ghm_r50_fpn_1x.py:29-42``) regresses raw deltas
  (``target_stds`` 1) with ``loss_weight=10.0``; torchvision's RoI box coder
  scales them by (10, 10, 5, 5), under which ``mu`` 0.02 would act like
  0.002-0.004 and most coordinates would land in the top region. So the term
  divides the coder's weights out of deltas and targets first
  (``loss.ghm.raw_deltas``, default true; false keeps the weighted deltas).

The moving average lives in a :class:`GHMState` owned by whoever builds the
loss (the loss builder), never on the modules and never in the graph: ``g``
and the weights are computed without gradient. It is not part of the
checkpoint: ``--resume`` restarts it from zero (official mmdetection keeps it
as a module buffer, so its checkpoints carry it). Guards against the NaN and
stalls users of public ports report: non-finite ``g`` is not counted; a batch
with no valid sample gives weights 0 and ``tot`` 1 (loss 0, not 0/0); an
empty region neither divides nor decays (its average is left as it was, as
official); one region holding every sample gives weight 1 exactly. Region
membership uses the official comparisons ``edge_i <= g < edge_{i+1}``.

Shapes: N samples; GHM-C ``logits``, ``targets``, ``valid`` [N]; GHM-R
``deltas``, ``targets`` [N, 4] with ``valid`` [N] (a valid row counts 4
coordinates, as the official per-coordinate weights do). Per-sample losses [N].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pedcrowd.losses.focal import term_rows
from pedcrowd.losses.standard import sampled_rows, zero_loss

if TYPE_CHECKING:
    from pedcrowd.losses.config import GhmConfig
    from pedcrowd.losses.samples import StageSamples


@dataclass
class GHMState:
    """The per-region moving average of one GHM loss: ``acc_sum`` [bins] (no gradient)."""

    bins: int
    acc_sum: Tensor | None = field(default=None, repr=False)

    def get(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[bins] the running densities, created as zeros on first use."""
        if self.acc_sum is None:
            self.acc_sum = torch.zeros(self.bins, device=device, dtype=dtype)
        elif self.acc_sum.device != device or self.acc_sum.dtype != dtype:
            self.acc_sum = self.acc_sum.to(device=device, dtype=dtype)
        return self.acc_sum


def ghm_weights(
    g: Tensor,
    valid: Tensor,
    *,
    bins: int,
    momentum: float,
    last_edge: float,
    state: GHMState | None,
) -> tuple[Tensor, float]:
    """Gradient-density weights. [K], [K] -> ([K], tot).

    Args:
        g: [K] gradient norms (no gradient needed; detached here).
        valid: [K] bool, the samples that count (others get weight 0).
        bins: number of unit regions.
        momentum: EMA momentum of the region counts (0: this batch's counts).
        last_edge: upper edge of the last region (GHM-C 1 + 1e-6, GHM-R 1e3).
        state: the moving average, updated in place when ``momentum`` > 0.

    Returns:
        weights [K] ``tot / (GD * n)`` (0 for invalid samples) and ``tot`` =
        max(number of valid samples, 1).
    """
    dtype = g.dtype
    g = g.detach().to(torch.promote_types(dtype, torch.float32))  # at least float32 under autocast
    valid = valid & torch.isfinite(g) & (g < last_edge)
    tot = valid.sum().clamp(min=1).to(g.dtype)  # device tensors, no host read (also n)
    edges = torch.arange(1, bins, device=g.device, dtype=g.dtype) / bins  # inner edges [bins-1]
    region = torch.bucketize(
        g.clamp(min=0.0).nan_to_num(0.0), edges, right=True
    )  # [K] in 0..bins-1
    counts = torch.bincount(region[valid], minlength=bins).to(g.dtype)  # [bins]
    filled = counts > 0
    n = filled.sum().to(g.dtype)  # 0: no region filled, every weight below is 0
    if momentum > 0:
        if state is None:
            raise ValueError("ghm_weights: momentum > 0 needs a GHMState")
        acc = state.get(g.device, g.dtype)
        with torch.no_grad():
            acc[filled] = momentum * acc[filled] + (1.0 - momentum) * counts[filled]
        density = acc
    else:
        density = counts
    per_region = torch.where(
        filled, (density.clamp(min=torch.finfo(g.dtype).tiny) * n).reciprocal() * tot, 0.0
    )
    weights = torch.where(valid, per_region[region], torch.zeros_like(g))
    return weights.to(dtype), tot


def ghmc_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor,
    *,
    bins: int = 30,
    momentum: float = 0.75,
    state: GHMState | None = None,
) -> tuple[Tensor, float]:
    """GHM-C per sample: ``w * BCE(logit, y)``; the loss is ``sum / tot``.

    Args:
        logits: [N] binary logits (with gradient).
        targets: [N] float in {0, 1}.
        valid: [N] bool.

    Returns:
        [N] weighted cross-entropy (0 on invalid rows) and ``tot``.
    """
    targets = targets.to(logits.dtype)
    g = (torch.sigmoid(logits.detach()) - targets).abs()
    w, tot = ghm_weights(g, valid, bins=bins, momentum=momentum, last_edge=1.0 + 1e-6, state=state)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return torch.where(valid, bce * w, torch.zeros_like(bce)), tot


def asl1(diff: Tensor, mu: float) -> Tensor:
    """Authentic Smooth L1 ``sqrt(d^2 + mu^2) - mu``, elementwise."""
    return torch.sqrt(diff * diff + mu * mu) - mu


def ghmr_loss(
    deltas: Tensor,
    targets: Tensor,
    valid: Tensor,
    *,
    mu: float = 0.02,
    bins: int = 10,
    momentum: float = 0.7,
    state: GHMState | None = None,
) -> tuple[Tensor, float]:
    """GHM-R per sample: sum over the 4 coordinates of ``w * ASL1(d)``; the loss is ``sum / tot``.

    Args:
        deltas: [N, 4] predicted box deltas (with gradient).
        targets: [N, 4] target deltas (meaningful on valid rows).
        valid: [N] bool, the positives.

    Returns:
        [N] weighted ASL1 (0 on invalid rows) and ``tot`` = max(4 * valid rows, 1).
    """
    valid4 = valid[:, None].expand_as(deltas)
    # rows that are not positives get d = 0 before anything else: their targets may be anything
    diff = torch.where(valid4, deltas - targets.to(deltas.dtype), torch.zeros_like(deltas))  # [N,4]
    g = (diff.detach() / torch.sqrt(diff.detach() ** 2 + mu * mu)).abs()  # [N,4]
    w, tot = ghm_weights(
        g.reshape(-1), valid4.reshape(-1), bins=bins, momentum=momentum, last_edge=1e3, state=state
    )
    loss = asl1(diff, mu) * w.reshape(diff.shape)
    return loss.sum(dim=1), tot


# ----------------------------------------------------------------------------- the registered terms


def ghmc_term(s: StageSamples, options: GhmConfig, state: dict) -> Tensor:
    """Classification term ``ghm``: GHM-C of ``s.ped_logit()`` over the sampled rows
    (RPN: every anchor with label >= 0), ``sum / tot``. ``state`` keeps the moving average."""
    rows = term_rows(s, "auto")
    if rows.numel() == 0:
        return zero_loss(s)
    ghm = state.setdefault("ghmc", GHMState(bins=options.bins))
    per, tot = ghmc_loss(
        s.ped_logit()[rows],
        s.positive[rows],
        torch.ones(rows.numel(), dtype=torch.bool, device=rows.device),
        bins=options.bins,
        momentum=options.momentum,
        state=ghm,
    )
    if s.weights is not None:
        per = per * s.weights[rows]
    return per.sum() / tot


def ghmr_term(s: StageSamples, options: GhmConfig, state: dict) -> Tensor:
    """Box term ``ghm``: GHM-R of the sampled positives' deltas (raw: the box coder's
    weights divided out, unless ``raw_deltas`` is off), ``box_weight * sum / tot``
    (tot = 4 x positives, official), 0 when the batch has no positive."""
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s)
    pos = rows[s.positive[rows]]  # [P]
    deltas, targets = s.deltas[pos], s.target_deltas[pos].to(s.deltas.dtype)  # [P,4]
    if options.raw_deltas:
        scale = torch.tensor(s.box_coder.weights, dtype=deltas.dtype, device=deltas.device)  # [4]
        deltas, targets = deltas / scale, targets / scale
    ghm = state.setdefault("ghmr", GHMState(bins=options.box_bins))
    per, tot = ghmr_loss(
        deltas,
        targets,
        torch.ones(pos.numel(), dtype=torch.bool, device=pos.device),
        mu=options.mu,
        bins=options.box_bins,
        momentum=options.box_momentum,
        state=ghm,
    )
    return options.box_weight * per.sum() / tot + zero_loss(s)
