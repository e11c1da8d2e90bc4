"""A fixed colour per class, and semantic maps drawn in it."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from .appearance import hsv_to_rgb

GOLDEN = 0.6180339887498949


def palette(num_classes: int) -> np.ndarray:
    """Fixed colours [num_classes, 3] in [0, 1]: class 0 black, then hues stepped by the golden
    ratio (neighbouring class indices far apart on the wheel) with alternating saturation and
    brightness."""
    index = np.arange(num_classes, dtype=np.float64)
    colours = hsv_to_rgb(
        (index * GOLDEN) % 1.0,
        np.where(index % 2 == 0, 0.55, 0.9),
        np.where(index % 3 == 0, 0.7, 0.95),
    )
    colours[0] = 0.0
    return colours.astype(np.float32)


def semantic_to_rgb(semantic: Tensor) -> Tensor:
    """[B, Cs, H, W] semantic map -> [B, 3, H, W] in [-1, 1]: each pixel's strongest channel in
    the fixed `palette` (ties take the lower channel). Same dtype-independent colours on any
    device; the result is float32."""
    if not isinstance(semantic, Tensor) or semantic.dim() != 4:
        shape = tuple(semantic.shape) if isinstance(semantic, Tensor) else type(semantic).__name__
        raise ValueError(f"semantic must be a [B, Cs, H, W] tensor, got {shape}")
    colours = torch.from_numpy(palette(semantic.shape[1]) * 2.0 - 1.0).to(semantic.device)
    rgb = colours[semantic.argmax(dim=1)]  # [B, H, W, 3]
    return rearrange(rgb, "b h w c -> b c h w").contiguous()
