"""Paired transforms: box coordinates against hand-computed values, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pedcrowd.data.transforms import (
    TrainTransform,
    color_jitter,
    crop,
    hflip,
    resize,
    sample_rng,
)


def _target(boxes, vis=None, ignore=()):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return {
        "boxes": boxes,
        "vis_boxes": boxes.clone() if vis is None else torch.tensor(vis, dtype=torch.float32),
        "labels": torch.arange(1, len(boxes) + 1, dtype=torch.int64),  # distinct, to track rows
        "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        "image_id": 7,
        "file_name": "a.png",
    }


def _image(h: int, w: int) -> torch.Tensor:
    # Distinct values everywhere so that pixel moves can be checked exactly.
    return torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w) / (3 * h * w)


def test_hflip_mirrors_boxes_and_pixels():
    image = _image(4, 10)
    target = _target([[1, 2, 4, 6]], vis=[[2, 2, 3, 5]], ignore=[[0, 0, 10, 1]])
    out_img, out = hflip(image, target)
    # x1' = W - x2, x2' = W - x1 with W = 10.
    assert out["boxes"].tolist() == [[6, 2, 9, 6]]
    assert out["vis_boxes"].tolist() == [[7, 2, 8, 5]]
    assert out["ignore_boxes"].tolist() == [[0, 0, 10, 1]]
    assert torch.equal(out_img[:, :, 0], image[:, :, 9])
    assert out["image_id"] == 7 and out["file_name"] == "a.png"
    back_img, back = hflip(out_img, out)
    assert torch.equal(back_img, image) and torch.equal(back["boxes"], target["boxes"])


def test_resize_scales_boxes_per_axis():
    image = _image(10, 20)
    target = _target([[2, 4, 10, 8]], ignore=[[0, 0, 4, 2]])
    small, out = resize(image, target, (5, 10))
    assert small.shape == (3, 5, 10)
    assert out["boxes"].tolist() == [[1, 2, 5, 4]]
    assert out["ignore_boxes"].tolist() == [[0, 0, 2, 1]]
    # Non-uniform: 20 -> 30 wide (x1.5), 10 -> 20 high (x2).
    big, out = resize(image, target, (20, 30))
    assert big.shape == (3, 20, 30)
    assert out["boxes"].tolist() == [[3, 8, 15, 16]]
    # A constant image stays constant (no ringing outside [0, 1]).
    flat, _ = resize(torch.full((3, 10, 20), 0.25), target, (7, 13))
    assert torch.allclose(flat, torch.full_like(flat, 0.25))


def test_crop_clip_keep_ignore_policies():
    image = _image(20, 20)
    region = (2, 3, 12, 13)  # x0, y0, x1, y1
    target = _target(
        [
            [0, 5, 6, 9],  # area 24, 16 inside (lost 1/3)
            [0, 5, 3, 9],  # area 12, 4 inside (lost 2/3)
            [4, 4, 8, 10],  # fully inside
            [14, 14, 18, 18],  # fully outside
        ],
        ignore=[[10, 10, 16, 16], [0, 0, 1, 1]],  # one cut, one outside
    )
    out_img, out = crop(image, target, region, "clip")
    assert torch.equal(out_img, image[:, 3:13, 2:12])
    assert out["boxes"].tolist() == [[0, 2, 4, 6], [0, 2, 1, 6], [2, 1, 6, 7]]
    assert out["labels"].tolist() == [1, 2, 3]
    assert out["vis_boxes"].tolist() == out["boxes"].tolist()
    assert out["ignore_boxes"].tolist() == [[8, 7, 10, 10]]

    _, out = crop(image, target, region, "keep")
    assert out["boxes"].tolist() == [[-2, 2, 4, 6], [-2, 2, 1, 6], [2, 1, 6, 7]]
    assert out["labels"].tolist() == [1, 2, 3]

    _, out = crop(image, target, region, "ignore", ignore_threshold=0.5)
    # Box 2 lost 2/3 > 0.5 of its area: its clipped part becomes an ignore box.
    assert out["boxes"].tolist() == [[0, 2, 4, 6], [2, 1, 6, 7]]
    assert out["labels"].tolist() == [1, 3]
    assert out["ignore_boxes"].tolist() == [[8, 7, 10, 10], [0, 2, 1, 6]]
    # With a threshold of 0.2 box 1 (lost 1/3) goes too.
    _, out = crop(image, target, region, "ignore", ignore_threshold=0.2)
    assert out["labels"].tolist() == [3]
    assert len(out["ignore_boxes"]) == 3


def test_crop_vis_boxes_follow_their_object():
    target = _target([[0, 0, 10, 10], [20, 20, 30, 30]], vis=[[5, 0, 10, 4], [25, 25, 30, 30]])
    _, out = crop(_image(40, 40), target, (6, 0, 40, 40), "clip")
    assert out["vis_boxes"].tolist() == [[0, 0, 4, 4], [19, 25, 24, 30]]
    assert out["boxes"].tolist() == [[0, 0, 4, 10], [14, 20, 24, 30]]


def test_crop_of_empty_target():
    _, out = crop(_image(10, 10), _target([]), (0, 0, 5, 5), "ignore")
    assert out["boxes"].shape == (0, 4) and out["ignore_boxes"].shape == (0, 4)
    assert out["labels"].shape == (0,)


def test_color_jitter_factors():
    image = torch.full((3, 2, 2), 0.4)
    assert torch.allclose(color_jitter(image, 1.0, 1.0, 1.0), image)
    assert torch.allclose(color_jitter(image, 0.5, 1.0, 1.0), torch.full_like(image, 0.2))
    # Contrast pulls towards the mean grey (0.4): 0.2 -> 0.3, 0.6 -> 0.5 at factor 0.5.
    two = torch.tensor([0.2, 0.6]).repeat(3, 1).reshape(3, 1, 2)
    assert torch.allclose(
        color_jitter(two, 1.0, 0.5, 1.0), torch.tensor([0.3, 0.5]).repeat(3, 1).reshape(3, 1, 2)
    )
    # Saturation 0 gives the luma of a pure red pixel in every channel.
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    assert torch.allclose(color_jitter(red, 1.0, 1.0, 0.0), torch.full((3, 1, 1), 0.299))
    # Brightness saturates at 1.
    assert color_jitter(image, 3.0, 1.0, 1.0).max().item() == 1.0


def test_train_transform_flip_only_equals_hflip():
    image, target = _image(6, 8), _target([[1, 1, 3, 5]])
    tf = TrainTransform(flip_prob=1.0)
    out_img, out = tf(image, target, np.random.default_rng(0))
    ref_img, ref = hflip(image, target)
    assert torch.equal(out_img, ref_img) and torch.equal(out["boxes"], ref["boxes"])
    out_img, out = TrainTransform(flip_prob=0.0)(image, target, np.random.default_rng(0))
    assert torch.equal(out_img, image) and torch.equal(out["boxes"], target["boxes"])


def test_train_transform_fixed_scale():
    tf = TrainTransform(flip_prob=0.0, scale_range=(0.5, 0.5))
    out_img, out = tf(_image(10, 20), _target([[2, 4, 10, 8]]), np.random.default_rng(0))
    assert out_img.shape == (3, 5, 10)
    assert out["boxes"].tolist() == [[1, 2, 5, 4]]


def test_train_transform_is_deterministic_under_a_seed():
    tf = TrainTransform(
        flip_prob=0.5,
        scale_range=(0.6, 1.4),
        crop_size=(24, 32),
        crop_policy="ignore",
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
    )
    image = torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(1))
    target = _target([[5, 5, 15, 35], [20, 2, 30, 30], [35, 10, 48, 38]], ignore=[[0, 0, 8, 8]])
    a_img, a = tf(image, target, sample_rng(3, 1, 17))
    b_img, b = tf(image, target, sample_rng(3, 1, 17))
    assert torch.equal(a_img, b_img)
    for key in ("boxes", "vis_boxes", "labels", "ignore_boxes"):
        assert torch.equal(a[key], b[key])
    # The crop is inside the (scaled) image and clipped boxes lie inside the crop.
    h, w = a_img.shape[-2:]
    assert h <= 24 and w <= 32
    assert (a["boxes"][:, [0, 1]] >= 0).all() and (a["boxes"][:, 2] <= w).all()
    assert (a["boxes"][:, 3] <= h).all()
    # Different (epoch, index) pairs give different draws.
    others = [tf(image, target, sample_rng(3, e, 17))[1]["boxes"] for e in (2, 3, 4)]
    assert any(o.shape != a["boxes"].shape or not torch.equal(o, a["boxes"]) for o in others)


def test_sample_rng_depends_only_on_seed_epoch_index():
    assert sample_rng(0, 2, 5).random() == sample_rng(0, 2, 5).random()
    assert sample_rng(0, 2, 5).random() != sample_rng(0, 3, 5).random()
    assert sample_rng(0, 2, 5).random() != sample_rng(1, 2, 5).random()


def test_bad_crop_policy_is_rejected():
    with pytest.raises(ValueError, match="crop_policy"):
        TrainTransform(crop_policy="shrink")


@settings(max_examples=60, deadline=None)
@given(
    boxes=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 20), st.integers(1, 20)),
        max_size=6,
    ),
    x0=st.integers(0, 15),
    y0=st.integers(0, 15),
    size=st.integers(1, 25),
    threshold=st.floats(0.0, 1.0),
)
def test_crop_invariants(boxes, x0, y0, size, threshold):
    rows = [[x, y, x + w, y + h] for x, y, w, h in boxes]
    target = _target(rows)
    region = (x0, y0, x0 + size, y0 + size)
    _, clipped = crop(_image(40, 40), target, region, "clip")
    # Clipped boxes lie in the crop and have area.
    b = clipped["boxes"]
    assert ((b >= 0) & (b <= size)).all()
    assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    _, ignored = crop(_image(40, 40), target, region, "ignore", threshold)
    # The ignore policy only moves objects between the two sets.
    assert len(ignored["boxes"]) + len(ignored["ignore_boxes"]) == len(b)
    assert set(ignored["labels"].tolist()) <= set(clipped["labels"].tolist())
    _, kept = crop(_image(40, 40), target, region, "keep")
    assert torch.equal(kept["labels"], clipped["labels"])
    # Shifting back recovers the original boxes under "keep".
    shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    original = target["boxes"][kept["labels"] - 1]
    assert torch.equal(kept["boxes"] + shift, original)
