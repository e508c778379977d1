"""The registry of training terms: every loss of both stages, by name, as the function itself.

Every training loss of both stages is a registered *term*: torchvision's
cross-entropy and smooth-L1 included. ``loss.cls`` / ``loss.box`` name the terms
that compute the RoI head's classification and box losses, ``loss.rpn_cls`` /
``loss.rpn_box`` the RPN's, ``loss.sampler`` how the RoI head picks its training
samples; *extra* terms (NMS-Loss, RepLoss) are added wherever their weights are
non-zero. :class:`pedcrowd.losses.criterion.StageCriterion` composes them.

The torch-free config (:mod:`pedcrowd.losses.config`) names the choices of each
key in ``TERM_CHOICES``; a test checks that they agree with :data:`TERMS`.

A term's signature, by role:

* ``cls`` / ``box``: ``fn(s: StageSamples, options, state: dict) -> Tensor`` (a scalar);
* ``extra``: ``fn(s, options, state) -> dict[str, Tensor]``, logged as ``loss_<key>``
  (``loss_rpn_<key>`` at the RPN) and weighted by ``options.term_weights()``;
* ``sampler``: a class ``cls(options)`` with the methods of
  :class:`pedcrowd.losses.standard.RandomSampler`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pedcrowd.losses.config import (
    FocalConfig,
    GhmConfig,
    KlLossConfig,
    NmsLossConfig,
    OhemConfig,
    PisaConfig,
    QflConfig,
    RepLossConfig,
    Role,
    Stage,
)
from pedcrowd.losses.focal import focal_rows, focal_term
from pedcrowd.losses.ghm import ghmc_term, ghmr_term
from pedcrowd.losses.kl import kl_term
from pedcrowd.losses.nms_loss import nms_terms
from pedcrowd.losses.ohem import OhemSampler
from pedcrowd.losses.pisa import PisaSampler
from pedcrowd.losses.qfl import qfl_rows, qfl_term
from pedcrowd.losses.repulsion import rep_terms
from pedcrowd.losses.standard import (
    RandomSampler,
    binary_cross_entropy_term,
    cross_entropy_rows,
    cross_entropy_term,
    smooth_l1_term,
)


@dataclass(frozen=True)
class TermSpec:
    """One registered training term or sampler.

    Attributes:
        role: ``cls`` / ``box`` replace a stage's classification / box loss;
            ``extra`` terms are added; ``sampler`` picks the RoI head's samples.
        fn: the implementation (a sampler: its class).
        stages: where it may run.
        options: the dataclass of its ``loss.<name>`` section, or None.
        box_fn: a ``cls`` term that is also a ``box`` term under the same name
            (``ghm``: GHM-C and GHM-R) gives its box implementation here.
        rows_fn: a ``cls`` term's unweighted per-row loss ``fn(s, rows, options) -> [S]``
            (what PISA's ISR-P keeps the sum of), or None.
    """

    role: Role
    fn: Callable[..., Any]
    stages: tuple[Stage, ...] = ("roi",)
    options: type | None = None
    box_fn: Callable[..., Any] | None = None
    rows_fn: Callable[..., Any] | None = None

    def has_role(self, role: str) -> bool:
        return role == self.role or (role == "box" and self.box_fn is not None)

    def function(self, role: str) -> Callable[..., Any]:
        """The implementation of ``role`` (``box``: ``box_fn`` when there is one)."""
        return self.box_fn if role == "box" and self.box_fn is not None else self.fn


# name -> spec. One line per technique.
TERMS: dict[str, TermSpec] = {
    "ce": TermSpec("cls", cross_entropy_term, rows_fn=cross_entropy_rows),
    "bce": TermSpec("cls", binary_cross_entropy_term, ("rpn",)),
    "smooth_l1": TermSpec("box", smooth_l1_term, ("rpn", "roi")),
    "random": TermSpec("sampler", RandomSampler),
    "nms": TermSpec("extra", nms_terms, ("roi", "rpn"), NmsLossConfig),
    "rep": TermSpec("extra", rep_terms, ("roi",), RepLossConfig),
    "focal": TermSpec("cls", focal_term, ("roi", "rpn"), FocalConfig, rows_fn=focal_rows),
    "ghm": TermSpec("cls", ghmc_term, ("roi",), GhmConfig, box_fn=ghmr_term),
    "qfl": TermSpec("cls", qfl_term, ("roi",), QflConfig, rows_fn=qfl_rows),
    "ohem": TermSpec("sampler", OhemSampler, ("roi",), OhemConfig),
    "pisa": TermSpec("sampler", PisaSampler, ("roi",), PisaConfig),
    "kl": TermSpec("box", kl_term, ("roi",), KlLossConfig),
}
