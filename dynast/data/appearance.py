"""Class-to-appearance maps of the synthetic dataset and the painting of a label map with one.

An appearance gives every class two colours of one hue and a pattern t(u, v) in [0, 1] that blends
them. Hues are spread around the colour wheel in a random order with a random offset, so classes
differ within a sample while a class's colour changes from sample to sample: the model has to read
the exemplar, it cannot memorise colours. Patterns live in each class's texture frame (see
`layout`): a shape carries its texture when it moves or turns between target and exemplar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROCEDURAL_PATTERNS = ("stripes", "checker", "dots", "waves", "noise")
PERIOD = (0.08, 0.2)  # pattern period, as a fraction of the image size
PHOTO_ZOOM = (0.75, 1.35)  # photo texture pixels per image pixel, around the source's own scale
NOISE_LATTICE = 16  # value-noise lattice side (the noise repeats after this many periods)


@dataclass(frozen=True)
class Pattern:
    """t(u, v) in [0, 1]. `kind` is one of PROCEDURAL_PATTERNS or "photo"; `period` in pixels;
    `angle` turns the pattern within its frame; `shift` moves it; `lattice` holds the value-noise
    grid, `texture` the photo (grey, [0, 1]) and `zoom` its pixels per image pixel."""

    kind: str
    period: float
    angle: float
    shift: tuple[float, float]
    lattice: np.ndarray | None = None
    texture: np.ndarray | None = None
    zoom: float = 1.0


@dataclass(frozen=True)
class Appearance:
    """colours [num_classes, 2, 3] in [0, 1] (rows of absent classes are unused); one pattern per
    class that the sample uses."""

    colours: np.ndarray
    patterns: dict[int, Pattern]


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] -> RGB [..., 3] in [0, 1]."""
    k = (np.stack([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return value[..., None] * (1.0 - saturation[..., None] * ramp)


def _random_pattern(rng: np.random.Generator, size: int, photos: tuple[np.ndarray, ...]) -> Pattern:
    angle = float(rng.uniform(0.0, math.pi))
    period = float(rng.uniform(*PERIOD) * size)
    if photos and rng.random() < 0.5:
        texture = photos[int(rng.integers(len(photos)))]
        shift = (float(rng.uniform(0, texture.shape[1])), float(rng.uniform(0, texture.shape[0])))
        zoom = float(rng.uniform(*PHOTO_ZOOM))
        return Pattern("photo", period, angle, shift, texture=texture, zoom=zoom)
    kind = PROCEDURAL_PATTERNS[int(rng.integers(len(PROCEDURAL_PATTERNS)))]
    shift = (float(rng.uniform(0, period)), float(rng.uniform(0, period)))
    lattice = rng.random((NOISE_LATTICE, NOISE_LATTICE)) if kind == "noise" else None
    return Pattern(kind, period, angle, shift, lattice=lattice)


def random_appearance(
    rng: np.random.Generator,
    classes: np.ndarray,
    num_classes: int,
    size: int,
    photos: tuple[np.ndarray, ...] = (),
) -> Appearance:
    """Colours for all classes and a pattern for background 0 and each of `classes`; patterns
    draw from the procedural set, and half the time from `photos` when some are given."""
    # Hues in a random order around the wheel, jittered less than half a slot: always distinct.
    slots = rng.permutation(num_classes) + rng.uniform(-0.2, 0.2, num_classes)
    hue = (rng.random() + slots / num_classes) % 1.0
    saturation = rng.uniform(0.45, 0.9, num_classes)
    value = rng.uniform(0.45, 0.9, num_classes)
    # The second colour: same hue, lighter or darker by a clear step, so patterns show.
    step = rng.uniform(0.25, 0.45, num_classes) * rng.choice([-1.0, 1.0], num_classes)
    value2 = np.where((value + step > 1.0) | (value + step < 0.1), value - step, value + step)
    saturation2 = saturation * rng.uniform(0.5, 1.0, num_classes)
    colours = np.stack(
        [hsv_to_rgb(hue, saturation, value), hsv_to_rgb(hue, saturation2, value2)], axis=1
    ).astype(np.float32)
    used = [0, *(int(c) for c in classes)]
    return Appearance(colours, {c: _random_pattern(rng, size, photos) for c in used})


def _mirror(x: np.ndarray, n: int) -> np.ndarray:
    """Reflect coordinates into [0, n - 1] so that sampled photos tile without seams."""
    period = 2 * (n - 1)
    m = np.mod(x, period)
    return np.where(m > n - 1, period - m, m)


def _bilinear(grid: np.ndarray, x: np.ndarray, y: np.ndarray, *, wrap: bool) -> np.ndarray:
    """Sample grid [h, w] at float coordinates, periodic when `wrap` (value noise, smoothstep
    weights so that the lattice leaves no creases), else mirrored at the edges (photos)."""
    h, w = grid.shape
    if not wrap:
        x, y = _mirror(x, w), _mirror(y, h)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    if wrap:
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        x0, y0 = x0 % w, y0 % h
        x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    else:
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    top = grid[y0, x0] + (grid[y0, x1] - grid[y0, x0]) * fx
    bottom = grid[y1, x0] + (grid[y1, x1] - grid[y1, x0]) * fx
    return top + (bottom - top) * fy


def pattern_values(pattern: Pattern, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """t in [0, 1] at frame coordinates (u, v) (1-D float arrays, pixels)."""
    cos, sin = math.cos(pattern.angle), math.sin(pattern.angle)
    pu = u * cos + v * sin + pattern.shift[0]
    pv = v * cos - u * sin + pattern.shift[1]
    kind, period = pattern.kind, pattern.period
    if kind == "photo":
        return _bilinear(pattern.texture, pu * pattern.zoom, pv * pattern.zoom, wrap=False)
    if kind == "noise":
        return _bilinear(pattern.lattice, pu / period, pv / period, wrap=True)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2 * math.pi * pu / period)
    if kind == "waves":
        bend = 0.25 * period * np.sin(2 * math.pi * pv / (2 * period))
        return 0.5 + 0.5 * np.sin(2 * math.pi * (pu + bend) / period)
    if kind == "checker":
        return ((np.floor(pu / period) + np.floor(pv / period)) % 2).astype(np.float32)
    if kind == "dots":
        fu, fv = pu / period % 1.0 - 0.5, pv / period % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    raise ValueError(f"unknown pattern kind {kind!r}")


def paint(label: np.ndarray, frames: np.ndarray, appearance: Appearance) -> np.ndarray:
    """Paint a [H, W] label map: [H, W, 3] float32 in [0, 1]. Each class's pixels take its two
    colours blended by its pattern, evaluated in the class's texture frame (`frames` [K, 3])."""
    height, width = label.shape
    flat = label.ravel()
    order = np.argsort(flat, kind="stable")  # pixel indices grouped by class
    ends = np.cumsum(np.bincount(flat, minlength=len(frames)))
    image = np.empty((flat.size, 3), dtype=np.float32)
    start = 0
    for cls, end in enumerate(ends):
        if end == start:
            continue
        pixels = order[start:end]
        start = end
        cx, cy, angle = frames[cls].tolist()  # Python floats: stay in float32 below
        dx = (pixels % width).astype(np.float32) + 0.5 - cx
        dy = (pixels // width).astype(np.float32) + 0.5 - cy
        cos, sin = math.cos(angle), math.sin(angle)
        t = pattern_values(appearance.patterns[cls], dx * cos + dy * sin, dy * cos - dx * sin)
        first, second = appearance.colours[cls]
        image[pixels] = first + t[:, None].astype(np.float32) * (second - first)
    return image.reshape(height, width, 3)
