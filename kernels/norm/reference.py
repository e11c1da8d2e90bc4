"""Plain PyTorch reference of the positional normalisation and SPADE's modulation: the
specification the fused normalisation kernels meet, and bit for bit what the model always ran."""

from __future__ import annotations

import torch
from torch import Tensor


def reference_positional_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise every pixel of x [B, C, H, W] over its channels: subtract the channel mean, divide
    by sqrt(unbiased channel variance + eps), as the release. Computed in x's dtype, the way the
    model always ran it."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def reference_spade_modulation(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-8) -> Tensor:
    """SPADE's denormalisation `(1 + gamma) * positional_norm(x) + beta`; gamma and beta have x's
    shape (the outputs of SPADE's two convolutions)."""
    return (1 + gamma) * reference_positional_norm(x, eps) + beta
