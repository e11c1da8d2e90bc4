"""Sample grids: one row per pair, labelled "pair N" on the left, and the columns semantic map |
exemplar | warped exemplar | output | ground truth, captioned above the first row; saved as PNG
through a temporary file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dynast.panel import PanelRow, labelled_panel
from kernels.files import write_atomically

COLUMNS = ("semantic", "exemplar", "warped exemplar", "output", "ground truth")


def sample_tiles(
    semantic_rgb: Tensor, exemplar: Tensor, warp: Tensor, output: Tensor, target: Tensor
) -> np.ndarray:
    """[B, 3, H, W] images in [-1, 1] (the warp may be smaller: it is upsampled, nearest) ->
    uint8 tiles [B, 5, H, W, 3], in the order of COLUMNS."""
    height, width = output.shape[-2:]
    columns = []
    for name, image in zip(COLUMNS, (semantic_rgb, exemplar, warp, output, target), strict=True):
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != output.shape[0]:
            want = f"[{output.shape[0]}, 3, h, w]"
            raise ValueError(f"sample_grid: {name} must be {want}, got {tuple(image.shape)}")
        image = image.detach().float().cpu()
        if image.shape[-2:] != (height, width):
            image = F.interpolate(image, size=(height, width), mode="nearest")
        columns.append(image)
    tiles = torch.stack(columns, dim=1)  # [B, 5, 3, H, W]
    tiles = ((tiles.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return tiles.permute(0, 1, 3, 4, 2).contiguous().numpy()


def sample_grid(
    semantic_rgb: Tensor, exemplar: Tensor, warp: Tensor, output: Tensor, target: Tensor
) -> np.ndarray:
    """The labelled picture (`dynast.panel.labelled_panel`) of `sample_tiles`: uint8 [H, W, 3]."""
    tiles = sample_tiles(semantic_rgb, exemplar, warp, output, target)
    rows = [
        PanelRow(f"pair {i}", list(row), COLUMNS if i == 0 else None) for i, row in enumerate(tiles)
    ]
    return labelled_panel(rows)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a uint8 [H, W, 3] image to `path` through a temporary name (never half-written)."""
    write_atomically(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
