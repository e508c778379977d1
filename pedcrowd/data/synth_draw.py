"""Procedural drawing for the synthetic crowds: street backgrounds, people, occluders.

Every object is drawn into its own small patch and returned as a
:class:`Sprite`: a BGR colour patch plus the boolean mask of the pixels it
covers, placed at an integer offset in the image. The scene composer
(:mod:`pedcrowd.data.synth`) pastes sprites back to front and keeps the masks,
which is how visible boxes are measured from the pixels actually visible.

All randomness comes from the ``np.random.Generator`` passed in, so a scene is
a pure function of its seed. Colours are BGR uint8 as cv2 writes them.
Drawing uses the pure-numpy primitives of :mod:`pedcrowd.data.raster` on small
patches (no per-pixel Python loops, no opencv), so the pixels are the same with
every opencv and numpy version and on every CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pedcrowd.data.raster import (
    draw_line,
    fill_circle,
    fill_ellipse,
    fill_polygon,
    fill_rect,
    resize_linear,
    to_uint8,
)

# Palettes shared by clothing and the background on purpose: a detector must
# not be able to separate people from the street by colour alone.
SKIN_TONES = np.array(
    [
        (60, 90, 140),
        (80, 120, 175),
        (105, 150, 205),
        (130, 175, 225),
        (150, 195, 235),
        (45, 65, 100),
        (90, 140, 190),
    ],
    dtype=np.float64,
)
HAIR_COLORS = np.array(
    [(20, 20, 25), (30, 45, 70), (40, 70, 110), (90, 150, 200), (150, 150, 150), (25, 30, 45)],
    dtype=np.float64,
)
CLOTH_COLORS = np.array(
    [
        (40, 40, 40),
        (200, 200, 200),
        (120, 60, 30),
        (40, 40, 150),
        (60, 120, 60),
        (30, 160, 200),
        (140, 140, 140),
        (90, 70, 60),
        (170, 120, 80),
        (50, 60, 110),
        (200, 180, 150),
        (80, 40, 120),
        (20, 90, 180),
        (110, 110, 70),
        (230, 230, 235),
        (60, 60, 90),
    ],
    dtype=np.float64,
)
FACADE_COLORS = np.array(
    [
        (150, 160, 170),
        (110, 130, 160),
        (90, 100, 120),
        (170, 180, 190),
        (120, 110, 100),
        (80, 95, 140),
        (140, 140, 140),
        (100, 120, 110),
        (60, 70, 90),
        (190, 200, 205),
    ],
    dtype=np.float64,
)
CAR_COLORS = np.array(
    [
        (30, 30, 30),
        (200, 200, 200),
        (40, 40, 160),
        (150, 90, 30),
        (120, 120, 120),
        (230, 230, 230),
        (40, 100, 40),
        (60, 60, 90),
    ],
    dtype=np.float64,
)


@dataclass
class Sprite:
    """One drawn object.

    Attributes:
        x0, y0: image position of the patch's top-left pixel (may be negative).
        color: [h, w, 3] uint8 BGR patch.
        mask: [h, w] bool, the pixels the object covers.
    """

    x0: int
    y0: int
    color: np.ndarray
    mask: np.ndarray


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 18.0) -> tuple:
    c = palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3)
    # Python min/max: np.clip costs more than the rest on 3 values (called ~80 times per image).
    return tuple(min(255.0, max(0.0, float(v))) for v in c)


def smooth_noise(
    rng: np.random.Generator, h: int, w: int, cell: int, channels: int = 1, scale: float = 1.0
) -> np.ndarray:
    """Low-frequency noise in [-scale, scale]: a coarse random grid resized up (cheap, no loops).

    Returns:
        [h, w] (or [h, w, channels]) float32.
    """
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    shape = (gh, gw) if channels == 1 else (gh, gw, channels)
    grid = rng.uniform(-scale, scale, shape).astype(np.float32)
    return resize_linear(grid, h, w)


_GRAIN: np.ndarray | None = None
_GRAIN_U8: np.ndarray | None = None


def grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w] float32 unit Gaussian pixel noise: a random window of one fixed noise tile.

    Drawing fresh Gaussian noise for every pixel of every image costs more than
    the rest of the background; a random crop of a fixed 1024 x 2048 tile looks
    the same and stays a pure function of ``rng``.
    """
    global _GRAIN
    if _GRAIN is None:
        _GRAIN = np.random.default_rng(20261121).standard_normal((1024, 2048), dtype=np.float32)
    th, tw = _GRAIN.shape
    if h > th or w > tw:
        return rng.standard_normal((h, w), dtype=np.float32)
    y, x = int(rng.integers(0, th - h + 1)), int(rng.integers(0, tw - w + 1))
    return _GRAIN[y : y + h, x : x + w]


