"""torchvision's input transform, also rescaling ignore boxes and predicted box deviations.

``GeneralizedRCNNTransform.resize`` rescales ``boxes`` (and masks, keypoints)
but leaves other target keys alone; the ignore rule compares anchors in the
resized input with ``ignore_boxes``, so they must be scaled the same way.
The transform never flips: augmentation happens in the data pipeline, before
the model, where boxes and ignore boxes are flipped together. At inference
``postprocess`` maps ``box_std`` (the KL head's per-edge deviations) back to
the original image like the boxes.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


class PedTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes ``target["ignore_boxes"]`` with the image
    and the detections' ``box_std`` back with the boxes."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        original_size = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None and "ignore_boxes" in target:
            ignore = target["ignore_boxes"].reshape(-1, 4)
            target["ignore_boxes"] = resize_boxes(ignore, original_size, image.shape[-2:])
        return image, target

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        if not self.training:
            for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes, strict=True):
                if "box_std" in pred:  # per-axis scale factors, like the edges themselves
                    pred["box_std"] = resize_boxes(pred["box_std"], im_s, o_im_s)
        return super().postprocess(result, image_shapes, original_image_sizes)
