"""Focal Loss for Dense Object Detection (Lin et al., ICCV 2017).

``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`` on the sigmoid probability of
one binary logit, with ``alpha_t = alpha`` for positives and ``1 - alpha`` for
negatives (a negative ``alpha`` turns the balance off). Defaults are the
paper's and mmdetection's: gamma 2, alpha 0.25. The classifier's bias starts
at :func:`prior_bias` ``= -log((1 - pi) / pi)`` so that every sample begins
with probability ``pi`` (0.01).

On pedcrowd's 2-class softmax RoI head the binary logit is ``z_ped - z_bg``:
``sigmoid(z_ped - z_bg)`` is exactly the softmax pedestrian probability, so
training with focal loss leaves inference (the softmax) unchanged, and the
prior sets ``b_ped - b_bg = prior_bias(pi)``. On the RPN the logit is the
objectness logit.

Shapes: N samples (rows). ``logits`` [N] float, ``targets`` [N] float in
{0, 1}; the per-sample loss is [N]. Reduction (sum over rows, divided by the
number of sampled rows or of positives) is the caller's.
"""

from __future__ import annotations

import math

from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from pedcrowd.errors import PedcrowdError


def focal_loss(
    logits: Tensor, targets: Tensor, *, gamma: float = 2.0, alpha: float = 0.25
) -> Tensor:
    """Per-sample sigmoid focal loss. [N], [N] -> [N].

    Args:
        logits: [N] binary logits (with gradient).
        targets: [N] float, 1 for positives, 0 for negatives.
        gamma: focusing parameter (0 gives alpha-balanced cross-entropy).
        alpha: weight of the positives (negatives get ``1 - alpha``); < 0: no weighting.
    """
    return sigmoid_focal_loss(
        logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="none"
    )


def prior_bias(pi: float) -> float:
    """The paper's bias initialisation ``-log((1 - pi) / pi)``: sigmoid(bias) == pi.

    Args:
        pi: prior probability of the positive class, in (0, 1).
    """
    if not 0.0 < pi < 1.0:
        raise PedcrowdError(f"loss.focal.prior: must lie in (0, 1), got {pi}")
    return -math.log((1.0 - pi) / pi)
