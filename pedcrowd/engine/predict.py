"""Running a detector over images: the one loop the evaluation during training, ``pedcrowd
infer`` and ``pedcrowd analyze`` share.

:func:`configure_postprocess` sets how the second stage turns scored boxes
into detections (the ``postprocess:`` config section and the score / NMS
thresholds); :func:`run_detector` batches images through the model in
inference mode and yields each batch's outputs on the CPU;
:func:`output_records` turns one output into results-format entries (with
``bbox_std`` when the model has the KL head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.detections import output_to_xywh, results_entries
from pedcrowd.model.config import PostprocessConfig

T = TypeVar("T")


def output_stage(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding the final score / NMS thresholds: Faster R-CNN's
    ``roi_heads``, FCOS itself."""
    return getattr(model, "roi_heads", model)


def configure_postprocess(
    model: torch.nn.Module,
    cfg: PostprocessConfig | None = None,
    score_thr: float | None = None,
    nms_thr: float | None = None,
) -> None:
    """Set the second stage's post-processing; None keeps the model's own value.

    Raises:
        PedcrowdError: variance voting for a model without the KL head, or
            anything but hard NMS for FCOS or a plain torchvision detector.
    """
    heads = output_stage(model)
    if cfg is not None:
        if hasattr(heads, "set_postprocess"):
            heads.set_postprocess(cfg)
        elif cfg != PostprocessConfig():  # FCOS, a plain torchvision detector: hard NMS only
            raise PedcrowdError(
                f"postprocess {cfg.describe()}: needs a pedcrowd Faster R-CNN (its RoI heads); "
                f"this {type(model).__name__} only does hard NMS"
            )
    if score_thr is not None:
        heads.score_thresh = float(score_thr)
    if nms_thr is not None:
        heads.nms_thresh = float(nms_thr)


def run_detector(
    model: torch.nn.Module,
    items: Iterable[T],
    image_of: Callable[[T], torch.Tensor],
    *,
    device: torch.device,
    batch_size: int = 4,
) -> Iterator[list[tuple[T, dict[str, torch.Tensor]]]]:
    """Run ``model`` (eval mode, inference mode) over ``items`` in batches.

    Args:
        items: anything; ``image_of(item)`` is its [3, H, W] float image in [0, 1].
        device: where the model runs (it is moved there).

    Yields:
        Per batch, (item, output) pairs in input order; ``output`` holds
        ``boxes`` [D, 4] xyxy, ``scores`` [D], ``labels`` [D] and, with the KL
        head, ``box_std`` [D, 4], all on the CPU, in the image's own pixels.
    """
    model.to(device).eval()
    batch: list[T] = []

    def flush() -> list[tuple[T, dict[str, torch.Tensor]]]:
        with torch.inference_mode():
            outputs = model([image_of(it).to(device, non_blocking=True) for it in batch])
        outputs = [{k: v.cpu() for k, v in out.items()} for out in outputs]
        return list(zip(batch, outputs, strict=True))

    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield flush()
            batch = []
    if batch:
        yield flush()


def output_records(
    output: dict[str, torch.Tensor], image_id: int, file_name: str
) -> list[dict[str, Any]]:
    """One image's output -> results-format dicts (``bbox`` xywh), plus ``bbox_std``
    (x1, y1, x2, y2 standard deviations in pixels) when the output has ``box_std``."""
    boxes_xywh, scores = output_to_xywh(output)
    records = results_entries(image_id, file_name, boxes_xywh, scores)
    if "box_std" in output:
        for record, std in zip(records, output["box_std"].double().tolist(), strict=True):
            record["bbox_std"] = std
    return records
