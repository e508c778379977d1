"""Pretrained torchvision weights: fetched as torchvision fetches them, mapped onto pedcrowd's detectors.

Files come through torchvision's own loader (``WeightsEnum.get_state_dict``, that is
``torch.hub.load_state_dict_from_url``): the file in the torch hub cache
(``$TORCH_HOME/hub/checkpoints``) when it is there, no network needed; otherwise a
download with a progress bar on stderr whose sha256 must start with the hash in the
file name (a file that fails the check is deleted, never left in the cache).
``PEDCROWD_OFFLINE=1`` forbids downloads (clusters without internet): a file missing
from the cache is then an error naming the URL and the path to put it at.

COCO starts (``model.weights: coco``, ResNet-50-FPN only): :func:`coco_state_dict`
maps torchvision's COCO detector onto pedcrowd's one-class one. Faster R-CNN takes
the backbone, FPN, box head and the box predictor's background and person rows; its
RPN head only where pedcrowd's anchors are COCO's (else it is re-initialised, and
logged). FCOS takes the backbone, the FPN levels it shares (torchvision's FCOS builds
P3-P7 from C3-C5 with two extra convolutions; pedcrowd's P2-P6 from C2-C5 with
max-pooling), the head's towers, regression and centre-ness, and the person row of
the classifier (FCOS has no background row: its scores are per-class sigmoids).
"""

from __future__ import annotations

import logging
import os
import re
import urllib.error
from pathlib import Path
from typing import Any

import torch

from pedcrowd.errors import PedcrowdError

log = logging.getLogger(__name__)

