"""The training criterion of a detector stage, composed from the registry.

The RPN and the RoI head each own one :class:`StageCriterion`. It takes the
stage's :class:`pedcrowd.losses.samples.StageSamples` and returns the loss dict:
the classification term under the stage's torchvision name
(``loss_classifier`` / ``loss_objectness``), the box term (``loss_box_reg`` /
``loss_rpn_box_reg``), the sampler's extra terms and every extra term with a
non-zero weight (``loss_nms_pull``; at the RPN ``loss_rpn_nms_pull``), all in
float32 (also under autocast). Every term is multiplied by its weight in
:attr:`StageCriterion.weight_dict` (as DETR's ``weight_dict``: ``loss.cls_weight``
and the other three for the cls and box terms, 1 by default; the sections' own
weights for the others, ``loss.nms.lambda_pull``, ``loss.pisa.carl_weight``); a term
whose weights are all 0 is never computed. Which terms and with which options comes from the ``loss:`` config
section (:mod:`pedcrowd.losses.config`), the functions from the registry
(:mod:`pedcrowd.losses.registry`); the criterion keeps each term's state
(e.g. GHM's moving averages) as plain detached tensors between steps.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

from pedcrowd.losses.config import LossConfig
from pedcrowd.losses.registry import TERMS
from pedcrowd.precision import full_precision

if TYPE_CHECKING:
    from pedcrowd.losses.samples import StageSamples

log = logging.getLogger(__name__)

# stage -> (key of the cls choice, key of the box choice, logged names of cls and box)
_STAGE_KEYS = {
    "roi": ("cls", "box", "loss_classifier", "loss_box_reg"),
    "rpn": ("rpn_cls", "rpn_box", "loss_objectness", "loss_rpn_box_reg"),
}


def _term_weights(options: Any) -> dict[str, float]:
    """A section's weights of its terms, by key (``{"nms_pull": 0.1, "nms_push": 0.001}``)."""
    if hasattr(options, "term_weights"):
        return options.term_weights()
    return {}


class StageCriterion:
    """The losses of one stage.

    Args:
        stage: ``"rpn"`` or ``"roi"``.
        cfg: the ``loss:`` section.
        context: facts of the model the options may depend on (``box_nms_thresh``):
            an options class with a ``resolve(stage, context)`` method gets them.
    """

    def __init__(self, stage: str, cfg: Any, context: dict[str, Any] | None = None) -> None:
        context = dict(context or {})
        cls_key, box_key, self.cls_name, self.box_name = _STAGE_KEYS[stage]
        self.stage = stage
        self.cls_term, self.box_term = getattr(cfg, cls_key), getattr(cfg, box_key)
        self.cls_fn = TERMS[self.cls_term].function("cls")
        self.box_fn = TERMS[self.box_term].function("box")
        self.cls_rows_fn = TERMS[self.cls_term].rows_fn
        self.cls_options = self._options(cfg, getattr(cfg, cls_key), context)
        self.box_options = self._options(cfg, getattr(cfg, box_key), context)
        prefix = "loss_rpn_" if stage == "rpn" else "loss_"
        # logged name -> weight of every term of this stage, as DETR's weight_dict: the cls
        # and box terms' from loss.<cls_key>_weight, the sampler's and the extra terms' from
        # their sections (a name not in it, a user's term registered at run time, weighs 1)
        self.weight_dict = {
            self.cls_name: float(getattr(cfg, f"{cls_key}_weight")),
            self.box_name: float(getattr(cfg, f"{box_key}_weight")),
        }
        self.sampler = None
        if stage == "roi":
            options = self._options(cfg, cfg.sampler, context)
            self.sampler = TERMS[cfg.sampler].fn(options)
            self.weight_dict.update({prefix + k: w for k, w in _term_weights(options).items()})
        self.extras: dict[str, tuple[Callable[..., dict[str, Tensor]], Any]] = {}
        for name, spec in TERMS.items():
            if spec.role != "extra":
                continue
            options = self._options(cfg, name, context)
            weights = _term_weights(options)
            stages = options.stages() if hasattr(options, "stages") else spec.stages
            # an extra term without weights (a user's, registered at run time) always runs
            if stage in stages and (not weights or any(w != 0.0 for w in weights.values())):
                self.extras[name] = (spec.fn, options)
                self.weight_dict.update({prefix + k: w for k, w in weights.items()})
        self.state: dict[str, dict] = {name: {} for name in TERMS}

    def _options(self, cfg: Any, name: str, context: dict[str, Any]) -> Any:
        options = getattr(cfg, name, None) if TERMS[name].options is not None else None
        if options is not None and hasattr(options, "resolve"):
            options = options.resolve(self.stage, context)
        return options

    @property
    def needs_all_positives(self) -> bool:
        """Whether a term reads every positive proposal, not only the sampled ones."""
        return any(getattr(o, "candidates", "sampled") == "all" for _, o in self.extras.values())

    def __call__(self, s: StageSamples) -> dict[str, Tensor]:
        """The weighted loss terms of ``s``, computed in float32 with autocast off
        (:mod:`pedcrowd.precision`), whatever precision the heads ran in."""
        with full_precision(s.deltas.device.type):
            return self._terms(s.float32())

    def _terms(self, s: StageSamples) -> dict[str, Tensor]:
        prefix = "loss_rpn_" if self.stage == "rpn" else "loss_"
        weight = self.weight_dict
        losses: dict[str, Tensor] = {}  # unweighted
        if self.sampler is not None:  # may set s.weights before the cls and box terms
            cls_rows = None
            if self.cls_rows_fn is not None:  # cls_rows(rows): the cls term's per-row loss
                cls_rows = functools.partial(self.cls_rows_fn, s, options=self.cls_options)
            for key, value in self.sampler.reweight(s, cls_rows).items():
                losses[prefix + key] = value
        if weight[self.cls_name] != 0.0:
            losses[self.cls_name] = self.cls_fn(s, self.cls_options, self.state[self.cls_term])
        if weight[self.box_name] != 0.0:
            losses[self.box_name] = self.box_fn(s, self.box_options, self.state[self.box_term])
        for name, (fn, options) in self.extras.items():
            for key, value in fn(s, options, self.state[name]).items():
                losses[prefix + key] = value
        # one weighting for every term (x * 1.0 is x exactly: the default weights change no bit)
        return {k: weight.get(k, 1.0) * v for k, v in losses.items() if weight.get(k, 1.0) != 0.0}

    def describe(self) -> str:
        """One line for the log: which terms run at this stage."""
        parts = [f"{self.cls_name}={self.cls_term}", f"{self.box_name}={self.box_term}"]
        if self.sampler is not None:
            parts.append(f"sampler={type(self.sampler).__name__}")
        parts += [f"+{name}" for name in self.extras]
        return f"{self.stage}: " + ", ".join(parts)


def build_criteria(
    cfg: Any | None = None, context: dict[str, Any] | None = None
) -> tuple[StageCriterion, StageCriterion]:
    """``(rpn_criterion, roi_criterion)`` for the ``loss:`` section ``cfg`` (default: torchvision's losses).

    Args:
        cfg: a ``LossConfig``; None gives the defaults (no crowd loss).
        context: model facts for the options, e.g. ``{"box_nms_thresh": 0.5}``.
    """
    cfg = LossConfig() if cfg is None else cfg
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"expected a LossConfig, got {type(cfg).__name__}")
    return StageCriterion("rpn", cfg, context), StageCriterion("roi", cfg, context)
