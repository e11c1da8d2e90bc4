"""Random layouts of class shapes: the label maps of the synthetic dataset.

Each foreground class gets one shape (ellipse, rectangle, triangle, pentagon, hexagon or star) of
random size, aspect and rotation, centred in its own cell of a jittered g x g grid (one cell more
than there are shapes, so arrangements vary). Shapes overlap; larger ones are painted first. Every
class is guaranteed a visible area: a disc around each centre, small enough to stay inside its own
cell, is painted last, so these discs never cover each other; the background gets such a disc in
a cell no shape is centred in (there is always one). A layout also returns one texture
frame per class (centre and rotation of its shape; a random shift for the background) so that
painted textures move with their objects.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("ellipse", "rectangle", "triangle", "pentagon", "hexagon", "star")
STAR_DEPTH = 0.45  # star radius dips from 1 to 1 - STAR_DEPTH between points
# Radius of the disc inside each shape of unit half-axes (scaled by the smaller half-axis).
INRADIUS = {
    "ellipse": 1.0,
    "rectangle": 1.0,
    "triangle": math.cos(math.pi / 3),
    "pentagon": math.cos(math.pi / 5),
    "hexagon": math.cos(math.pi / 6),
    "star": 1.0 - STAR_DEPTH,
}
JITTER = 0.2  # centre offset from its cell's centre, in cells
HALF_AXIS = (0.45, 0.85)  # half-axis range, in cells
CORE = 0.28  # guaranteed-visible disc radius cap, in cells (JITTER + CORE < 0.5: inside the cell)
MAX_OBJECTS = 12  # at most this many foreground classes per sample


def choose_classes(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Sorted foreground classes of one sample: between half and all of min(num_classes - 1,
    MAX_OBJECTS) of them, drawn from 1..num_classes-1 (0 is the background)."""
    most = min(num_classes - 1, MAX_OBJECTS)
    count = int(rng.integers(math.ceil(most / 2), most + 1))
    return np.sort(rng.choice(np.arange(1, num_classes), size=count, replace=False))


def _inside(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Membership of points (a, b) in the unit shape (half-axes 1, centred, unrotated)."""
    if kind == "ellipse":
        return a * a + b * b <= 1.0
    if kind == "rectangle":
        return np.maximum(np.abs(a), np.abs(b)) <= 1.0
    if kind == "star":
        radius = 1.0 - STAR_DEPTH * (0.5 + 0.5 * np.cos(5.0 * np.arctan2(b, a)))
        return a * a + b * b <= radius * radius
    sides = {"triangle": 3, "pentagon": 5, "hexagon": 6}[kind]
    normals = (2 * np.arange(sides) + 1) * math.pi / sides
    reach = np.max(
        [a * math.cos(t) + b * math.sin(t) for t in normals], axis=0
    )  # support of a regular polygon with unit circumradius
    return reach <= math.cos(math.pi / sides)


def _box(
    cx: float, cy: float, reach: float, size: int
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel window around a centre and the pixel-centre offsets inside it ([h, 1] and [1, w])."""
    y0, y1 = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach) + 1)
    x0, x1 = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach) + 1)
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    return slice(y0, y1), slice(x0, x1), dy, dx


def random_layout(
    rng: np.random.Generator, classes: np.ndarray, num_classes: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """A [size, size] int64 label map holding background 0 and every class of `classes`, and
    texture frames [num_classes, 3] (centre x, centre y, angle; NaN rows for absent classes)."""
    n = len(classes)
    grid = math.ceil(math.sqrt(n + 1))
    cell = size / grid
    cells = rng.permutation(grid * grid)[: n + 1]  # the last one keeps background visible
    cx = (cells % grid + 0.5 + rng.uniform(-JITTER, JITTER, n + 1)) * cell
    cy = (cells // grid + 0.5 + rng.uniform(-JITTER, JITTER, n + 1)) * cell
    rx, ry = rng.uniform(*HALF_AXIS, size=(2, n)) * cell
    angle = rng.uniform(0.0, 2.0 * math.pi, n)
    kinds = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    background_shift = rng.uniform(0.0, size, 2)

    label = np.zeros((size, size), dtype=np.int64)
    # Python floats keep the pixel arithmetic in float32 (numpy scalars would promote it).
    cxs, cys, rxs, rys, angles = (x.tolist() for x in (cx, cy, rx, ry, angle))
    for i in np.argsort(-(rx * ry), kind="stable").tolist():
        rows, cols, dy, dx = _box(cxs[i], cys[i], math.hypot(rxs[i], rys[i]), size)
        cos, sin = math.cos(angles[i]), math.sin(angles[i])
        a = (dx * cos + dy * sin) * (1.0 / rxs[i])
        b = (dy * cos - dx * sin) * (1.0 / rys[i])
        label[rows, cols][_inside(kinds[i], a, b)] = classes[i]
    cores = [
        min(CORE * cell, INRADIUS[k] * min(a, b)) for k, a, b in zip(kinds, rxs, rys, strict=True)
    ]
    owners = [*classes.tolist(), 0]
    for x, y, core, owner in zip(cxs, cys, [*cores, CORE * cell], owners, strict=True):
        rows, cols, dy, dx = _box(x, y, core, size)
        label[rows, cols][dx * dx + dy * dy <= core * core] = owner

    frames = np.full((num_classes, 3), np.nan)
    frames[classes] = np.stack([cx[:n], cy[:n], angle], axis=1)
    frames[0] = (-background_shift[0], -background_shift[1], 0.0)
    return label, frames
