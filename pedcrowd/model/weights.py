"""``load_weights``: a pedcrowd checkpoint or a torchvision state dict into a built detector."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pedcrowd.errors import PedcrowdError
from pedcrowd.safeload import load_tensor_file

log = logging.getLogger(__name__)


@dataclass
class WeightsReport:
    """What :func:`load_weights` did with each key of the file."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # in both, different shapes (left as built)


def load_weights(model: torch.nn.Module, path: str | Path) -> WeightsReport:
    """Load a pedcrowd checkpoint (a dict with a ``model`` state dict) or a torchvision state dict.

    Tensors whose shapes differ (e.g. a COCO detector's 91-class predictor or its
    3-anchor RPN head) are skipped and reported, so a torchvision detector can
    seed a pedcrowd one; every backbone tensor must be present.

    Raises:
        PedcrowdError: the file is missing or unreadable, holds objects other
            than tensors and plain containers (refused, not run), is not a state
            dict, loads nothing, or lacks backbone tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise PedcrowdError(
            f"model.weights: {path} is not a file (expected none, imagenet, coco or a checkpoint path)"
        )
    # weights_only=True: a file holding anything but tensors, containers and numbers
    # is refused, never executed (pedcrowd's own checkpoints hold only those).
    obj = load_tensor_file(path, "model.weights")
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PedcrowdError(
            f"model.weights: {path} holds neither a state dict nor a checkpoint with a 'model' entry"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP wrapper

    own = model.state_dict()
    report = WeightsReport()
    compatible = {}
    for key, value in state.items():
        if key not in own:
            if not key.endswith("num_batches_tracked"):  # BN counter vs FrozenBatchNorm2d
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(
                f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
        else:
            compatible[key] = value
            report.loaded.append(key)
    # BatchNorm's step counter is not a weight (FrozenBatchNorm2d has none)
    report.missing = [
        k for k in own if k not in compatible and not k.endswith("num_batches_tracked")
    ]
    missing_backbone = [k for k in report.missing if k.startswith("backbone.")]
    if not compatible or missing_backbone:
        shown = ", ".join((missing_backbone or report.missing)[:5])
        raise PedcrowdError(
            f"model.weights: {path} does not fit this model ({len(report.loaded)} tensors match, "
            f"{len(report.missing)} missing, e.g. {shown}; {len(report.unexpected)} unexpected"
            f"{', e.g. ' + ', '.join(report.unexpected[:3]) if report.unexpected else ''}); "
            "check model.backbone"
        )
    model.load_state_dict(compatible, strict=False)
    for kind in ("missing", "unexpected", "mismatched"):
        keys = getattr(report, kind)
        if keys:
            log.warning(
                "model.weights %s: %d %s tensors left as built: %s",
                path,
                len(keys),
                kind,
                ", ".join(keys[:5]),
            )
    return report
