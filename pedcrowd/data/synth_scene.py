"""Scene layout and back-to-front compositing for the synthetic crowds.

:func:`layout_scene` decides what stands where (perspective, groups, occluders,
posters, dense groups) and draws each object as a sprite;
:func:`compose` pastes the sprites back to front while an owner map records
which object each pixel shows, and :func:`visible_box` turns a person's
still-visible pixels into its visible box. :func:`render_scene` does all three
and returns the image with its :class:`ImageRecord`.

Perspective: the camera looks along a level street, so a person whose feet are
at image row ``y`` is ``k * (y - horizon)`` pixels tall (times a per-person
factor for body size); ``k`` puts a person standing on the bottom row at
0.78 x the image height (300 px at the default 384).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pedcrowd.data.raster import fill_rect, frame_rect, gaussian_blur3
from pedcrowd.data.synth_draw import (
    Sprite,
    draw_background,
    draw_bench,
    draw_bin,
    draw_car,
    draw_person,
    draw_pole,
    draw_shadow,
    draw_tree,
)
from pedcrowd.formats.records import GROUP, IGNORE_REGION, PEDESTRIAN, ImageRecord

if TYPE_CHECKING:
    from pedcrowd.data.config import SynthConfig

ASPECT = 0.41  # CityPersons full-body box width / height


@dataclass
class Placed:
    """A sprite at its place in the scene.

    Attributes:
        sprite: the drawn object (:class:`pedcrowd.data.synth_draw.Sprite`).
        depth: y of the object's ground contact; larger is nearer, drawn later.
        box: integer full-body box ``xywh`` for a labelled person, else None.
    """

    sprite: object
    depth: float
    box: tuple[int, int, int, int] | None = None


@dataclass
class Composite:
    """Result of :func:`compose`.

    Attributes:
        image: [H, W, 3] uint8.
        owner: [H, W] int32, index into ``placed`` of the object each pixel shows, -1 background.
        vis_boxes: per placed object, the visible box ``xywh``; None when nothing
            shows, and for objects without a ``box`` (not measured).
        visible_pixels: per placed object, visible / drawn silhouette pixels
            (None for objects without a ``box``).
        order: indices of ``placed`` in drawing order.
    """

    image: np.ndarray
    owner: np.ndarray
    vis_boxes: list = field(default_factory=list)
    visible_pixels: list = field(default_factory=list)
    order: list = field(default_factory=list)


def _clip(sprite, h: int, w: int):
    """Image slice and patch slice of a sprite clipped to an h x w image (None if outside)."""
    ph, pw = sprite.mask.shape
    y0, x0 = max(sprite.y0, 0), max(sprite.x0, 0)
    y1, x1 = min(sprite.y0 + ph, h), min(sprite.x0 + pw, w)
    if y1 <= y0 or x1 <= x0:
        return None
    img_sl = (slice(y0, y1), slice(x0, x1))
    patch_sl = (slice(y0 - sprite.y0, y1 - sprite.y0), slice(x0 - sprite.x0, x1 - sprite.x0))
    return img_sl, patch_sl


def visible_box(
    box: tuple[int, int, int, int], silhouette: np.ndarray, visible: np.ndarray, x0: int, y0: int
) -> tuple[int, int, int, int] | None:
    """The visible box of a person from its drawn and its still-visible pixels.

    Each side of the full box is kept where the visible pixels reach the
    silhouette's own extent on that side, and pulled in to the visible extent
    where an occluder hides that side: an unoccluded person gets ``vis == box``
    (ratio 1, as annotators draw it), one hidden below the waist gets the upper
    half. The result is clipped to the full box.

    Args:
        box: full-body box ``xywh`` (integers).
        silhouette: [h, w] bool, the person's drawn pixels in its patch.
        visible: [h, w] bool, the subset still showing the person at the end.
        x0, y0: image position of the patch.

    Returns:
        ``xywh`` visible box, or None if nothing is visible.
    """
    if not visible.any():
        return None
    sil_r, sil_c = np.flatnonzero(silhouette.any(1)), np.flatnonzero(silhouette.any(0))
    vis_r, vis_c = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    bx, by, bw, bh = box
    left = bx if vis_c[0] == sil_c[0] else x0 + vis_c[0]
    right = bx + bw if vis_c[-1] == sil_c[-1] else x0 + vis_c[-1] + 1
    top = by if vis_r[0] == sil_r[0] else y0 + vis_r[0]
    bottom = by + bh if vis_r[-1] == sil_r[-1] else y0 + vis_r[-1] + 1
    left, right = max(left, bx), min(right, bx + bw)
    top, bottom = max(top, by), min(bottom, by + bh)
    if right <= left or bottom <= top:
        return None
    return (int(left), int(top), int(right - left), int(bottom - top))


def compose(background: np.ndarray, placed: list[Placed]) -> Composite:
    """Paste sprites back to front (by depth, stable) and measure what stays visible.

    Args:
        background: [H, W, 3] uint8, not modified.
        placed: the objects; those with a ``box`` are labelled persons.
    """
    image = background.copy()
    h, w = image.shape[:2]
    owner = np.full((h, w), -1, np.int32)
    order = sorted(range(len(placed)), key=lambda i: placed[i].depth)
    for i in order:
        sp = placed[i].sprite
        sl = _clip(sp, h, w)
        if sl is None:
            continue
        img_sl, patch_sl = sl
        m = sp.mask[patch_sl]
        np.copyto(image[img_sl], sp.color[patch_sl], where=m[..., None])  # faster than image[..][m]
        np.copyto(owner[img_sl], i, where=m)
    out = Composite(image=image, owner=owner, order=order)
    for i, p in enumerate(placed):
        if p.box is None:  # only labelled people need their visibility
            out.visible_pixels.append(None)
            out.vis_boxes.append(None)
            continue
        sp = p.sprite
        sl = _clip(sp, h, w)
        visible = np.zeros_like(sp.mask)
        if sl is not None:
            img_sl, patch_sl = sl
            visible[patch_sl] = sp.mask[patch_sl] & (owner[img_sl] == i)
        drawn = int(sp.mask.sum())
        out.visible_pixels.append(float(visible.sum()) / drawn if drawn else 0.0)
        out.vis_boxes.append(visible_box(p.box, sp.mask, visible, sp.x0, sp.y0))
    return out


# -------------------------------------------------------------------- layout


@dataclass
class Scene:
    """A laid-out scene before compositing.

    Attributes:
        background: [H, W, 3] uint8 street with posters already painted on.
        placed: people, group members and occluders.
        ignore: (category, ``xywh`` box) of posters (ignore regions) and dense groups.
    """

    background: np.ndarray
    placed: list[Placed] = field(default_factory=list)
    ignore: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)


def _person(rng: np.random.Generator, xc: float, y_foot: float, ht: int, labelled: bool) -> Placed:
    color, mask, cx = draw_person(rng, ht)
    x0, y0 = int(round(xc - cx)), int(round(y_foot)) - ht
    bw = ASPECT * ht
    box = (int(round(xc - bw / 2)), y0, max(1, int(round(bw))), ht) if labelled else None
    return Placed(Sprite(x0, y0, color, mask), float(y_foot), box)


def _poster(rng: np.random.Generator, bg: np.ndarray, ground: int, scene: Scene) -> None:
    """Paint an advertising poster with a person on it onto a facade; its person is an ignore region."""
    h, w = bg.shape[:2]
    ph = int(ground * rng.uniform(0.35, 0.7))
    if ph < 24:
        return
    pw = int(ph * rng.uniform(0.55, 0.9))
    py, px = int(rng.integers(2, max(3, ground - ph - 2))), int(rng.integers(0, w - pw))
    panel = tuple(float(v) for v in rng.uniform(120, 250, 3))
    fill_rect(bg, px, py, px + pw - 1, py + ph - 1, panel)
    frame_rect(bg, px, py, px + pw - 1, py + ph - 1, (40, 40, 40), max(1, ph // 40))
    ht = int(ph * rng.uniform(0.7, 0.9))
    color, mask, cx = draw_person(rng, ht)
    xc = px + pw / 2 + rng.uniform(-0.1, 0.1) * pw
    sp = Sprite(int(round(xc - cx)), py + (ph - ht) // 2, color, mask)
    # Paste inside the panel only (the sprite patch may be wider than the poster).
    for yy, xx in [np.nonzero(mask)]:
        gy, gx = yy + sp.y0, xx + sp.x0
        ok = (gx >= px) & (gx < px + pw) & (gy >= 0) & (gy < h)
        bg[gy[ok], gx[ok]] = color[yy[ok], xx[ok]]
    bw = int(round(ASPECT * ht))
    scene.ignore.append((IGNORE_REGION, (int(round(xc - bw / 2)), sp.y0, bw, ht)))


def layout_scene(rng: np.random.Generator, h: int, w: int, cfg: SynthConfig) -> Scene:
    """Draw the background and every object of one image, placed under the perspective."""
    horizon = int(h * rng.uniform(0.27, 0.37))
    ground = horizon + max(2, int(rng.uniform(6, 14) * h / 384))
    scene = Scene(draw_background(rng, h, w, horizon, ground))
    k = 0.78 * h / (h - horizon)

    def height_at(y: float, factor: float) -> int:
        return max(8, int(round(k * (y - horizon) * factor)))

    def body_factor() -> float:
        return rng.uniform(0.6, 0.75) if rng.random() < 0.05 else rng.uniform(0.88, 1.06)

    def x_inside(xc: float, ht: int) -> float:
        half = 0.21 * ht + 1  # half the 0.41 box plus a pixel: the box stays in the image
        return float(np.clip(xc, half, w - half))

    for _ in range(rng.poisson(cfg.posters)):
        _poster(rng, scene.background, ground, scene)
    empty = rng.random() < cfg.empty_fraction
    n_people = 0 if empty else int(rng.poisson(cfg.density))

    # Labelled pedestrians: singles and overlapping groups (the crowd cases).
    people: list[Placed] = []
    # Gap to the next group member in box widths (overlap 0.5: 0.25 .. 0.75).
    spacing = (max(0.0, 0.75 - cfg.overlap), max(0.0, 1.25 - cfg.overlap))
    while len(people) < n_people:
        size = 1 if rng.random() >= cfg.occlusion else int(rng.integers(2, cfg.max_group + 1))
        y = horizon + (h - 1 - horizon) * (0.08 + 0.92 * rng.random() ** 1.6)
        xc = rng.uniform(0, w)
        step = rng.choice([-1, 1])
        for _ in range(min(size, n_people - len(people))):
            ht = height_at(y, body_factor())
            xc = x_inside(xc, ht)
            people.append(_person(rng, xc, y, ht, labelled=True))
            # Next member: beside and slightly in front of or behind this one.
            xc += step * rng.uniform(*spacing) * ASPECT * ht
            y = float(
                np.clip(y + rng.uniform(-0.07, 0.07) * ht, horizon + 0.08 * (h - horizon), h - 1)
            )
    scene.placed.extend(people)

    # Dense far-away groups, labelled as one group box (CityPersons label 5).
    if not empty:
        for _ in range(rng.poisson(cfg.group_boxes)):
            y = horizon + (h - 1 - horizon) * rng.uniform(0.08, 0.25)
            xc = rng.uniform(0, w)
            boxes = []
            for _ in range(int(rng.integers(4, 9))):
                ht = height_at(y + rng.uniform(-2, 2), body_factor())
                xc = x_inside(xc + rng.uniform(0.2, 0.5) * ASPECT * ht, ht)
                member = _person(rng, xc, y, ht, labelled=False)
                scene.placed.append(member)
                bw = ASPECT * ht
                boxes.append((xc - bw / 2, member.sprite.y0, xc + bw / 2, member.sprite.y0 + ht))
            b = np.array(boxes)
            x0, y0, x1, y1 = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
            scene.ignore.append(
                (GROUP, (int(round(x0)), int(y0), int(round(x1 - x0)), int(y1 - y0)))
            )

    # Static occluders; most stand just in front of a person so occlusion is real.
    # Trees and bins are clutter: person-sized verticals and cloth colours that are not people.
    occ = cfg.occlusion
    makers = [
        (draw_car, 0.3 + 1.0 * occ, 0.6),
        (draw_pole, 0.8 + 1.0 * occ, 0.6),
        (draw_bench, 0.3 + 0.6 * occ, 0.6),
        (draw_tree, 0.8, 0.2),
        (draw_bin, 1.0, 0.3),
    ]
    for make, rate, in_front in makers:
        for _ in range(rng.poisson(rate)):
            if people and rng.random() < in_front:
                p = people[rng.integers(len(people))]
                ph = p.box[3]
                depth = min(h - 1.0, p.depth + rng.uniform(0.03, 0.25) * ph)
                color, mask = make(rng, height_at(depth, 1.0))
                xc = p.box[0] + p.box[2] / 2 - rng.uniform(0.1, 0.9) * mask.shape[1]
                x0 = int(round(xc))
            else:
                depth = horizon + (h - 1 - horizon) * rng.uniform(0.15, 1.0)
                color, mask = make(rng, height_at(depth, 1.0))
                x0 = int(rng.integers(-mask.shape[1] // 2, w))
            scene.placed.append(
                Placed(Sprite(x0, int(round(depth)) - mask.shape[0] + 1, color, mask), depth)
            )

    for p in scene.placed:  # contact shadows under everything standing on the ground
        pw = p.sprite.mask.shape[1]
        draw_shadow(scene.background, p.sprite.x0 + pw / 2, p.depth, 0.45 * pw)
    return scene


def render_scene(
    rng: np.random.Generator, h: int, w: int, cfg: SynthConfig, image_id: int, file_name: str
) -> tuple[np.ndarray, ImageRecord]:
    """One synthetic image and its annotations.

    A drawn person is labelled only if enough of it shows (>= 3 % of its
    pixels and a non-empty visible box); a fully hidden person is background.

    Returns:
        image [h, w, 3] uint8 BGR; its record (boxes ``xywh``, CityPersons label mapping).
    """
    scene = layout_scene(rng, h, w, cfg)
    comp = compose(scene.background, scene.placed)
    boxes, vis, cats = [], [], []
    for p, vbox, frac in zip(scene.placed, comp.vis_boxes, comp.visible_pixels, strict=True):
        if p.box is None or vbox is None or frac < 0.03:
            continue
        boxes.append(p.box)
        vis.append(vbox)
        cats.append(PEDESTRIAN)
    for cat, box in scene.ignore:
        boxes.append(box)
        vis.append(box if cat == IGNORE_REGION else (0, 0, 0, 0))
        cats.append(cat)

    # Camera blur: anti-aliasing, and small people lose their crisp edges as in real footage.
    image = gaussian_blur3(comp.image, 0.7)

    k = len(boxes)
    b = np.array(boxes, np.float64).reshape(k, 4)
    v = np.array(vis, np.float64).reshape(k, 4)
    cats_arr = np.array(cats, dtype=object)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(b[:, 2] * b[:, 3] > 0, v[:, 2] * v[:, 3] / (b[:, 2] * b[:, 3]), 0.0)
    ratios = np.array([float(f"{r:.12g}") for r in ratios])  # as the official JSON stores it
    record = ImageRecord(
        id=image_id,
        file_name=file_name,
        boxes=b,
        vis_boxes=v,
        categories=cats_arr,
        ignore=cats_arr != PEDESTRIAN,
        heights=b[:, 3].copy(),
        vis_ratios=ratios,
        ann_ids=np.arange(1, k + 1, dtype=np.int64),
        crowd=cats_arr == GROUP,
        width=w,
        height=h,
    )
    return image, record
