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

IMAGE_MEAN = [0.485, 0.456, 0.406]  # torchvision's ImageNet statistics, for every backbone
IMAGE_STD = [0.229, 0.224, 0.225]


class PedTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes ``target["ignore_boxes"]`` with the image
    (and at inference the detections' ``box_std`` back with the boxes).

    With ``train_scale`` set, training images are scaled by that factor instead of
    to ``min_size`` (the official NMS-Loss pipeline crops a fixed fraction of each
    image and trains on it at a fixed scale: 1x on CityPersons, 2x on Caltech);
    inference always resizes to ``min_size`` / ``max_size``.
    """

    def __init__(self, *args, train_scale: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_scale = train_scale

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if self.training and self.train_scale is not None:
            return self.scale(image, target, self.train_scale)
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

    @staticmethod
    def scale(
        image: torch.Tensor, target: dict[str, torch.Tensor] | None, factor: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``image`` [C, H, W] scaled by ``factor`` (bilinear), its boxes with it."""
        if factor == 1.0:
            return image, target
        original_size = image.shape[-2:]
        image = torch.nn.functional.interpolate(
            image[None], scale_factor=factor, mode="bilinear", align_corners=False,
            recompute_scale_factor=True,
        )[0]  # fmt: skip
        if target is not None:
            for key in ("boxes", "ignore_boxes"):
                if key in target:
                    target[key] = resize_boxes(target[key].reshape(-1, 4), original_size, image.shape[-2:])
        return image, target
