"""The ``loss:`` section of the training config: which term computes each loss, and options.

Every training loss of both stages is a registered *term*: torchvision's
cross-entropy and smooth-L1 included. ``loss.cls`` / ``loss.box`` name the
terms that compute the RoI head's classification and box losses,
``loss.rpn_cls`` / ``loss.rpn_box`` the RPN's, ``loss.sampler`` how the RoI
head picks its training samples; *extra* terms (NMS-Loss, RepLoss) are added
wherever their weights are non-zero. Options of a technique live in the
section of its name (``loss.nms.lambda_pull``).

The terms themselves (the functions) are registered in
:data:`pedcrowd.losses.registry.TERMS`; this module, and with it the whole
config tree, never imports torch, so it names the choices of each key in
:data:`TERM_CHOICES` (a test checks that they agree with the registry).
Adding a technique touches: its file under ``pedcrowd/losses/`` (the function),
one line of ``TERMS``, and here its name in ``TERM_CHOICES`` (a cls, box or
sampler term) and, if it has options, its options dataclass and one
``LossConfig`` field.

``pedcrowd train --loss NAME`` applies one of :data:`LOSS_PRESETS` (named
dicts of ``loss.`` fields).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pedcrowd.errors import PedcrowdError

log = logging.getLogger(__name__)

Role = Literal["cls", "box", "extra", "sampler"]
Stage = Literal["rpn", "roi"]


# ----------------------------------------------------------------------------- options

OFFICIAL_NMS_THRESH = 0.5  # the RPN NMS threshold NMS-Loss simulates in the official code


@dataclass
class NmsLossConfig:
    """NMS-Loss (Luo et al., ICMR 2021); see ``pedcrowd.losses.nms_loss``.

    ``stage: rpn`` is the official code's setting: the RPN's decoded proposals,
    chosen and assigned as ``RPN_NMS_Head`` does (``rpn_*`` fields). ``stage: roi``
    is pedcrowd's adaptation to a two-stage torchvision detector, whose output is
    decided by the second stage's NMS.
    """

    # weight of the pull term (0 skips NMS-Loss unless push > 0)
    lambda_pull: float = field(default=0.0, metadata={"range": ">= 0"})
    lambda_push: float = field(default=0.0, metadata={"range": ">= 0"})  # weight of the push term
    # N_t of the simulated NMS. null: model.box_nms_thresh at the roi stage (the NMS the
    # loss simulates), the official 0.5 at the rpn stage
    nms_thresh: float | None = field(default=None, metadata={"range": "(0, 1]"})
    add_gt: bool = True  # GTs join as score-1.0 predictions and become b_max
    pull_relax: bool = True  # -ln(1 - N_t + IoU) (official); False: -ln(IoU) (paper)
    push_relax: bool = False  # -ln(1 + N_t - IoU); False: -ln(1 - IoU) (official)
    detach_pull_score: bool = True  # CityPersons official; Caltech lets pull lower the FP score
    # which box of a pull pair the pull gradient moves: dup (the duplicate, CityPersons
    # official) or max (b_max; the Caltech code's detached row)
    pull_grad: Literal["dup", "max"] = "dup"
    stage: Literal["roi", "rpn", "both"] = "roi"  # which NMS to simulate
    # roi stage: the sampled RoIs only, or every positive proposal (what the test NMS sees)
    candidates: Literal["sampled", "all"] = "all"
    # rpn stage, as the official RPN_NMS_Head: anchors with score > min_score, the
    # pre_top_n best, decoded (with gradient) and clipped, height >= min_height px, the
    # top_n best of those; assigned by IoU >= 0.5 of their anchor (ignore IoA > 0.5 dropped)
    rpn_min_score: float = field(default=0.005, metadata={"range": "[0, 1)"})
    rpn_pre_top_n: int = field(default=2500, metadata={"range": ">= 1"})
    rpn_top_n: int = field(default=2500, metadata={"range": ">= 1"})
    rpn_min_height: float = field(default=50.0, metadata={"range": ">= 0"})
    rpn_iou_thresh: float = field(default=0.5, metadata={"range": "(0, 1]"})

    def term_weights(self) -> dict[str, float]:
        return {"nms_pull": self.lambda_pull, "nms_push": self.lambda_push}

    def resolve(self, stage: str, context: dict[str, Any]) -> NmsLossConfig:
        """These options with ``nms_thresh`` filled in for ``stage``: the NMS it simulates."""
        box_nms = context.get("box_nms_thresh")
        if self.nms_thresh is None:
            value = box_nms if stage == "roi" and box_nms is not None else OFFICIAL_NMS_THRESH
            return dataclasses.replace(self, nms_thresh=float(value))
        if stage == "roi" and box_nms is not None and self.nms_thresh != box_nms:
            log.warning(
                "loss.nms.nms_thresh %.3g differs from model.box_nms_thresh %.3g: NMS-Loss "
                "simulates an NMS that the detector does not run (leave it null to follow "
                "the model)", self.nms_thresh, box_nms,
            )
        return self

    def stages(self) -> tuple[str, ...]:
        return ("roi", "rpn") if self.stage == "both" else (self.stage,)


@dataclass
class RepLossConfig:
    """Repulsion Loss (Wang et al., CVPR 2018); see ``pedcrowd.losses.repulsion``."""

    alpha: float = field(default=0.0, metadata={"range": ">= 0"})  # weight of RepGT
    beta: float = field(default=0.0, metadata={"range": ">= 0"})  # weight of RepBox
    # Smooth_ln sigma of RepGT (paper 1.0: plain -ln(1 - IoG))
    sigma_gt: float = field(default=1.0, metadata={"range": "[0, 1]"})
    # Smooth_ln sigma of RepBox (paper 0.0: linear in IoU)
    sigma_box: float = field(default=0.0, metadata={"range": "[0, 1]"})
    # box_loss (paper-exact): scaled like the attraction term, which torchvision's box loss
    # divides by every sampled RoI instead of the positives, so that alpha and beta weigh
    # RepGT/RepBox against it as in the paper; positives: RepGT per positive and RepBox
    # per overlapping pair, unscaled (pedcrowd 0.1; about 4x heavier at 25 % positives)
    normalize: Literal["box_loss", "positives"] = "box_loss"

    def term_weights(self) -> dict[str, float]:
        return {"rep_gt": self.alpha, "rep_box": self.beta}

    def stages(self) -> tuple[str, ...]:
        return ("roi",)


# sample imbalance (issue 11)


@dataclass
class FocalConfig:
    """Focal loss (Lin et al., ICCV 2017); see ``pedcrowd.losses.focal``. Used by
    ``loss.cls: focal`` (RoI head) and ``loss.rpn_cls: focal`` (RPN objectness)."""

    gamma: float = field(default=2.0, metadata={"range": ">= 0"})  # focusing parameter
    # weight of the positives (negatives 1 - alpha); -1: no balance (torchvision's switch)
    alpha: float = field(default=0.25, metadata={"range": "[0, 1] or -1"})
    # pi of the bias initialisation -log((1 - pi) / pi) of the classifier it trains
    # (RoI head: b_ped - b_bg); null keeps the usual initialisation. Applied when the
    # model starts from weights none / imagenet (a weights file brings its own bias).
    prior: float | None = field(default=0.01, metadata={"range": "(0, 1)"})
    # rows: sampled (the sampler's) or all (every anchor / proposal with label >= 0,
    # RetinaNet's dense form); auto: RoI head sampled, RPN all
    rows: Literal["auto", "sampled", "all"] = "auto"
    # divide the sum by the rows (sampled, mmdetection's two-stage heads, torchvision's
    # mean) or the positives among them (RetinaNet); auto: RoI sampled, RPN positives
    normalize: Literal["auto", "sampled", "positives"] = "auto"


@dataclass
class GhmConfig:
    """GHM-C (``loss.cls: ghm``) and GHM-R (``loss.box: ghm``) (Li et al., AAAI 2019);
    see ``pedcrowd.losses.ghm``. Defaults: the official RetinaNet config."""

    # GHM-C: unit regions of the gradient norm
    bins: int = field(default=30, metadata={"range": ">= 1"})
    # GHM-C: EMA of the region counts; 0: this batch's counts
    momentum: float = field(default=0.75, metadata={"range": "[0, 1)"})
    mu: float = field(default=0.02, metadata={"range": "> 0"})  # GHM-R: Authentic Smooth L1 parameter
    box_bins: int = field(default=10, metadata={"range": ">= 1"})  # GHM-R regions
    box_momentum: float = field(default=0.7, metadata={"range": "[0, 1)"})  # GHM-R EMA momentum
    box_weight: float = field(default=10.0, metadata={"range": ">= 0"})  # GHM-R loss_weight
    # GHM-R on the raw deltas (the box coder's weights divided out: the official
    # target_stds 1); false: on torchvision's (10, 10, 5, 5)-weighted deltas
    raw_deltas: bool = True


@dataclass
class QflConfig:
    """Quality Focal Loss (Li et al., NeurIPS 2020); see ``pedcrowd.losses.qfl``. ``loss.cls: qfl``."""

    beta: float = field(default=2.0, metadata={"range": ">= 0"})  # exponent of |y - sigma|
    # as loss.focal.prior (GFL initialises its classifier so)
    prior: float | None = field(default=0.01, metadata={"range": "(0, 1)"})
    # sampled: mean over the sampled rows (mmdetection's two-stage normaliser);
    # positives: over the sampled positives (GFL's dense head)
    normalize: Literal["auto", "sampled", "positives"] = "auto"


@dataclass
class OhemConfig:
    """OHEM (Shrivastava et al., CVPR 2016); see ``pedcrowd.losses.ohem``. ``loss.sampler: ohem``."""

    # B per image (the authors' 64, fast_rcnn_ohem.yml); null: model.box_batch_size_per_image
    num: int | None = field(default=64, metadata={"range": ">= 1"})
    # RoIs scored per image: 0 every proposal (the authors'); n > 0 a random subset of n
    # (cheaper: scoring every proposal costs about 1.65x a default step on the CPU demo);
    # null: a random 4 x num (pedcrowd's default before the authors' settings: configs
    # saved then still load and resume as they ran)
    pool: int | None = field(default=0, metadata={"range": ">= 0"})
    # de-duplication IoU, per image and label; >= 1 turns it off
    nms_thresh: float = field(default=0.7, metadata={"range": "> 0"})
    with_box: bool = True  # hardness = cls + box loss (paper); false: cls only
    # smooth-L1 beta of the hardness's box part (the authors' sigma 1)
    beta: float = field(default=1.0, metadata={"range": "> 0"})


@dataclass
class PisaConfig:
    """PISA (Cao et al., CVPR 2020); see ``pedcrowd.losses.pisa``. ``loss.sampler: pisa``."""

    isr_p: bool = True  # IoU-HLR weights on the positives
    # weights ((1 - r / n)(1 - bias) + bias)^k: a bias outside [0, 1] makes a base negative
    k: float = field(default=2.0, metadata={"range": ">= 0"})
    bias: float = field(default=0.0, metadata={"range": "[0, 1]"})
    isr_n: bool = True  # Score-HLR sampling and weights of the negatives
    neg_k: float = field(default=0.5, metadata={"range": ">= 0"})
    neg_bias: float = field(default=0.0, metadata={"range": "[0, 1]"})
    score_thr: float = field(default=0.05, metadata={"range": "[0, 1]"})
    iou_thr: float = field(default=0.5, metadata={"range": "(0, 1]"})
    # CARL, logged as loss_carl; 0 turns it off
    carl_weight: float = field(default=1.0, metadata={"range": ">= 0"})
    carl_k: float = field(default=1.0, metadata={"range": ">= 0"})
    carl_bias: float = field(default=0.2, metadata={"range": "[0, 1]"})
    # smooth-L1 beta of the box loss and of CARL (the official config's 1.0; torchvision 1/9)
    box_beta: float = field(default=1.0, metadata={"range": "> 0"})

    def term_weights(self) -> dict[str, float]:
        return {"carl": self.carl_weight}


@dataclass
class KlLossConfig:
    """KL-Loss (He et al., CVPR 2019); see ``pedcrowd.losses.kl``. Needs the KL box head
    (``model.box_std_head: true``, which ``pedcrowd train --box-loss kl`` sets)."""

    # smooth-L1 beta inside the loss: the official 1 (torchvision's box loss: 1/9)
    beta: float = field(default=1.0, metadata={"range": "> 0"})


# ----------------------------------------------------------------------------- choices

# key of LossConfig -> (role, stage, the registered terms it may name, in registry order).
# The terms themselves are :data:`pedcrowd.losses.registry.TERMS` (torch); a test checks
# that the two agree.
TERM_CHOICES: dict[str, tuple[Role, Stage, tuple[str, ...]]] = {
    "cls": ("cls", "roi", ("ce", "focal", "ghm", "qfl")),
    "box": ("box", "roi", ("smooth_l1", "ghm", "kl")),
    "sampler": ("sampler", "roi", ("random", "ohem", "pisa")),
    "rpn_cls": ("cls", "rpn", ("bce", "focal")),
    "rpn_box": ("box", "rpn", ("smooth_l1",)),
}


@dataclass
class LossConfig:
    """Training losses of both stages: which registered term computes each, and every
    technique's options (no crowd loss by default).

    The term keys hold plain strings (not ``Literal``): the config loader checks a
    ``Literal`` itself, and the choices' error should name the term's role and stage.
    """

    cls: str = "ce"  # RoI head classification loss: ce | focal | ghm | qfl
    box: str = "smooth_l1"  # RoI head box loss: smooth_l1 | ghm | kl
    sampler: str = "random"  # how the RoI head picks its training RoIs: random | ohem | pisa
    rpn_cls: str = "bce"  # the RPN's objectness loss: bce | focal
    rpn_box: str = "smooth_l1"  # the RPN's box loss: smooth_l1
    # the weights of those four losses (0 skips one); the extra terms' and the sampler's
    # weights are in their sections (nms.lambda_pull, rep.alpha, pisa.carl_weight)
    cls_weight: float = field(default=1.0, metadata={"range": ">= 0"})
    box_weight: float = field(default=1.0, metadata={"range": ">= 0"})
    rpn_cls_weight: float = field(default=1.0, metadata={"range": ">= 0"})
    rpn_box_weight: float = field(default=1.0, metadata={"range": ">= 0"})
    nms: NmsLossConfig = field(default_factory=NmsLossConfig)
    rep: RepLossConfig = field(default_factory=RepLossConfig)
    focal: FocalConfig = field(default_factory=FocalConfig)
    ghm: GhmConfig = field(default_factory=GhmConfig)
    qfl: QflConfig = field(default_factory=QflConfig)
    ohem: OhemConfig = field(default_factory=OhemConfig)
    pisa: PisaConfig = field(default_factory=PisaConfig)
    kl: KlLossConfig = field(default_factory=KlLossConfig)

    def __post_init__(self) -> None:
        for key, (role, _, names) in TERM_CHOICES.items():
            name = getattr(self, key)
            if name not in names:
                raise PedcrowdError(
                    f"loss.{key}: unknown {role} term {name!r} (choose one of: {', '.join(names)})"
                )


# ----------------------------------------------------------------------------- presets

# The papers' settings, as dicts of ``loss.`` fields (a dotted key sets a field of a
# section). NMS-Loss: the official CityPersons loss (FinalNMSLoss: lambda_pull 0.1,
# lambda_push 0.001, both scores detached). Its stage is the config's (the demo keeps
# pedcrowd's roi stage; configs/nms_loss_*.yaml use the official rpn stage).
# RepLoss: alpha = beta = 0.5, sigma 1.0 / 0.0.
_NMS_CITYPERSONS = {
    "nms.lambda_pull": 0.1,
    "nms.lambda_push": 0.001,
    "nms.add_gt": True,
    "nms.pull_relax": True,
    "nms.push_relax": False,
    "nms.detach_pull_score": True,
    "nms.pull_grad": "dup",
}
_NMS_OFF = {"nms.lambda_pull": 0.0, "nms.lambda_push": 0.0}
_REP_PAPER = {"rep.alpha": 0.5, "rep.beta": 0.5, "rep.sigma_gt": 1.0, "rep.sigma_box": 0.0}
_REP_OFF = {"rep.alpha": 0.0, "rep.beta": 0.0}

LOSS_PRESETS: dict[str, dict[str, object]] = {
    "none": {**_NMS_OFF, **_REP_OFF},
    "nms": {**_NMS_CITYPERSONS, **_REP_OFF},
    "rep": {**_NMS_OFF, **_REP_PAPER},
    "nms+rep": {**_NMS_CITYPERSONS, **_REP_PAPER},
}


def set_loss_fields(cfg: Any, values: dict[str, object]) -> Any:
    """A copy of the ``loss:`` section with ``{"nms.lambda_pull": 0.1, "cls": "focal"}`` set."""
    top: dict[str, object] = {}
    sections: dict[str, dict[str, object]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if name:
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, fields_ in sections.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **fields_)
    return dataclasses.replace(cfg, **top)


def apply_loss_preset(cfg: Any, name: str) -> Any:
    """A copy of ``cfg`` (the ``loss:`` section) with preset ``name`` applied.

    Fields a preset does not name (``nms.stage``, ``cls``, ...) keep their values;
    a preset that leaves a crowd loss out sets its weights to 0.

    Args:
        cfg: the config's ``loss:`` section.
        name: one of ``LOSS_PRESETS`` ("none", "nms", "rep", "nms+rep").
    """
    if name not in LOSS_PRESETS:
        choices = ", ".join(LOSS_PRESETS)
        raise PedcrowdError(f"--loss: unknown loss preset {name!r} (choose one of: {choices})")
    return set_loss_fields(cfg, LOSS_PRESETS[name])
