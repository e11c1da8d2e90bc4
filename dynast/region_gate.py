"""The region gate (ours, not in the release; `DynaSTConfig.region_gate`, docs/method.md section 2).

With `output_from_warp` the decoder corrects the finest warped exemplar. The warped exemplar copies
one texture sample per position, and where the match is off by part of a pattern period it pays
for it in L1, where the colour pooled over the position's semantic region would not. A
convolutional decoder does not learn such a region-wide operation within a few hundred steps, so
the gate offers it: per pixel, a learned blend of the warped exemplar and its mean over the
target's semantic regions, both taken from the correspondence (no colour of the exemplar's own
regions enters).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import conv2d


def region_mean(image: Tensor, semantic: Tensor, eps: float = 1e-6) -> Tensor:
    """Every pixel's mean of `image` over its semantic regions.

    image [B, C, h, w]; semantic [B, K, h, w], non-negative (one-hot class maps in the
    synthetic and segmentation presets). With m_k = sum_y S_k(y) image(y) / sum_y S_k(y), the
    result at x is sum_k S_k(x) m_k / sum_k S_k(x): for a one-hot map, the mean over the pixels of
    x's class; for soft maps (pose heatmaps, edges) the same weighted pooling. A pixel or class
    with no mass gets 0 (eps keeps the division finite).
    """
    if image.dim() != 4 or semantic.dim() != 4:
        raise ValueError(
            f"region_mean expects image [B, C, h, w] and semantic [B, K, h, w], "
            f"got {tuple(image.shape)} and {tuple(semantic.shape)}"
        )
    if semantic.shape[0] != image.shape[0] or semantic.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"region_mean: semantic {tuple(semantic.shape)} must match image "
            f"{tuple(image.shape)} in batch and spatial size"
        )
    semantic = semantic.to(image.dtype)
    mass = semantic.sum(dim=(2, 3))  # [B, K]
    means = torch.einsum("bkhw,bchw->bkc", semantic, image) / (mass[..., None] + eps)
    weight = semantic.sum(dim=1, keepdim=True)
    return torch.einsum("bkc,bkhw->bchw", means, semantic) / (weight + eps)


class RegionGate(nn.Module):
    """`gate(decoded, warp, semantic, conf)` -> warp + g * (region_mean(warp) - warp), with
    g = sigmoid(conv3x3(concat(decoded, warp, region_mean(warp), conf))) per pixel.

    The convolution starts at zero, so g starts at 1/2 everywhere (the gate has no preference
    before training); training moves it towards the region mean where the warp's texture is
    unreliable and towards the warp where it is right."""

    def __init__(self, decoded_channels: int) -> None:
        super().__init__()
        self.conv = conv2d(decoded_channels + 3 + 3 + 1, 1, 3, gain=1.0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, decoded: Tensor, warp: Tensor, semantic: Tensor, conf: Tensor) -> Tensor:
        """decoded [B, C, h, w]; warp [B, 3, h, w]; semantic [B, K, h, w]; conf [B, 1, h, w]."""
        warp = warp.to(decoded.dtype)
        pooled = region_mean(warp, semantic)
        inputs = torch.cat([decoded, warp, pooled, conf.to(decoded.dtype)], dim=1)
        gate = torch.sigmoid(self.conv(inputs))
        return torch.lerp(warp, pooled, gate)
