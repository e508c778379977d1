"""Pure-numpy drawing and resampling for the synthetic crowds.

The synthetic data set must be the same bytes on every machine and with every
library version, or the README's demo numbers move with whatever opencv a fresh
install resolves (opencv-python 4.x and 5.x rasterise ellipses, thick lines and
the 3 x 3 Gaussian blur differently; the uint8 paths are SIMD fixed-point code
that changes between releases). These functions use only numpy element-wise
arithmetic on float32/float64 and integer indexing, which IEEE 754 makes
exact and identical everywhere; no reductions over pixel values (their order
may vary with SIMD), no BLAS, no numpy transcendental functions (SIMD
approximations differ by CPU); the few ``exp``/``sin`` values come from Python's
``math`` on scalars.

Conventions (cv2's): a pixel's centre is at integer coordinates ``(x, y)``,
colours are BGR tuples, ``img`` may be [H, W] or [H, W, C]; everything draws in
place and clips to the image.
"""

from __future__ import annotations

import math

import numpy as np


def _grid(img: np.ndarray, x0: float, y0: float, x1: float, y1: float):
    """Integer pixel ranges covering [x0, x1] x [y0, y1] inside ``img``, or None when empty."""
    h, w = img.shape[:2]
    xa, xb = max(0, math.floor(x0)), min(w - 1, math.ceil(x1))
    ya, yb = max(0, math.floor(y0)), min(h - 1, math.ceil(y1))
    if xb < xa or yb < ya:
        return None
    xs = np.arange(xa, xb + 1, dtype=np.float64)[None, :]  # [1, w']
    ys = np.arange(ya, yb + 1, dtype=np.float64)[:, None]  # [h', 1]
    return (slice(ya, yb + 1), slice(xa, xb + 1)), xs, ys


def _value(img: np.ndarray, color) -> np.ndarray:
    """``color`` for ``img``: one value for a 2-D image; rounded and saturated for integer images
    (cv2's ``saturate_cast``)."""
    value = np.asarray(color, dtype=np.float64)
    if img.ndim == 2 and value.size > 1:
        value = value.reshape(-1)[0]
    if img.dtype.kind in "ui":
        value = np.clip(np.rint(value), 0, np.iinfo(img.dtype).max)
    return value


def _paint(img: np.ndarray, region, inside: np.ndarray, color) -> None:
    img[region][inside] = _value(img, color)


def fill_rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color) -> None:
    """Fill the rectangle with corners ``(x0, y0)`` and ``(x1, y1)``, both included."""
    h, w = img.shape[:2]
    xa, xb = max(0, min(x0, x1)), min(w - 1, max(x0, x1))
    ya, yb = max(0, min(y0, y1)), min(h - 1, max(y0, y1))
    if xb >= xa and yb >= ya:
        img[ya : yb + 1, xa : xb + 1] = _value(img, color)


def frame_rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, color, thickness: int) -> None:
    """The border of a rectangle, ``thickness`` pixels wide, inside the corners."""
    t = max(1, thickness)
    fill_rect(img, x0, y0, x1, y0 + t - 1, color)
    fill_rect(img, x0, y1 - t + 1, x1, y1, color)
    fill_rect(img, x0, y0, x0 + t - 1, y1, color)
    fill_rect(img, x1 - t + 1, y0, x1, y1, color)


def fill_polygon(img: np.ndarray, points, color) -> None:
    """Fill a polygon with sub-pixel vertices ``[(x, y), ...]`` (pixel centres inside, even-odd)."""
    pts = np.asarray(points, dtype=np.float64)
    grid = _grid(img, pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max())
    if grid is None:
        return
    region, xs, ys = grid
    inside = np.zeros((ys.shape[0], xs.shape[1]), bool)
    for (xa, ya), (xb, yb) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if ya == yb:
            continue
        crosses = (ya <= ys) != (yb <= ys)  # [h', 1]: this edge spans the row
        x_at = xa + (ys - ya) * ((xb - xa) / (yb - ya))  # [h', 1]
        inside ^= crosses & (xs <= x_at)
    _paint(img, region, inside, color)


def draw_line(img: np.ndarray, p0, p1, thickness: float, color) -> None:
    """A line of ``thickness`` pixels with round ends: pixels within thickness/2 of the segment."""
    (xa, ya), (xb, yb) = (float(v) for v in p0), (float(v) for v in p1)
    r = max(0.5, thickness / 2.0)
    grid = _grid(img, min(xa, xb) - r, min(ya, yb) - r, max(xa, xb) + r, max(ya, yb) + r)
    if grid is None:
        return
    region, xs, ys = grid
    dx, dy = xb - xa, yb - ya
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        t = np.zeros((1, 1))
    else:
        t = np.clip(((xs - xa) * dx + (ys - ya) * dy) / length2, 0.0, 1.0)
    ex, ey = xs - (xa + t * dx), ys - (ya + t * dy)
    _paint(img, region, ex * ex + ey * ey <= r * r, color)


def fill_ellipse(img: np.ndarray, center, axes, color, upper_half: bool = False) -> None:
    """A filled axis-aligned ellipse; ``upper_half``: only the rows at or above the centre."""
    cx, cy = (float(v) for v in center)
    ax, ay = (float(v) + 0.5 for v in axes)  # half a pixel: a 1-pixel axis still covers 3 pixels
    grid = _grid(img, cx - ax, cy - ay, cx + ax, cy + (0.0 if upper_half else ay))
    if grid is None:
        return
    region, xs, ys = grid
    u, v = (xs - cx) / ax, (ys - cy) / ay
    inside = u * u + v * v <= 1.0
    if upper_half:
        inside &= ys <= cy
    _paint(img, region, inside, color)


def fill_circle(img: np.ndarray, center, radius: float, color) -> None:
    fill_ellipse(img, center, (radius, radius), color)


def _linear_taps(n_out: int, n_in: int):
    """Source indices and weights of bilinear resampling along one axis (cv2's half-pixel grid)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1.0)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def resize_linear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an [H, W] or [H, W, C] array to [h, w] (float32 result)."""
    a = img.astype(np.float32, copy=False)
    # Columns first, then whole rows: gathering rows copies contiguous memory (3x faster).
    c0, c1, fc = _linear_taps(w, a.shape[1])
    fc = fc.reshape((1, -1) + (1,) * (a.ndim - 2))
    cols = np.take(a, c0, axis=1) * (1.0 - fc) + np.take(a, c1, axis=1) * fc
    r0, r1, fr = _linear_taps(h, a.shape[0])
    fr = fr.reshape((-1,) + (1,) * (a.ndim - 1))
    return cols[r0] * (1.0 - fr) + cols[r1] * fr


def gaussian_blur3(img: np.ndarray, sigma: float) -> np.ndarray:
    """3 x 3 Gaussian blur of a uint8 image (edges mirrored without repeating the border pixel)."""
    side = math.exp(-1.0 / (2.0 * sigma * sigma))
    k_side, k_mid = np.float32(side / (1.0 + 2.0 * side)), np.float32(1.0 / (1.0 + 2.0 * side))
    a = np.pad(img.astype(np.float32), ((1, 1), (1, 1), (0, 0))[: img.ndim], mode="reflect")
    rows = k_side * (a[:-2] + a[2:]) + k_mid * a[1:-1]
    out = k_side * (rows[:, :-2] + rows[:, 2:]) + k_mid * rows[:, 1:-1]
    return to_uint8(out)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer (halves to even) and saturate to [0, 255]."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
