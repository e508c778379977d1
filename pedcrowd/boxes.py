"""Box format conversions at the file-format edges (numpy; torch code uses torchvision.ops)."""

from __future__ import annotations

import numpy as np


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] ``x, y, w, h`` -> [K, 4] ``x1, y1, x2, y2``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[K, 4] ``x1, y1, x2, y2`` -> [K, 4] ``x, y, w, h``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
