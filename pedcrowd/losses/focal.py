"""Focal Loss for Dense Object Detection (Lin et al., ICCV 2017).

``FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t)`` on the sigmoid probability of
one binary logit, with ``alpha_t = alpha`` for positives and ``1 - alpha`` for
negatives (``alpha = -1`` turns the balance off: torchvision's
``sigmoid_focal_loss`` accepts [0, 1] or -1 and raises on any other value, so the
config allows exactly those). Defaults are the paper's and mmdetection's: gamma 2,
alpha 0.25. The classifier's bias starts
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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from pedcrowd.errors import PedcrowdError
from pedcrowd.losses.standard import sampled_rows, zero_loss

if TYPE_CHECKING:
    from pedcrowd.losses.config import FocalConfig
    from pedcrowd.losses.samples import StageSamples


def focal_loss(
    logits: Tensor, targets: Tensor, *, gamma: float = 2.0, alpha: float = 0.25
) -> Tensor:
    """Per-sample sigmoid focal loss. [N], [N] -> [N].

    Args:
        logits: [N] binary logits (with gradient).
        targets: [N] float, 1 for positives, 0 for negatives.
        gamma: focusing parameter (0 gives alpha-balanced cross-entropy).
        alpha: weight of the positives (negatives get ``1 - alpha``), in [0, 1]; -1: no weighting.
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


# ----------------------------------------------------------------------------- the registered term


def term_rows(s: StageSamples, rows: str) -> Tensor:
    """[S] the rows a classification term reads: the sampler's (``sampled``), or every
    row that may be trained on (``all``: label >= 0, RetinaNet's dense form); ``auto`` is
    ``sampled`` at the RoI head and ``all`` at the RPN."""
    if rows == "auto":
        rows = "all" if s.stage == "rpn" else "sampled"
    if rows == "all":
        return torch.where(s.labels >= 0)[0]
    return sampled_rows(s)


def normaliser(s: StageSamples, rows: Tensor, normalize: str) -> Tensor | float:
    """What a classification term divides its sum by: the number of ``rows`` (``sampled``,
    the mean torchvision's cross-entropy takes and mmdetection's two-stage heads use) or of
    positives among them (``positives``, RetinaNet / GFL); ``auto``: RoI head ``sampled``,
    RPN ``positives``. Never below 1 (an all-background batch)."""
    if normalize == "auto":
        normalize = "positives" if s.stage == "rpn" else "sampled"
    if normalize == "positives":  # a device tensor: no host read in the step
        return s.positive[rows].sum().clamp(min=1).to(s.class_logits.dtype)
    return float(max(rows.numel(), 1))


def focal_rows(s: StageSamples, rows: Tensor, options: FocalConfig) -> Tensor:
    """Each of ``rows``' unweighted focal loss of ``s.ped_logit()``. [S] -> [S]."""
    return focal_loss(s.ped_logit()[rows], s.positive[rows], gamma=options.gamma, alpha=options.alpha)


def focal_term(s: StageSamples, options: FocalConfig, state: dict) -> Tensor:
    """Classification term ``focal``: focal loss of ``s.ped_logit()`` over the term's rows."""
    rows = term_rows(s, options.rows)
    if rows.numel() == 0:
        return zero_loss(s)
    loss = focal_rows(s, rows, options)  # [S]
    if s.weights is not None:
        loss = loss * s.weights[rows]
    return loss.sum() / normaliser(s, rows, options.normalize)


def init_prior_bias(model: torch.nn.Module, stage: str, pi: float) -> None:
    """Sets a stage's classifier bias so that every sample starts at probability ``pi``.

    RoI head (2-class softmax): ``b_bg = 0``, ``b_ped = prior_bias(pi)``, so
    ``softmax = sigmoid(b_ped - b_bg) = pi``; RPN: the objectness conv's bias.

    Args:
        model: a pedcrowd detector (``rpn.head.cls_logits``, ``roi_heads.box_predictor.cls_score``).
        stage: ``"rpn"`` or ``"roi"``.
    """
    bias = prior_bias(pi)
    with torch.no_grad():
        if stage == "rpn":
            model.rpn.head.cls_logits.bias.fill_(bias)
        else:
            b = model.roi_heads.box_predictor.cls_score.bias  # [K] (background, pedestrian)
            b.zero_()
            b[1] = bias


def init_classifier_priors(model: torch.nn.Module, weights: str, loss: Any) -> list[str]:
    """Applies the ``prior`` option of each stage's classification term (focal, QFL).

    Only for a model built from scratch or from ImageNet weights (``model.weights``
    none / imagenet): a weights file brings trained classifiers of its own.

    Args:
        model: the detector, before training starts.
        weights: ``model.weights`` of the config.
        loss: the ``loss:`` section.

    Returns:
        the stages whose bias was set.
    """
    if weights not in ("none", "imagenet"):
        return []
    done = []
    for stage, key in (("roi", "cls"), ("rpn", "rpn_cls")):
        prior = getattr(getattr(loss, getattr(loss, key), None), "prior", None)
        if prior is not None:
            init_prior_bias(model, stage, prior)
            done.append(stage)
    return done
