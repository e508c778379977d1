"""torchvision's input transform, also rescaling the targets' ignore boxes.

``GeneralizedRCNNTransform.resize`` rescales ``boxes`` (and masks, keypoints)
but leaves other target keys alone; the ignore rule compares anchors in the
resized input with ``ignore_boxes``, so they must be scaled the same way.
The transform never flips: augmentation happens in the data pipeline, before
the model, where boxes and ignore boxes are flipped together.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


class PedTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes ``target["ignore_boxes"]`` with the image."""

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        original_size = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None and "ignore_boxes" in target:
            ignore = target["ignore_boxes"].reshape(-1, 4)
            target["ignore_boxes"] = resize_boxes(ignore, original_size, image.shape[-2:])
        return image, target
