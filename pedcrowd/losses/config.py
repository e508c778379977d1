"""The ``loss:`` section of the training config: crowd-loss weights and options.

The defaults add no crowd loss (every weight 0). ``pedcrowd train --loss NAME``
applies one of ``LOSS_PRESETS``, the papers' settings. No torch here, so the
config tree loads fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from pedcrowd.errors import PedcrowdError


@dataclass
class NmsLossConfig:
    """NMS-Loss (Luo et al., ICMR 2021); see ``pedcrowd.losses.nms_loss``."""

    lambda_pull: float = 0.0  # weight of the pull term (0 skips NMS-Loss unless push > 0)
    lambda_push: float = 0.0  # weight of the push term
    nms_thresh: float = 0.5  # N_t: keep equal to the test NMS threshold
    add_gt: bool = True  # GTs join as score-1.0 predictions and become b_max
    pull_relax: bool = True  # -ln(1 - N_t + IoU) (official); False: -ln(IoU) (paper)
    push_relax: bool = False  # -ln(1 + N_t - IoU); False: -ln(1 - IoU) (official)
    detach_pull_score: bool = True  # CityPersons official; Caltech lets pull lower the FP score
    stage: Literal["roi", "rpn", "both"] = "roi"  # which NMS to simulate: box head, RPN, both


@dataclass
class RepLossConfig:
    """Repulsion Loss (Wang et al., CVPR 2018); see ``pedcrowd.losses.repulsion_loss``."""

    alpha: float = 0.0  # weight of RepGT
    beta: float = 0.0  # weight of RepBox
    sigma_gt: float = 1.0  # Smooth_ln sigma of RepGT (paper 1.0: plain -ln(1 - IoG))
    sigma_box: float = 0.0  # Smooth_ln sigma of RepBox (paper 0.0: linear in IoU)


@dataclass
class LossConfig:
    """Crowd losses added to the detector's own losses in training (none by default)."""

    nms: NmsLossConfig = field(default_factory=NmsLossConfig)
    rep: RepLossConfig = field(default_factory=RepLossConfig)


# The papers' settings. NMS-Loss: the official CityPersons config (FinalNMSLoss,
# both scores detached); its Caltech config is lambda_pull = lambda_push = 0.1
# with detach_pull_score=False. RepLoss: alpha = beta = 0.5, sigma 1.0 / 0.0.
_NMS_CITYPERSONS = {
    "lambda_pull": 0.1,
    "lambda_push": 0.001,
    "add_gt": True,
    "pull_relax": True,
    "push_relax": False,
    "detach_pull_score": True,
}
_NMS_OFF = {"lambda_pull": 0.0, "lambda_push": 0.0}
_REP_PAPER = {"alpha": 0.5, "beta": 0.5, "sigma_gt": 1.0, "sigma_box": 0.0}
_REP_OFF = {"alpha": 0.0, "beta": 0.0}

LOSS_PRESETS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    # name: (fields set on loss.nms, fields set on loss.rep)
    "none": (_NMS_OFF, _REP_OFF),
    "nms": (_NMS_CITYPERSONS, _REP_OFF),
    "rep": (_NMS_OFF, _REP_PAPER),
    "nms+rep": (_NMS_CITYPERSONS, _REP_PAPER),
}


def apply_loss_preset(cfg: LossConfig, name: str) -> LossConfig:
    """A copy of ``cfg`` with the weights and options of preset ``name``.

    Fields a preset does not name (``nms_thresh``, ``stage``) keep their values
    from ``cfg``; a preset that leaves a loss out sets its weights to 0.

    Args:
        cfg: the config's ``loss:`` section.
        name: one of ``LOSS_PRESETS`` ("none", "nms", "rep", "nms+rep").
    """
    if name not in LOSS_PRESETS:
        choices = ", ".join(LOSS_PRESETS)
        raise PedcrowdError(f"--loss: unknown loss preset {name!r} (choose one of: {choices})")
    nms_fields, rep_fields = LOSS_PRESETS[name]
    return LossConfig(
        nms=dataclasses.replace(cfg.nms, **nms_fields),
        rep=dataclasses.replace(cfg.rep, **rep_fields),
    )
