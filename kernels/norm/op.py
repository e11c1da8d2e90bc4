"""Public normalisation operators of the generator: validation, dtype policy, backend dispatch.

`positional_norm(x)` normalises every pixel over its channels; `spade_modulation(x, gamma, beta)`
is SPADE's `(1 + gamma) * positional_norm(x) + beta`. Backends as the attention operators
(`kernels.call`): "torch" runs the reference, `kernels.norm.reference` (bit for bit what the model
always ran), "triton" the fused kernels of `kernels.norm.fused` (imported at their first call),
"auto" Triton for CUDA tensors.
float64 inputs always take the reference (the kernels compute in fp32). While `torch.compile`
traces, the reference runs whatever the backend: inductor fuses that chain
itself, and the comparison of the two is one of the things the benchmarks measure.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..call import check_backend, check_float_tensor, use_triton
from .reference import reference_positional_norm, reference_spade_modulation


def _check_map(name: str, x: object) -> Tensor:
    return check_float_tensor(name, x, 4, "[B, C, H, W]")


def _check_common(x: Tensor, eps: object, backend: object) -> float:
    if x.shape[1] < 2:
        raise ValueError(
            f"x must have at least 2 channels (the unbiased variance over channels divides by "
            f"C - 1), got shape {tuple(x.shape)}"
        )
    check_backend(backend)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite real number, got {eps!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return float(eps)


def use_fused(backend: str, *maps: Tensor) -> bool:
    """Whether `backend` runs the fused kernels on these maps."""
    # The kernels compute in fp32: float64 (gradchecks, the float64 model of the tests) keeps
    # its precision through the reference.
    if any(t.dtype == torch.float64 for t in maps):
        return False
    return not torch.compiler.is_compiling() and use_triton(backend, maps[0])


def positional_norm(x: Tensor, eps: float = 1e-8, *, backend: str = "torch") -> Tensor:
    """x [B, C, H, W], C >= 2 -> (x - mean_c) / sqrt(var_c + eps), per pixel, unbiased variance;
    the output has x's dtype."""
    _check_map("x", x)
    eps = _check_common(x, eps, backend)
    if not use_fused(backend, x):
        return reference_positional_norm(x, eps)
    from . import fused

    return fused.spade_modulation(
        x.contiguous(memory_format=fused.memory_format(x)), None, None, eps
    )


def spade_modulation(
    x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-8, *, backend: str = "torch"
) -> Tensor:
    """x, gamma, beta [B, C, H, W] of one shape, C >= 2 -> (1 + gamma) * positional_norm(x) +
    beta. Mixed float dtypes (autocast gives bf16 convolution outputs next to an fp32 x) promote
    as the eager expression does; the output has the promoted dtype."""
    for name, t in (("x", x), ("gamma", gamma), ("beta", beta)):
        _check_map(name, t)
    eps = _check_common(x, eps, backend)
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if not use_fused(backend, x, gamma, beta):
        return reference_spade_modulation(x, gamma, beta, eps)
    dtype = torch.promote_types(torch.promote_types(x.dtype, gamma.dtype), beta.dtype)
    from . import fused

    # One layout for all three, x's: NCHW, or channels_last when x is (the kernels take strides).
    layout = fused.memory_format(x)
    x, gamma, beta = (t.to(dtype).contiguous(memory_format=layout) for t in (x, gamma, beta))
    return fused.spade_modulation(x, gamma, beta, eps)
