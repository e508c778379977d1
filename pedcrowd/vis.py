"""Drawing detections and ground truth on images (BGR uint8, as cv2 reads them).

Shared by ``pedcrowd infer --vis`` and anyone who wants to look at boxes.
Detections are coloured by score through a perceptual colormap (dark purple for
low scores, yellow for high ones) so a glance tells confident boxes from noise;
ground truth is drawn thinner in green, ignore regions in grey, so the two
layers never share a colour with the score ramp.

Shapes: D = number of detections, K = number of GT boxes; boxes are ``xyxy``
absolute pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pedcrowd.errors import PedcrowdError

GT_COLOR = (60, 220, 60)  # BGR green: no colormap value is this green
IGNORE_COLOR = (160, 160, 160)  # BGR grey


def score_colors(scores: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """BGR colours for scores through the plasma colormap.

    Args:
        scores: [D] float scores.
        lo, hi: the score range mapped to the two ends of the colormap.

    Returns:
        [D, 3] uint8 BGR colours.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.clip((scores - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    # Skip the darkest fifth of plasma: near-black boxes vanish on night scenes.
    levels = np.round(255 * (0.2 + 0.8 * t)).astype(np.uint8)
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_PLASMA)
    return lut[levels, 0]


def _thickness(image: np.ndarray) -> int:
    # Scale line width with the image so boxes stay visible on 2048x1024 frames
    # without swamping 64x64 test images.
    return max(1, round(max(image.shape[:2]) / 600))


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_thr: float = 0.3,
    gt_boxes: np.ndarray | None = None,
    gt_ignore: np.ndarray | None = None,
    label_scores: bool = True,
) -> np.ndarray:
    """Draw detections (coloured by score) and optional GT on a copy of ``image``.

    Args:
        image: [H, W, 3] uint8 BGR image; not modified.
        boxes: [D, 4] detection boxes ``xyxy``.
        scores: [D] detection scores; boxes below ``score_thr`` are not drawn.
        score_thr: the lowest score drawn; also the low end of the colour ramp.
        gt_boxes: [K, 4] ground-truth boxes ``xyxy`` (drawn green), or None.
        gt_ignore: [K] bool, GT drawn grey as ignore regions, or None.
        label_scores: write each drawn detection's score above its box.

    Returns:
        [H, W, 3] uint8 BGR annotated copy.
    """
    out = np.ascontiguousarray(image).copy()
    thick = _thickness(out)
    if gt_boxes is not None and len(gt_boxes):
        ignore = np.zeros(len(gt_boxes), bool) if gt_ignore is None else np.asarray(gt_ignore)
        for box, ign in zip(np.asarray(gt_boxes), ignore, strict=True):
            x0, y0, x1, y1 = (round(float(v)) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), IGNORE_COLOR if ign else GT_COLOR, thick)

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = scores >= score_thr
    boxes, scores = boxes[keep], scores[keep]
    # Low scores first so confident boxes end up on top.
    order = np.argsort(scores, kind="stable")
    colors = score_colors(scores, lo=score_thr, hi=1.0)
    font_scale = max(0.4, 0.35 * thick)
    for i in order:
        x0, y0, x1, y1 = (round(float(v)) for v in boxes[i])
        cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in colors[i]), thick + 1)
    if label_scores:
        # Labels after every box, most confident first, each where it overlaps no label
        # placed before: in a dense group they would otherwise cover one another.
        taken: list[tuple[int, int, int, int]] = []
        for i in order[::-1]:
            color = tuple(int(c) for c in colors[i])
            text = f"{scores[i]:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            lx, ly = place_label(taken, boxes[i], tw + 2, th + base + 1, out.shape[1], out.shape[0])
            cv2.rectangle(out, (lx, ly), (lx + tw + 2, ly + th + base + 1), color, -1)
            # Dark text on the bright end of the ramp, white on the dark end.
            ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
            cv2.putText(
                out, text, (lx + 1, ly + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale, ink, 1,
                cv2.LINE_AA,
            )
    return out


def place_label(
    taken: list[tuple[int, int, int, int]], box, w: int, h: int, width: int, height: int
) -> tuple[int, int]:
    """Top-left corner of a ``w`` x ``h`` label for ``box`` (``xyxy``) that overlaps none of
    the ``taken`` label rectangles (``x0, y0, x1, y1``, exclusive ends), inside the image.

    Tried in order: above the box's top-left corner, above its top-right corner, then
    down the box's left and right edges one label height at a time, then below the
    box; when all overlap, the one overlapping least. The chosen rectangle is
    appended to ``taken``.
    """
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    right = max(x0, x1 - w)
    candidates = [(x0, y0 - h), (right, y0 - h)]
    for k in range(max(1, (y1 - y0) // max(h, 1))):
        candidates += [(x0, y0 + k * h), (right, y0 + k * h)]
    candidates += [(x0, y1), (right, y1)]

    def clip(x: int, y: int) -> tuple[int, int]:
        return min(max(x, 0), max(width - w, 0)), min(max(y, 0), max(height - h, 0))

    def overlap(x: int, y: int) -> int:
        return sum(
            max(0, min(x + w, tx1) - max(x, tx0)) * max(0, min(y + h, ty1) - max(y, ty0))
            for tx0, ty0, tx1, ty1 in taken
        )

    best = min((clip(x, y) for x, y in candidates), key=lambda c: (overlap(*c) > 0, overlap(*c)))
    # min keeps the first of equals: the earliest free candidate in the order above
    taken.append((best[0], best[1], best[0] + w, best[1] + h))
    return best


class VisWriter:
    """Writes annotated images under ``root`` (keeping their relative names), and one
    ``NAME_vis.mp4`` per input video (its relative name without the suffix), whose frames
    must arrive consecutively."""

    def __init__(self, root: Path, score_thr: float):
        self.root, self.score_thr = Path(root), score_thr
        self.video_name: str | None = None
        self.writer: cv2.VideoWriter | None = None

    def write(
        self,
        image: np.ndarray,
        name: str,
        boxes: np.ndarray,
        scores: np.ndarray,
        *,
        gt_boxes: np.ndarray | None = None,
        gt_ignore: np.ndarray | None = None,
        video: str | None = None,
        fps: float = 25.0,
    ) -> None:
        """Draw one image or frame (arguments as :func:`draw_detections`) and write it.

        Args:
            name: the image's output name (a relative path); ignored for video frames.
            video: the name of the video the frame belongs to, None for an image.
        """
        drawn = draw_detections(
            image, boxes, scores, score_thr=self.score_thr, gt_boxes=gt_boxes, gt_ignore=gt_ignore
        )
        if video is None:
            path = self.root / name
            if not path.resolve().is_relative_to(self.root.resolve()) or path.is_symlink():
                # names come from collect_sources, which keeps them inside; a link planted
                # in the folder would redirect the write
                raise PedcrowdError(f"{path}: refused: it lies outside {self.root} or is a symbolic link")
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), drawn):
                raise PedcrowdError(f"{path}: cannot write image")
            return
        if video != self.video_name:
            self.close()
            # the video's (distinct, contained) input name: a/clip.mp4 and b/clip.mp4 stay apart
            path = self.root / (Path(video).with_suffix("").as_posix() + "_vis.mp4")
            if not path.resolve().is_relative_to(self.root.resolve()) or path.is_symlink():
                raise PedcrowdError(f"{path}: refused: it lies outside {self.root} or is a symbolic link")
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = drawn.shape[:2]
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            self.video_name = video
        self.writer.write(drawn)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.writer, self.video_name = None, None
