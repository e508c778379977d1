"""Running a detector over images: the one loop the evaluation during training, ``pedcrowd
infer``, ``pedcrowd analyze`` and the benchmarks share.

:func:`load_detector` loads a checkpoint with the post-processing its config
says; :func:`predict` runs a model over a dataset (the val split: the
evaluation during training, analyze, the benchmarks); :func:`run_detector` is
the batching loop under it and under ``pedcrowd infer``.
:func:`configure_postprocess` sets how the second stage turns scored boxes
into detections (the ``postprocess:`` config section and the score / NMS
thresholds); :func:`final_nms_off` turns the final NMS off for a while (the
boxes before it, for ``pedcrowd analyze``); :func:`output_records` and
:func:`detections_to_json` turn outputs into results-format entries.

Shapes: D detections of one image.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from pedcrowd.engine.checkpoint import load_for_inference
from pedcrowd.engine.config import Config, apply_overrides
from pedcrowd.errors import PedcrowdError
from pedcrowd.formats.detections import output_to_xywh, results_entries
from pedcrowd.model.config import PostprocessConfig

Detections = dict[int, tuple[np.ndarray, np.ndarray]]  # image id -> (boxes [D, 4] xywh, scores [D])
MAX_PRE_NMS = 10_000  # detections kept per image while the final NMS is off

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


def load_detector(
    weights: str | Path, *, device: str | torch.device = "cpu", overrides: Sequence[str] = ()
) -> tuple[torch.nn.Module, Config]:
    """A trained detector ready to predict, and its config.

    Args:
        weights: a checkpoint, or a run directory (its ``best.pt``, else ``last.pt``).
        device: where the model is put (eval mode).
        overrides: ``a.b=value`` changes to the stored config (as ``--set``); only the
            sections read after loading matter (``postprocess``, ``data``).

    The post-processing of the config's ``postprocess:`` section is set on the model.
    """
    model, cfg = load_for_inference(weights, device=device)
    if overrides:
        cfg = apply_overrides(cfg, list(overrides))
    configure_postprocess(model, cfg.postprocess)
    return model, cfg


class EvaluationStopped(Exception):  # noqa: N818 - what happened, not an error
    """``should_stop`` returned True during :func:`predict`."""


def predict(
    model: torch.nn.Module, dataset, device: torch.device, batch_size: int = 4,
    should_stop: Callable[[], bool] | None = None,
) -> Detections:
    """Detections of ``model`` on every image of ``dataset`` (eval mode, no augmentation),
    through the loop ``pedcrowd infer`` runs too (:func:`run_detector`).

    Args:
        dataset: items ``(image [3, H, W], target with "image_id")``, e.g. the val split
            (:func:`pedcrowd.data.config.build_dataset`).
        should_stop: checked after every batch; True raises :class:`EvaluationStopped`.

    Returns:
        image id -> (boxes [D, 4] float64 ``x, y, w, h``, scores [D]) in the
        pixels of the dataset's records (the model maps its resize back), the
        input form of :func:`pedcrowd.eval.evaluate`.
    """
    dets: Detections = {}
    items = (dataset[i] for i in range(len(dataset)))
    for batch in run_detector(model, items, lambda item: item[0], device=device,
                              batch_size=batch_size):
        for (_, target), out in batch:
            dets[int(target["image_id"])] = output_to_xywh(out)
        if should_stop is not None and should_stop():
            raise EvaluationStopped
    return dets


def detections_to_json(dets: Detections, records) -> list[dict]:
    """The standard results format (with ``file_name``), one entry per box."""
    names = {int(r.id): r.file_name for r in records}
    out = []
    for image_id in sorted(dets):
        # unrounded, so that evaluating this file reproduces val_eval.json exactly
        out.extend(results_entries(image_id, names.get(image_id, ""), *dets[image_id]))
    return out


@contextlib.contextmanager
def final_nms_off(model: torch.nn.Module, max_dets: int = MAX_PRE_NMS) -> Iterator[tuple[float, int]]:
    """While inside, the model's final NMS suppresses nothing and keeps up to ``max_dets``
    boxes per image; yields the model's own (NMS IoU threshold, detections per image),
    restored on the way out.

    Raises:
        PedcrowdError: the model has no final NMS setting (``nms_thresh``) to turn off.
    """
    heads = output_stage(model)
    if not (hasattr(heads, "nms_thresh") and hasattr(heads, "detections_per_img")):
        raise PedcrowdError("the model has no final NMS setting (nms_thresh) to turn off")
    saved = (heads.nms_thresh, heads.detections_per_img)
    try:
        heads.nms_thresh, heads.detections_per_img = 1.0, max_dets
        yield float(saved[0]), int(saved[1])
    finally:
        heads.nms_thresh, heads.detections_per_img = saved
