"""Pictures of what the attention did: warped exemplars, confidence and kept-candidate heat maps,
and a panel per sample that puts them side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from dynast.config import DynaSTConfig
from dynast.data.folder import image_pixels

# Heat map anchors, dark (0) to bright (1): black, violet, red, orange, pale yellow. Monotonic in
# brightness, so the map also reads in greyscale.
_HEAT_ANCHORS = np.array(
    [
        [0.00, 0.00, 0.02],
        [0.28, 0.06, 0.45],
        [0.72, 0.16, 0.33],
        [0.96, 0.55, 0.10],
        [1.00, 0.98, 0.70],
    ]
)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[...] values in [0, 1] (clipped) -> [..., 3] uint8 colours."""
    x = np.clip(values, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.minimum(np.floor(x).astype(int), len(_HEAT_ANCHORS) - 2)
    frac = (x - low)[..., None]
    rgb = _HEAT_ANCHORS[low] * (1.0 - frac) + _HEAT_ANCHORS[low + 1] * frac
    return np.rint(rgb * 255.0).astype(np.uint8)


def candidate_counts(cfg: DynaSTConfig, block_sizes: Sequence[tuple[int, int]]) -> list[int]:
    """How many candidate keys each block's queries choose from: all keys of the grid at the
    coarsest scale (dense), 4k in the first block of a finer scale (inter-scale), 5k after it
    (inner-scale). The kept-count heat maps are scaled by these."""
    counts = []
    for j, (h, w) in enumerate(block_sizes):
        scale, position = divmod(j, cfg.blocks_per_scale)
        if scale == 0:
            counts.append(h * w)
        else:
            counts.append((4 if position == 0 else 5) * cfg.topk)
    return counts


def to_pixels(image: Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """[3, h, w] in [-1, 1] -> [H, W, 3] uint8, enlarged by nearest neighbour to `size`."""
    if size is not None and tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None].float(), size=size, mode="nearest")[0]
    return image_pixels(image)


def heat_pixels(values: Tensor, scale: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """[1, h, w] values -> heat map [H, W, 3] uint8 of values / scale, enlarged to `size`."""
    x = values.detach().float().cpu()[None] / scale  # [1, 1, h, w]
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest")
    return heat_colours(x[0, 0].numpy())


def panel(rows: Sequence[Sequence[np.ndarray | None]], gap: int = 2) -> np.ndarray:
    """Tiles [H, W, 3] uint8 (all one size; None leaves a blank) in rows, white gaps."""
    tile = next(t for row in rows for t in row if t is not None)
    th, tw = tile.shape[:2]
    columns = max(len(row) for row in rows)
    out = np.full(
        (len(rows) * (th + gap) + gap, columns * (tw + gap) + gap, 3), 255, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            if t is not None:
                y, x = gap + r * (th + gap), gap + c * (tw + gap)
                out[y : y + th, x : x + tw] = t
    return out


def sample_panel(
    *,
    layout: np.ndarray,
    exemplar: np.ndarray,
    output: np.ndarray,
    target: np.ndarray | None,
    warps: Sequence[np.ndarray],
    confs: Sequence[np.ndarray],
    kept: Sequence[np.ndarray],
) -> np.ndarray:
    """Row 1: target layout, exemplar, output, target. Then one column per attention block
    (coarsest first): warped exemplar, confidence, kept candidates."""
    rows: list[list[np.ndarray | None]] = [[layout, exemplar, output, target]]
    rows.extend(list(row) for row in (warps, confs, kept) if row)
    return panel(rows)