OFFLINE_ENV = "PEDCROWD_OFFLINE"
COCO_PERSON = 1  # torchvision's COCO category index of "person" (0 is background)
# torchvision's COCO Faster R-CNN anchors: one size per level, three ratios (h / w)
COCO_ANCHOR_SIZES = (32, 64, 128, 256, 512)
COCO_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def downloads_forbidden() -> bool:
    """Whether ``PEDCROWD_OFFLINE`` is set to anything but empty, 0, false or no."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_path(url: str) -> Path:
    """Where torch.hub keeps the file of ``url`` (``torch.hub.get_dir()/checkpoints/NAME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch_state_dict(weights: Any, what: str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights entry (``ResNet50_Weights.IMAGENET1K_V1``, ...).

    Args:
        weights: a ``torchvision.models.WeightsEnum`` member.
        what: the config key and value for messages, e.g. ``model.weights: imagenet``.

    Raises:
        PedcrowdError: downloads forbidden and the file not cached; no network; a
            download that fails the sha256 check; a cached file torch cannot read.
    """
    url, path = weights.url, cache_path(weights.url)
    put_it = f"download {url} and put it at {path} (the torch hub cache, $TORCH_HOME/hub/checkpoints)"
    if not path.is_file() and downloads_forbidden():
        raise PedcrowdError(f"{what}: {path.name} is not in the cache and {OFFLINE_ENV} forbids downloads; {put_it}")
    if not path.is_file():
        log.info("%s: downloading %s to %s", what, url, path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, map_location="cpu", weights_only=True)
    except urllib.error.URLError as e:  # HTTPError too: no network, proxy, 404
        reason = getattr(e, "reason", e)
        raise PedcrowdError(f"{what}: cannot download {url} ({reason}); {put_it}") from None
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise PedcrowdError(
                f"{what}: the file downloaded from {url} failed torchvision's sha256 check "
                f"({_short(e)}); it was not kept in {path.parent}"
            ) from None
        raise PedcrowdError(f"{what}: cannot read {path} ({_short(e)}); delete it to download it again") from None
    except (OSError, EOFError, ValueError, TypeError) as e:  # truncated or foreign file in the cache
        raise PedcrowdError(f"{what}: cannot read {path} ({_short(e)}); delete it to download it again") from None


def _short(e: BaseException) -> str:
    return re.sub(r"\s+", " ", str(e)).strip()[:160]


def coco_weights(arch: str):
    """torchvision's COCO weights entry of the ResNet-50-FPN detector of ``arch``."""
    from torchvision.models.detection import (
        FasterRCNN_ResNet50_FPN_Weights,
        FCOS_ResNet50_FPN_Weights,
    )

    return {"faster_rcnn": FasterRCNN_ResNet50_FPN_Weights.COCO_V1, "fcos": FCOS_ResNet50_FPN_Weights.COCO_V1}[arch]


def coco_state_dict(
    coco: dict[str, torch.Tensor], arch: str, *, anchor_sizes: tuple[int, ...] = COCO_ANCHOR_SIZES,
    aspect_ratios: tuple[float, ...] = COCO_ASPECT_RATIOS,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision's COCO state dict as pedcrowd's one-class detector's tensors.

    Args:
        coco: the state dict of ``fasterrcnn_resnet50_fpn`` / ``fcos_resnet50_fpn`` (COCO).
        arch: ``faster_rcnn`` or ``fcos``.
        anchor_sizes, aspect_ratios: pedcrowd's Faster R-CNN anchors; the RPN head
            is taken only when they are COCO's.

    Returns:
        (state dict to load into pedcrowd's model, notes on what was left as built).
    """
    notes = []
    if arch == "faster_rcnn":
        state = {k: v for k, v in coco.items() if not k.startswith("roi_heads.box_predictor.")}
        cls_w, cls_b = coco["roi_heads.box_predictor.cls_score.weight"], coco["roi_heads.box_predictor.cls_score.bias"]
        box_w, box_b = coco["roi_heads.box_predictor.bbox_pred.weight"], coco["roi_heads.box_predictor.bbox_pred.bias"]
        rows = [0, COCO_PERSON]  # [2] background, person
        box_rows = [4 * c + i for c in rows for i in range(4)]  # [8] each class's dx, dy, dw, dh
        state["roi_heads.box_predictor.cls_score.weight"] = cls_w[rows].clone()  # [2, 1024]
        state["roi_heads.box_predictor.cls_score.bias"] = cls_b[rows].clone()  # [2]
        state["roi_heads.box_predictor.bbox_pred.weight"] = box_w[box_rows].clone()  # [8, 1024]
        state["roi_heads.box_predictor.bbox_pred.bias"] = box_b[box_rows].clone()  # [8]
        same_anchors = tuple(int(s) for s in anchor_sizes) == COCO_ANCHOR_SIZES and tuple(
            float(r) for r in aspect_ratios) == COCO_ASPECT_RATIOS
        if not same_anchors:
            state = {k: v for k, v in state.items() if not k.startswith("rpn.head.")}
            notes.append(
                f"RPN head re-initialised: anchors sizes {list(anchor_sizes)} ratios {list(aspect_ratios)} "
                f"are not COCO's (sizes {list(COCO_ANCHOR_SIZES)}, ratios {list(COCO_ASPECT_RATIOS)})"
            )
        return state, notes
    if arch == "fcos":
        state = {}
        for key, value in coco.items():
            m = re.match(r"backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(.*)", key)
            if m:  # torchvision's FPN level k (C3..C5) is pedcrowd's level k + 1 (C2..C5)
                state[f"backbone.fpn.{m[1]}.{int(m[2]) + 1}.{m[3]}"] = value
            elif key.startswith("backbone.fpn.extra_blocks."):
                continue  # P6/P7 convolutions: pedcrowd max-pools P6
            elif key.startswith("head.classification_head.cls_logits."):
                state[key] = value[COCO_PERSON : COCO_PERSON + 1].clone()  # [1, ...] the person row
            else:
                state[key] = value
        notes.append("FPN: C2's lateral and output convolutions left as built (torchvision's FCOS has no P2)")
        return state, notes
    raise PedcrowdError(f"model.weights: coco is for model.arch faster_rcnn or fcos, not {arch!r}")


def load_coco_into(model: torch.nn.Module, cfg) -> None:
    """Load torchvision's COCO weights into the pedcrowd detector ``model`` built from ``cfg``.

    Raises:
        PedcrowdError: a backbone other than resnet50_fpn, a box head width other than
            COCO's 1024, or tensors that do not fit (each named).
    """
    if cfg.backbone != "resnet50_fpn":
        raise PedcrowdError(
            f"model.weights: coco needs model.backbone resnet50_fpn (torchvision's COCO detectors), "
            f"not {cfg.backbone}"
        )
    raw = fetch_state_dict(coco_weights(cfg.arch), "model.weights: coco")
    state, notes = coco_state_dict(
        _weights_only(current_coco_names(raw, cfg.arch)), cfg.arch,
        anchor_sizes=tuple(cfg.anchor_sizes), aspect_ratios=tuple(cfg.aspect_ratios),
    )
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        hint = "; set model.representation_size: 1024 (COCO's box head)" if any("box_head" in b for b in bad) else ""
        raise PedcrowdError(f"model.weights: coco: {len(bad)} tensors do not fit, e.g. {bad[0]}{hint}")
    unknown = [k for k in state if k not in own]
    if unknown:
        raise PedcrowdError(f"model.weights: coco: {len(unknown)} tensors have no place in the model, e.g. {unknown[0]}")
    # FrozenBatchNorm2d eps stays 1e-5 (torchvision's COCO_V1 builder sets 0): eps is not in
    # the state dict, so a checkpoint rebuilt for inference gets 1e-5 again, as in training
    model.load_state_dict(state, strict=False)
    built = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    for note in notes:
        log.warning("model.weights: coco: %s", note)
    log.info("model.weights: coco: %d tensors loaded, %d left as built%s", len(state), len(built),
             f" ({', '.join(built[:4])}{', ...' if len(built) > 4 else ''})" if built else "")


def current_coco_names(state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """``state`` under the key names of the installed torchvision.

    torchvision's hosted COCO files predate the FPN's and the RPN head's current layout
    (``backbone.fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight`` where the modules now
    say ``...inner_blocks.0.0.weight``, ``rpn.head.conv.0.0.weight``); torchvision renames
    them only inside ``load_state_dict`` (the modules' version hooks). So the file is loaded
    into torchvision's own architecture first and read back.
    """
    from torchvision.models.detection import fasterrcnn_resnet50_fpn, fcos_resnet50_fpn

    build = {"faster_rcnn": fasterrcnn_resnet50_fpn, "fcos": fcos_resnet50_fpn}.get(arch)
    if build is None:
        raise PedcrowdError(f"model.weights: coco is for model.arch faster_rcnn or fcos, not {arch!r}")
    reference = build(weights=None, weights_backbone=None, num_classes=91)
    try:
        reference.load_state_dict(state)
    except RuntimeError as e:  # not torchvision's COCO architecture
        first = str(e).splitlines()[0]
        raise PedcrowdError(f"model.weights: coco: the file is not torchvision's COCO {arch} ({first})") from None
    return reference.state_dict()


def _weights_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without BatchNorm's step counters (not weights; torchvision's COCO files,
    saved from FrozenBatchNorm2d models, have none)."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def coco_person_detector(min_size: int = 800, max_size: int = 1333) -> torch.nn.Module:
    """torchvision's COCO Faster R-CNN (ResNet-50-FPN) as it is, weights from the hub cache
    (downloaded as :func:`fetch_state_dict`), answering with its person detections only.

    Built as ``fasterrcnn_resnet50_fpn(weights=COCO_V1)`` builds it (frozen BatchNorm with
    eps 0, 91 classes, torchvision's thresholds); ``min_size``/``max_size``: its transform's
    sizes (torchvision's defaults 800/1333).
    """
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    state = _weights_only(fetch_state_dict(coco_weights("faster_rcnn"), "--weights coco"))
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = FasterRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PedcrowdError(f"--weights coco: {coco_weights('faster_rcnn').url} does not fit "
                            f"torchvision's fasterrcnn_resnet50_fpn ({_short(e)})") from None
    from torchvision.models.detection._utils import overwrite_eps

    overwrite_eps(model, 0.0)  # torchvision's builder does this for COCO_V1 (FrozenBatchNorm2d eps 0)
    return CocoPersons(model)


class CocoPersons(torch.nn.Module):
    """A torchvision COCO detector whose outputs keep the person class only (label 1, the
    pedestrian label of pedcrowd too): exactly torchvision's own person detections, with its
    transform, score threshold (0.05), per-class NMS (0.5) and 100-detection cap."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.roi_heads = detector.roi_heads  # the thresholds pedcrowd infer --score-thr/--nms-thr set

    def forward(self, images, targets=None):
        if self.training:
            raise PedcrowdError("--weights coco is torchvision's COCO model as it is, for inference only")
        outputs = self.detector(images)
        return [{k: v[o["labels"] == COCO_PERSON] for k, v in o.items()} for o in outputs]
