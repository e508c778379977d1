"""Readable pictures: score labels of dense groups (analyze's row names and AP: test_analyze.py)."""

from __future__ import annotations

import numpy as np

from pedcrowd.vis import draw_detections, place_label


def _overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def test_labels_of_a_dense_group_do_not_overlap():
    # eight people 6 px apart, each label 30 x 12: side by side they would all collide
    boxes = [(100 + 6 * k, 50, 140 + 6 * k, 150) for k in range(8)]
    taken: list[tuple[int, int, int, int]] = []
    for box in boxes:
        place_label(taken, box, 30, 12, 400, 300)
    assert taken[0] == (100, 38, 130, 50)  # the first sits above its box's top-left corner
    assert taken[1] == (106, 50, 136, 62)  # the next: both corners above are taken, inside its top
    assert all(_overlap(a, b) == 0 for i, a in enumerate(taken) for b in taken[i + 1:])
    assert all(0 <= x0 and x1 <= 400 and 0 <= y0 and y1 <= 300 for x0, y0, x1, y1 in taken)


def test_label_at_the_image_top_stays_inside():
    taken: list[tuple[int, int, int, int]] = []
    assert place_label(taken, (10, 0, 50, 80), 30, 12, 100, 100) == (10, 0)


def test_draw_detections_labels_a_dense_group():
    image = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[50 + 5 * k, 40, 90 + 5 * k, 160] for k in range(6)], float)
    out = draw_detections(image, boxes, np.linspace(0.9, 0.5, 6), score_thr=0.3)
    assert out.shape == image.shape and out.any()
