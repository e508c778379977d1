"""KL-Loss: box regression with uncertainty (He et al., "Bounding Box Regression
with Uncertainty for Accurate Object Detection", CVPR 2019; yihui-he/KL-Loss).

The box head predicts per box edge an offset x_e and alpha = log(sigma^2)
(:class:`pedcrowd.model.kl_head.KLBoxPredictor`); the loss is the KL divergence
between the Dirac delta at the target x_g and the Gaussian N(x_e, sigma^2),
up to constants, in the official code's smooth form:

    L = exp(-alpha) * SmoothL1_beta(x_g - x_e) + alpha / 2

(the paper's Gaussian form (x_g - x_e)^2 / (2 sigma^2) + alpha / 2 is its
|d| <= beta branch with beta = 1). At alpha = 0 it is smooth-L1. The official
``fast_rcnn_heads.py`` gets the same gradients from two caffe2 losses: the
offsets see exp(-alpha) * SmoothL1' with alpha held, alpha sees
-exp(-alpha) * SmoothL1 + 1/2 with the smooth-L1 value held; autograd of L
gives exactly both. Its smooth-L1 has beta 1 (caffe2's default), not
torchvision's 1/9; normalised like torchvision's box loss: summed over the
sampled positives' four edges, divided by the number of sampled rows (the
official ReduceMean over RoIs).

Shapes: N rows (:class:`pedcrowd.losses.samples.StageSamples`), P sampled positives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.standard import sampled_rows, zero_loss

if TYPE_CHECKING:
    from pedcrowd.losses.config import KlLossConfig
    from pedcrowd.losses.samples import StageSamples


def kl_loss(deltas: Tensor, targets: Tensor, log_var: Tensor, *, beta: float = 1.0) -> Tensor:
    """Per-edge KL-Loss [P, 4] = exp(-alpha) * SmoothL1_beta(targets - deltas) + alpha / 2.

    Args:
        deltas: [P, 4] predicted box codes x_e. targets: [P, 4] target codes x_g.
        log_var: [P, 4] alpha = log(sigma^2).
    """
    smooth = F.smooth_l1_loss(deltas, targets, beta=beta, reduction="none")  # [P,4]
    return torch.exp(-log_var) * smooth + 0.5 * log_var


def kl_term(s: StageSamples, options: KlLossConfig, state: dict) -> Tensor:
    """RoI head box loss: :func:`kl_loss` of the sampled positives, summed, divided by
    the number of sampled rows (per-row ``s.box_weights`` scale it, as in smooth_l1)."""
    log_var = s.extras.get("box_log_var")
    if log_var is None:
        raise PedcrowdError(
            "loss.box kl: the model has no KL head (box log-variances); set "
            "model.box_std_head: true (pedcrowd train --box-loss kl does)"
        )
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s) + log_var.sum() * 0.0
    pos = rows[s.positive[rows]]  # [P]
    loss = kl_loss(s.deltas[pos], s.target_deltas[pos], log_var[pos], beta=options.beta)
    if s.box_weights is not None:
        loss = loss * s.box_weights[pos, None]
    return loss.sum() / rows.numel()
