"""Pictures of what the attention did: warped exemplars, confidence and kept-candidate heat maps,
the semantic inputs as a person reads them, and a labelled panel per sample that puts them side
by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from dynast.config import DynaSTConfig
from dynast.data import semantic_to_rgb
from dynast.data.folder import image_pixels
from dynast.panel import PanelRow, labelled_panel

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


def semantic_pixels(semantic: Tensor, kind: str) -> np.ndarray:
    """[Cs, H, W] semantic input -> [H, W, 3] uint8 picture. "pose": the encoding's first three
    channels, the colour skeleton on black (the 17 distance maps after them are not drawn);
    "edges": the all-edges channel, white on black; "classes": each class in the fixed palette."""
    if kind == "pose":
        return image_pixels(semantic[:3].detach().float() * 2.0 - 1.0)
    if kind == "edges":
        return image_pixels(semantic[:1].detach().float().expand(3, -1, -1) * 2.0 - 1.0)
    return image_pixels(semantic_to_rgb(semantic[None].detach().float())[0])


def block_label(cfg: DynaSTConfig, block: int, size: tuple[int, int]) -> str:
    """ "block 3 16x16 inner": a block's running index, grid and attention kind."""
    scale, position = divmod(block, cfg.blocks_per_scale)
    kind = "dense" if scale == 0 else ("inter" if position == 0 else "inner")
    return f"block {block} {size[0]}x{size[1]} {kind}"


def sample_panel(
    *,
    layout: np.ndarray,
    exemplar: np.ndarray,
    output: np.ndarray,
    target: np.ndarray | None,
    warps: Sequence[np.ndarray],
    confs: Sequence[np.ndarray],
    kept: Sequence[np.ndarray],
    exemplar_layout: np.ndarray | None = None,
    block_labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Row 1: input (the target layout), exemplar input (when given), exemplar, output, target
    (when given), each captioned. Then one column per attention block (coarsest first, captioned
    `block_labels` or "block j"), in rows labelled warp, confidence, kept."""
    images = [("input", layout), ("exemplar input", exemplar_layout), ("exemplar", exemplar)]
    images += [("output", output), ("target", target)]
    images = [(name, tile) for name, tile in images if tile is not None]
    rows = [PanelRow("", [t for _, t in images], [n for n, _ in images])]
    count = max(len(warps), len(confs), len(kept))
    labels = (
        list(block_labels) if block_labels is not None else [f"block {j}" for j in range(count)]
    )
    first = True
    for name, tiles in (("warp", warps), ("confidence", confs), ("kept", kept)):
        if tiles:
            rows.append(PanelRow(name, list(tiles), labels if first else None))
            first = False
    return labelled_panel(rows)