def grain_u8(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w, 3] uint8 film grain around 128: smooth noise of a few pixels plus pixel noise.

    A random window of a fixed tile, like :func:`grain`, in uint8 so that adding
    it to an image is one saturating pass.
    """
    global _GRAIN_U8
    if _GRAIN_U8 is None:
        tile_rng = np.random.default_rng(20261122)
        fine = smooth_noise(tile_rng, 1024, 2048, 6, scale=8.0)
        fine += 4.0 * tile_rng.standard_normal((1024, 2048), dtype=np.float32)
        one = to_uint8(fine + 128.0)
        _GRAIN_U8 = np.repeat(one[..., None], 3, axis=2)
    th, tw = _GRAIN_U8.shape[:2]
    if h > th or w > tw:
        reps = (h // th + 1, w // tw + 1, 1)
        return np.tile(_GRAIN_U8, reps)[:h, :w]
    y, x = int(rng.integers(0, th - h + 1)), int(rng.integers(0, tw - w + 1))
    return _GRAIN_U8[y : y + h, x : x + w]


# ---------------------------------------------------------------- background


def draw_background(
    rng: np.random.Generator, h: int, w: int, horizon: int, ground: int
) -> np.ndarray:
    """A street: sky, a row of facades with windows and doors, pavement, road, kerb.

    The street is drawn at half resolution and scaled up, then fine grain is
    added at full resolution: this halves the generator's time, and the CPU
    demo trains at half resolution anyway, where nothing is lost.

    Args:
        h, w: image size.
        horizon: y of the vanishing line (people's heads converge here).
        ground: y where facades meet the pavement (just below ``horizon``).

    Returns:
        [h, w, 3] uint8 BGR image.
    """
    half = to_uint8(_street(rng, (h + 1) // 2, (w + 1) // 2, horizon // 2, ground // 2))
    img = to_uint8(resize_linear(half, h, w)).astype(np.int16)
    # Grain and sensor noise at full resolution (people's patches get the same grain):
    # img + grain - 128, saturating.
    img += grain_u8(rng, h, w)
    img -= 128
    return np.clip(img, 0, 255).astype(np.uint8)


def _street(rng: np.random.Generator, h: int, w: int, horizon: int, ground: int) -> np.ndarray:
    """The street of :func:`draw_background` without fine grain, [h, w, 3] float32."""
    # Sky: vertical gradient, sometimes overcast grey (one column resized across).
    top = np.array(_pick(rng, np.array([(200, 170, 120), (190, 190, 190), (220, 200, 170)])))
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.repeat((top * (1 - 0.25 * t)).astype(np.float32), w, axis=1)  # [h, w, 3]

    # Facades from a random top line down to the ground line.
    x = 0
    while x < w:
        bw = int(rng.integers(w // 10, w // 3))
        btop = int(rng.integers(-10, max(1, ground // 2)))
        col = np.array(_pick(rng, FACADE_COLORS, 25))
        img[max(btop, 0) : ground, x : x + bw] = col
        # Windows: a grid whose colour is dark glass or a lit/curtained shade.
        win_w = max(3, int(bw * rng.uniform(0.08, 0.18)))
        win_h = max(3, int(win_w * rng.uniform(1.0, 1.8)))
        gap_x = max(win_w + 2, int(win_w * rng.uniform(1.5, 2.5)))
        gap_y = max(win_h + 2, int(win_h * rng.uniform(1.4, 2.0)))
        glass = np.array(_pick(rng, np.array([(60, 50, 40), (120, 110, 90), (40, 40, 40)]), 15))
        y0, x1 = max(btop, 0) + 4, min(x + bw, w)
        if ground - 12 > y0 and x1 - 2 > x + 4:
            # The window grid as a mask from row/column phases (no loop per window).
            rows = (np.arange(y0, ground - 12) - y0) % gap_y < win_h
            cols = (np.arange(x + 4, x1 - 2) - x - 4) % gap_x < win_w
            region = img[y0 : ground - 12, x + 4 : x1 - 2]
            lit = glass + rng.normal(0, 12, 3) * (rng.random() < 0.5)
            np.copyto(
                region, lit.astype(np.float32), where=(rows[:, None] & cols[None, :])[..., None]
            )
            sills = np.roll(rows, 1) & ~rows
            region[sills] = np.where(cols[:, None], (col * 1.2).astype(np.float32), region[sills])
        # A door or shop window at street level.
        if rng.random() < 0.7 and bw > 20:
            dw = int(bw * rng.uniform(0.15, 0.5))
            dx = x + int(rng.integers(0, max(1, bw - dw)))
            dh = int((ground - horizon + 20) * rng.uniform(0.8, 1.6))
            img[max(0, ground - dh) : ground, dx : dx + dw] = _pick(rng, CLOTH_COLORS, 20)
        img[max(btop, 0) : ground, x : x + 1] *= 0.6  # building edge
        x += bw

    # Pavement (ground .. kerb) and road below; tile lines closer together near the horizon.
    kerb = int(ground + (h - ground) * rng.uniform(0.45, 0.8))
    pave = np.array(_pick(rng, np.array([(150, 150, 150), (120, 130, 150), (100, 110, 130)]), 15))
    road = np.array(_pick(rng, np.array([(70, 70, 70), (90, 90, 95), (55, 55, 60)]), 10))
    img[ground:kerb] = pave
    img[kerb:] = road
    y = float(ground + 2)
    while y < kerb:
        img[int(y), :] *= 0.8
        y += 2 + 0.12 * (y - horizon)
    img[kerb : kerb + 3] = pave * 1.25
    if rng.random() < 0.6:  # lane marking
        ly = int(kerb + (h - kerb) * rng.uniform(0.4, 0.8))
        for lx in range(int(rng.integers(0, 60)), w, 120):
            img[ly : ly + 3, lx : lx + 60] = (220, 220, 220)

    # Lighting and colour blotches, so flat areas are not flat (in place).
    light = smooth_noise(rng, h, w, 24, scale=0.12)
    light += np.float32(rng.uniform(0.8, 1.15))
    img *= light[..., None]
    img += smooth_noise(rng, h, w, 12, 3, scale=5.0)
    img += smooth_noise(rng, h, w, 3, 3, scale=4.0)  # texture at a few pixels
    return img


def draw_shadow(img: np.ndarray, cx: float, y: float, width: float) -> None:
    """Darken an ellipse on the ground under an object's feet (in place)."""
    h, w = img.shape[:2]
    ax, ay = max(1, int(width * 0.6)), max(1, int(width * 0.12))
    x0, x1 = max(0, int(cx) - ax), min(w, int(cx) + ax + 1)
    y0, y1 = max(0, int(y) - ay), min(h, int(y) + ay + 1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]  # blend only around the ellipse, not the whole image
    dark = np.zeros(roi.shape[:2], np.uint8)
    fill_ellipse(dark, (int(cx) - x0, int(y) - y0), (ax, ay), 1)
    roi[dark.astype(bool)] = (roi[dark.astype(bool)] * 0.7).astype(np.uint8)


# ------------------------------------------------------------------- people


def draw_person(rng: np.random.Generator, height: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A standing or walking person in a patch ``ceil(height)`` tall.

    The silhouette (head, hair, torso, arms, legs, shoes, sometimes a bag or
    coat) is centred on the patch's middle column; its full-body box in the
    CityPersons convention is ``0.41 * height`` wide around that column.

    Returns:
        color: [ph, pw, 3] uint8 BGR; mask: [ph, pw] bool; cx: the centre column.
    """
    ph = int(np.ceil(height))
    pw = int(np.ceil(0.75 * height)) + 4
    s = height  # unit: everything below is a fraction of the body height
    cx = pw / 2.0
    color = np.zeros((ph, pw, 3), np.uint8)
    mask = np.zeros((ph, pw), np.uint8)

    def fill_poly(pts, col):
        fill_polygon(color, pts, col)  # sub-pixel vertices: smooth small people
        fill_polygon(mask, pts, 1)

    def limb(p0, p1, thick, col):
        t = max(1.0, thick)
        draw_line(color, p0, p1, t, col)
        draw_line(mask, p0, p1, t, 1)

    def ellipse(c, axes, col):
        ax = (max(1.0, axes[0]), max(1.0, axes[1]))
        fill_ellipse(color, c, ax, col)
        fill_ellipse(mask, c, ax, 1)

    skin = _pick(rng, SKIN_TONES, 10)
    shirt = _pick(rng, CLOTH_COLORS)
    pants = _pick(rng, CLOTH_COLORS)
    shoes = _pick(rng, np.array([(20, 20, 20), (60, 60, 60), (200, 200, 200), (30, 50, 90)]), 10)
    side = rng.random() < 0.35  # seen from the side: narrower shoulders, legs in stride
    stride = rng.uniform(0.0, 0.13 if side else 0.08) * s
    swing = rng.uniform(-0.08, 0.08) * s
    shoulder = (0.075 if side else rng.uniform(0.1, 0.13)) * s
    hip = (0.055 if side else rng.uniform(0.055, 0.075)) * s
    waist_y = rng.uniform(0.49, 0.54) * s
    lean = rng.uniform(-0.02, 0.02) * s

    # Legs: hip -> knee -> foot, walking stride splits the feet.
    leg_t = rng.uniform(0.065, 0.085) * s
    for sign in (-1, 1):
        hipp = (cx + sign * hip * 0.7 + lean * 0.3, waist_y)
        foot = (cx + sign * (stride + 0.035 * s), 0.955 * s)
        knee = ((hipp[0] + foot[0]) / 2 + sign * 0.01 * s, (waist_y + foot[1]) / 2)
        limb(hipp, knee, leg_t, pants)
        limb(knee, foot, leg_t * 0.85, pants)
        ellipse((foot[0] + sign * 0.01 * s, 0.975 * s), (0.045 * s, 0.022 * s), shoes)

    # Torso: shoulders to waist; a coat or dress extends it down.
    coat = rng.random() < 0.3
    bottom = waist_y + (rng.uniform(0.1, 0.25) * s if coat else 0.02 * s)
    top_y = 0.165 * s
    widen = 1.2 if coat else 1.0
    fill_poly(
        [
            (cx - shoulder + lean, top_y),
            (cx + shoulder + lean, top_y),
            (cx + hip * 1.35 * widen, bottom),
            (cx - hip * 1.35 * widen, bottom),
        ],
        shirt,
    )

    # Arms: shoulder -> elbow -> hand, swinging opposite to the legs.
    arm_t = rng.uniform(0.045, 0.06) * s
    sleeve_short = rng.random() < 0.3
    for sign in (-1, 1):
        sh = (cx + sign * (shoulder - arm_t * 0.4) + lean, top_y + 0.02 * s)
        hand = (
            cx + sign * (shoulder + 0.01 * s) + sign * swing * (1 if side else 0.3),
            rng.uniform(0.47, 0.53) * s,
        )
        elbow = ((sh[0] + hand[0]) / 2 + sign * 0.015 * s, (sh[1] + hand[1]) / 2)
        limb(sh, elbow, arm_t, shirt)
        limb(elbow, hand, arm_t * 0.9, skin if sleeve_short else shirt)
        ellipse(hand, (arm_t * 0.55, arm_t * 0.65), skin)

    # Head, neck and hair (or a hat).
    head_c = (cx + lean * 1.2, 0.07 * s)
    limb((head_c[0], 0.1 * s), (head_c[0], 0.17 * s), 0.05 * s, skin)
    ellipse(head_c, (0.052 * s, 0.066 * s), skin)
    hat = rng.random() < 0.2
    hair = _pick(rng, CLOTH_COLORS if hat else HAIR_COLORS, 10)
    cc = (head_c[0], head_c[1] - 0.01 * s)
    ax = (max(1.0, 0.056 * s), max(1.0, 0.058 * s))
    fill_ellipse(color, cc, ax, hair, upper_half=True)
    fill_ellipse(mask, cc, ax, 1, upper_half=True)

    # A bag: backpack beside the torso or a hand bag.
    if rng.random() < 0.3:
        bag = _pick(rng, CLOTH_COLORS)
        sign = 1 if rng.random() < 0.5 else -1
        bx = cx + sign * (shoulder + 0.02 * s)
        fill_poly(
            [
                (bx - 0.04 * s, 0.38 * s),
                (bx + 0.04 * s, 0.38 * s),
                (bx + 0.045 * s, 0.52 * s),
                (bx - 0.045 * s, 0.52 * s),
            ],
            bag,
        )

    # Clothing texture (stripes or checks) and round-body shading, as separable
    # row x column factors (no full-patch index grids).
    col = color.astype(np.float32)
    xs = (np.arange(pw, dtype=np.float32) - cx) / max(1.0, 0.2 * s)
    shade = 1.0 - 0.25 * np.clip(xs * xs, 0, 1)  # [pw]
    if rng.random() < 0.35:
        period = max(2.0, rng.uniform(0.03, 0.07) * s)
        # math.sin on scalars: numpy's vectorised sin differs by CPU in the last bits
        rows = np.array([math.sin(i * (2 * math.pi / period)) for i in range(ph)], np.float32)
        rows[: int(top_y)] = 0.0
        rows[int(bottom) :] = 0.0
        cols = np.array([math.sin(i * (2 * math.pi / period)) for i in range(pw)], np.float32)
        cols = cols if rng.random() < 0.4 else np.ones_like(cols)  # checks or stripes
        col *= (1.0 + 0.25 * rows[:, None] * cols[None, :])[..., None]
    col *= shade[None, :, None]
    col += 5.0 * grain(rng, ph, pw)[..., None]
    return to_uint8(col), mask.astype(bool), cx


# ---------------------------------------------------------------- occluders


def draw_car(rng: np.random.Generator, person_h: float) -> tuple[np.ndarray, np.ndarray]:
    """A car seen from the side, sized for a person ``person_h`` tall at the same depth.

    Returns:
        color [ch, cw, 3] uint8, mask [ch, cw] bool; the patch bottom is the ground.
    """
    ch = max(4, int(person_h * rng.uniform(0.42, 0.58)))
    cw = max(8, int(person_h * rng.uniform(1.9, 2.5)))
    color = np.zeros((ch, cw, 3), np.uint8)
    mask = np.zeros((ch, cw), np.uint8)
    body = _pick(rng, CAR_COLORS, 15)
    glass = (70, 60, 50)
    wheel_r = max(2, int(ch * 0.2))
    body_top = int(ch * 0.45)
    fill_rect(color, 0, body_top, cw - 1, ch - wheel_r, body)
    fill_rect(mask, 0, body_top, cw - 1, ch - wheel_r, 1)
    cabin = np.array(
        [
            (int(cw * 0.2), body_top),
            (int(cw * 0.33), 0),
            (int(cw * 0.72), 0),
            (int(cw * 0.85), body_top),
        ],
        np.int32,
    )
    fill_polygon(color, cabin, body)
    fill_polygon(mask, cabin, 1)
    win = np.array(
        [
            (int(cw * 0.25), body_top - 1),
            (int(cw * 0.35), int(ch * 0.08)),
            (int(cw * 0.7), int(ch * 0.08)),
            (int(cw * 0.8), body_top - 1),
        ],
        np.int32,
    )
    fill_polygon(color, win, glass)
    for wx in (int(cw * 0.2), int(cw * 0.8)):
        fill_circle(color, (wx, ch - wheel_r - 1), wheel_r, (25, 25, 25))
        fill_circle(mask, (wx, ch - wheel_r - 1), wheel_r, 1)
        fill_circle(color, (wx, ch - wheel_r - 1), max(1, wheel_r // 2), (150, 150, 150))
    col = color.astype(np.float32)
    col[:body_top] *= 1.1
    col += 4.0 * rng.standard_normal(col.shape, dtype=np.float32)
    return np.clip(col, 0, 255).astype(np.uint8), mask.astype(bool)


def draw_pole(rng: np.random.Generator, person_h: float) -> tuple[np.ndarray, np.ndarray]:
    """A street-light or sign pole, taller than the people around it."""
    ph = max(6, int(person_h * rng.uniform(1.4, 2.6)))
    pw = max(2, int(person_h * rng.uniform(0.04, 0.08)))
    sign = rng.random() < 0.5
    w = pw + (int(person_h * 0.3) if sign else 0)
    color = np.zeros((ph, w, 3), np.uint8)
    mask = np.zeros((ph, w), bool)
    color[:, :pw] = _pick(rng, np.array([(80, 80, 80), (40, 90, 40), (150, 150, 150)]), 10)
    mask[:, :pw] = True
    if sign:
        sh = max(2, int(person_h * 0.25))
        color[2 : 2 + sh, :] = _pick(
            rng, np.array([(200, 100, 30), (30, 30, 200), (230, 230, 230)]), 10
        )
        mask[2 : 2 + sh, :] = True
    xs = np.linspace(-1, 1, w, dtype=np.float32)
    color = np.clip(color * (1 - 0.3 * xs * xs)[None, :, None], 0, 255).astype(np.uint8)
    return color, mask


def draw_bench(rng: np.random.Generator, person_h: float) -> tuple[np.ndarray, np.ndarray]:
    """A park bench or low wall / planter, knee to hip high."""
    bh = max(3, int(person_h * rng.uniform(0.25, 0.45)))
    bw = max(6, int(person_h * rng.uniform(0.8, 1.6)))
    color = np.zeros((bh, bw, 3), np.uint8)
    mask = np.zeros((bh, bw), bool)
    wood = _pick(rng, np.array([(40, 80, 120), (60, 60, 60), (130, 130, 120), (40, 110, 60)]), 15)
    if rng.random() < 0.5:  # bench: slats and legs
        for y in range(0, int(bh * 0.6), max(2, bh // 6)):
            color[y : y + max(1, bh // 10)] = wood
            mask[y : y + max(1, bh // 10)] = True
        leg = max(1, bw // 15)
        for x in (bw // 8, bw - bw // 8 - leg):
            color[:, x : x + leg] = wood
            mask[:, x : x + leg] = True
        color[int(bh * 0.5) : int(bh * 0.6)] = wood
        mask[int(bh * 0.5) : int(bh * 0.6)] = True
    else:  # planter / low wall
        color[:] = wood
        mask[:] = True
        color[: max(1, bh // 4)] = _pick(rng, np.array([(40, 120, 40), (30, 90, 50)]), 15)
    col = color.astype(np.float32) + 5.0 * rng.standard_normal(color.shape, dtype=np.float32)
    return np.clip(col, 0, 255).astype(np.uint8), mask


def draw_tree(rng: np.random.Generator, person_h: float) -> tuple[np.ndarray, np.ndarray]:
    """A street tree: a trunk about a person tall under a leafy crown (a person-sized vertical edge)."""
    th = max(8, int(person_h * rng.uniform(1.8, 3.0)))
    tw = max(6, int(person_h * rng.uniform(0.6, 1.1)))
    color = np.zeros((th, tw, 3), np.uint8)
    mask = np.zeros((th, tw), np.uint8)
    trunk_w = max(2, int(person_h * rng.uniform(0.06, 0.12)))
    cx = tw // 2
    bark = _pick(rng, np.array([(40, 60, 80), (60, 70, 80), (30, 45, 60)]), 10)
    fill_rect(color, cx - trunk_w // 2, th // 3, cx + trunk_w // 2, th - 1, bark)
    fill_rect(mask, cx - trunk_w // 2, th // 3, cx + trunk_w // 2, th - 1, 1)
    leaf = np.array(_pick(rng, np.array([(40, 110, 50), (30, 80, 40), (60, 130, 90)]), 15))
    for _ in range(6):  # the crown: overlapping blobs
        c = (int(cx + rng.uniform(-0.3, 0.3) * tw), int(th * rng.uniform(0.12, 0.4)))
        ax = (max(2, int(tw * rng.uniform(0.2, 0.35))), max(2, int(th * rng.uniform(0.08, 0.18))))
        shade = tuple(float(v) for v in np.clip(leaf * rng.uniform(0.7, 1.2), 0, 255))
        fill_ellipse(color, c, ax, shade)
        fill_ellipse(mask, c, ax, 1)
    col = color.astype(np.float32)
    col += 12.0 * grain(rng, th, tw)[..., None]
    return np.clip(col, 0, 255).astype(np.uint8), mask.astype(bool)


def draw_bin(rng: np.random.Generator, person_h: float) -> tuple[np.ndarray, np.ndarray]:
    """A litter bin, bollard or post box: waist-high, with cloth-like colours."""
    bh = max(4, int(person_h * rng.uniform(0.3, 0.6)))
    bw = max(3, int(bh * rng.uniform(0.3, 0.7)))
    color = np.zeros((bh, bw, 3), np.uint8)
    color[:] = _pick(rng, CLOTH_COLORS, 20)
    color[: max(1, bh // 8)] = _pick(rng, CAR_COLORS, 10)  # lid / cap
    xs = np.linspace(-1, 1, bw, dtype=np.float32)
    col = color * (1 - 0.35 * xs * xs)[None, :, None] + 5.0 * grain(rng, bh, bw)[..., None]
    return np.clip(col, 0, 255).astype(np.uint8), np.ones((bh, bw), bool)
