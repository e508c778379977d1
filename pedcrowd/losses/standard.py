"""torchvision's own training losses and sampler, as registered terms.

``ce`` and ``smooth_l1`` are ``fastrcnn_loss``'s arithmetic, ``bce`` and
``smooth_l1`` at the RPN its ``compute_loss``'s, ``random`` the
``BalancedPositiveNegativeSampler``: with no per-row weights the values are
bit-identical to torchvision's (a test holds them to it). With ``s.weights``
(classification) or ``s.box_weights`` (box) set (e.g. by PISA) each row's loss is
scaled, the normaliser unchanged.

Shapes: N rows of the stage (:class:`pedcrowd.losses.samples.StageSamples`),
S of them sampled, P sampled positives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from pedcrowd.losses.samples import StageSamples

BOX_BETA = 1.0 / 9.0  # torchvision's smooth-L1 beta at both stages


def sampled_rows(s: StageSamples) -> Tensor:
    """[S] indices of the sampled rows: the RPN's positives first, then its negatives
    (torchvision's order there); the RoI head's in row order (its order)."""
    if s.stage == "rpn":
        return torch.cat([torch.where(s.sampled & s.positive)[0], torch.where(s.sampled & ~s.positive)[0]])
    return torch.where(s.sampled)[0]


def zero_loss(s: StageSamples) -> Tensor:
    """0 connected to the graph (nothing sampled: an ignore-only batch)."""
    return s.class_logits.sum() * 0.0 + s.deltas.sum() * 0.0


def cross_entropy_rows(s: StageSamples, rows: Tensor, options: None = None) -> Tensor:
    """RoI head: each of ``rows``' unweighted softmax cross-entropy. [S] -> [S]."""
    return F.cross_entropy(s.class_logits[rows], s.labels[rows], reduction="none")


def cross_entropy_term(s: StageSamples, options: None, state: dict) -> Tensor:
    """RoI head: softmax cross-entropy over the sampled rows, their mean."""
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s)
    if s.weights is None:
        return F.cross_entropy(s.class_logits[rows], s.labels[rows])
    loss = cross_entropy_rows(s, rows)  # [S]
    return (loss * s.weights[rows]).sum() / rows.numel()


def binary_cross_entropy_term(s: StageSamples, options: None, state: dict) -> Tensor:
    """RPN: sigmoid cross-entropy of the objectness over the sampled anchors, their mean."""
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s)
    logits, targets = s.class_logits[rows, 0], s.labels[rows].to(s.class_logits.dtype)
    if s.weights is None:
        return F.binary_cross_entropy_with_logits(logits, targets)
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # [S]
    return (loss * s.weights[rows]).sum() / rows.numel()


def smooth_l1_term(s: StageSamples, options: None, state: dict) -> Tensor:
    """Both stages: smooth-L1 (beta 1/9, or ``s.box_beta`` when a sampler set it) of the
    sampled positives' deltas, summed and divided by the number of sampled rows
    (torchvision's normaliser, not the positives')."""
    rows = sampled_rows(s)
    if rows.numel() == 0:
        return zero_loss(s)
    pos = rows[s.positive[rows]]  # [P]
    beta = BOX_BETA if s.box_beta is None else s.box_beta
    if s.box_weights is None:
        loss = F.smooth_l1_loss(s.deltas[pos], s.target_deltas[pos], beta=beta, reduction="sum")
        return loss / rows.numel()
    loss = F.smooth_l1_loss(s.deltas[pos], s.target_deltas[pos], beta=beta, reduction="none")
    return (loss * s.box_weights[pos, None]).sum() / rows.numel()


@dataclass
class SamplerContext:
    """What the RoI head offers a sampler.

    Attributes:
        proposals: per image [P_i, 4] every proposal (GTs appended).
        labels: per image [P_i] int64, 1 / 0 / -1 (never sampled).
        fg_bg_sampler: torchvision's ``BalancedPositiveNegativeSampler`` of the head
            (``batch_size_per_image``, ``positive_fraction``).
        score: ``score(rows)`` runs the box head without gradient on ``rows`` (per
            image an index tensor into that image's proposals) and returns their
            :class:`StageSamples` (for OHEM's hardness).
    """

    proposals: list[Tensor]
    labels: list[Tensor]
    fg_bg_sampler: Any
    score: Callable[[list[Tensor]], StageSamples]


class RandomSampler:
    """torchvision's sampler: a random ``positive_fraction`` of positives, negatives for
    the rest, ``batch_size_per_image`` rows per image. Base class of the samplers."""

    def __init__(self, options: object = None) -> None:
        self.options = options

    def select(self, ctx: SamplerContext) -> list[Tensor]:
        """Per image the sorted indices of the sampled proposals."""
        sampled_pos, sampled_neg = ctx.fg_bg_sampler(ctx.labels)
        return [torch.where(p | n)[0] for p, n in zip(sampled_pos, sampled_neg, strict=True)]

    def reweight(
        self, s: StageSamples, cls_rows: Callable[[Tensor], Tensor] | None = None
    ) -> dict[str, Tensor]:
        """After the box head ran: may set ``s.weights``; returns extra loss terms.

        Args:
            s: the stage's samples.
            cls_rows: ``cls_rows(rows)`` -> [len(rows)] the stage's own classification
                loss of those rows, unweighted (None where the term has no per-row form).
        """
        return {}

