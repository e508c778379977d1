"""The KL-Loss box head: per-edge box offsets and their log-variances.

He et al., "Bounding Box Regression with Uncertainty for Accurate Object
Detection" (CVPR 2019), official code yihui-he/KL-Loss. Its box head
predicts, besides the offsets, ``alpha = log(sigma^2)`` per box edge from the
same fc7 features with its own fully connected layer, weights drawn from
N(0, std 1e-4) and zero bias (``fast_rcnn_heads.py``: ``bbox_pred_std``,
``gauss_fill(0.0001)``), so training starts at sigma = 1. Its KL configs
regress the four edges (``XYXY: True``), not torchvision's centre/log-size
deltas: a variance per edge is what variance voting averages with.

Shapes: R proposals, K classes. Codes are (x1, y1, x2, y2) offsets in units
of the proposal's width (x) or height (y), times ``weights`` (10 each: the
official coder divides all four by ``BBOX_REG_WEIGHTS``' first two).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder

from pedcrowd.precision import at_least_float32

EDGE_WEIGHTS = (10.0, 10.0, 10.0, 10.0)
EDGE_CLIP = 1000.0 / 16  # official BBOX_XFORM_CLIPe: at most 62.5 proposal sizes per edge
STD_INIT = 1e-4  # official gauss_fill(0.0001) of bbox_pred_std


class EdgeBoxCoder(BoxCoder):
    """``t_x1 = w_x1 (x1_gt - x1_p) / w_p``, likewise y1 (height), x2, y2.

    A ``torchvision`` ``BoxCoder`` (same ``encode``/``decode`` over lists), so
    the RoI heads, the losses and ``StageSamples.pred_boxes`` use it unchanged.
    IoUs and widths have no legacy ``+ 1`` pixel (the official coder has it).
    """

    def __init__(self, weights: tuple[float, float, float, float] = EDGE_WEIGHTS,
                 clip: float = EDGE_CLIP) -> None:
        super().__init__(weights, bbox_xform_clip=clip)

    def _scale(self, boxes: torch.Tensor) -> torch.Tensor:
        """[R, 4] pixels per unit code: (w, h, w, h) / weights."""
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        weights = torch.as_tensor(self.weights, dtype=boxes.dtype, device=boxes.device)
        return torch.stack((w, h, w, h), dim=1) / weights

    def encode_single(self, reference_boxes: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """Codes [R, 4] of ``reference_boxes`` (the GT) [R, 4] against ``proposals`` [R, 4]."""
        proposals = proposals.to(reference_boxes.dtype)
        return (reference_boxes - proposals) / self._scale(proposals)

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes [R, K * 4] from codes [R, K * 4] and proposals ``boxes`` [R, 4] (float32
        under autocast, :mod:`pedcrowd.precision`)."""
        rel_codes = at_least_float32(rel_codes)
        boxes = boxes.to(rel_codes.dtype)
        codes = rel_codes.reshape(boxes.shape[0], -1, 4)  # [R,K,4]
        weights = torch.as_tensor(self.weights, dtype=codes.dtype, device=codes.device)
        sizes = self._scale(boxes) * weights  # [R,4] (w, h, w, h)
        offsets = (codes / weights).clamp(-self.bbox_xform_clip, self.bbox_xform_clip)
        return (boxes[:, None, :] + offsets * sizes[:, None, :]).flatten(1)

    def std_pixels(self, log_var: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
        """Standard deviations [R, 4] in pixels of the edges whose codes have
        log-variance ``log_var`` [R, 4] (sigma_px = exp(alpha / 2) * size / weight)."""
        return torch.exp(0.5 * log_var) * self._scale(proposals.to(log_var.dtype))


class KLBoxPredictor(nn.Module):
    """torchvision's ``FastRCNNPredictor`` layers plus ``bbox_log_var``.

    ``forward(x)`` -> (class logits [R, K], box codes [R, K * 4],
    ``{"box_log_var": alpha [R, 4]}``), alpha = log(sigma^2) of the pedestrian
    box's edges (x1, y1, x2, y2); the third output is what the RoI heads hand
    the losses as ``StageSamples.extras``.
    """

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.cls_score = predictor.cls_score
        self.bbox_pred = predictor.bbox_pred
        self.bbox_log_var = nn.Linear(self.bbox_pred.in_features, 4)
        nn.init.normal_(self.bbox_log_var.weight, std=STD_INIT)
        nn.init.zeros_(self.bbox_log_var.bias)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x), {"box_log_var": self.bbox_log_var(x)}
