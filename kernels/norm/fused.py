"""The fused backend of the positional normalisation and the SPADE modulation: launch configs,
launchers and the autograd.Function (the Triton kernels: `kernels.norm.triton`).

NCHW steps load BLOCK_C rows of 128 consecutive pixels, channels_last steps a run of up to 64
consecutive channels per pixel: coalesced whatever C is. The kernels are memory-bound and not
autotuned: one rule per layout picks the launch config (`norm_config`).

File order: the launchers, the autograd.Function, the entry `spade_modulation`. The operators
with validation and backends are in `kernels.norm.op`; the ahead-of-time cases in
`kernels.norm.aot`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import runtime
from .triton import spade_norm_bwd_kernel, spade_norm_fwd_kernel

# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormConfig:
    """Launch config: BLOCK_P pixels per program, BLOCK_C channels per step. The kernels are
    memory-bound and their tile is small, so one rule per layout serves every size (no
    autotuning); a tile is at most 2,048 values, 16 per thread per tensor at 4 warps.
    NCHW: 128 pixels, 256-512 contiguous bytes per channel row, 16 channels per step.
    channels_last: up to 64 channels per step, a contiguous run per pixel, and the pixels that fill
    the tile."""

    block_p: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 1


def norm_config(channels: int, pixels: int, channels_last: bool = False) -> NormConfig:
    if channels_last:
        block_c = min(64, max(2, triton.next_power_of_2(channels)))
        block_p = min(2048 // block_c, max(16, triton.next_power_of_2(pixels)))
    else:
        block_p = min(128, max(16, triton.next_power_of_2(pixels)))
        block_c = min(16, max(2, triton.next_power_of_2(channels)))
    return NormConfig(block_p=block_p, block_c=block_c)


def memory_format(x: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def is_channels_last(x: Tensor) -> bool:
    """True for a channels_last tensor that is not also NCHW-contiguous (C = 1 or one pixel)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _empty_like(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A buffer of x's shape and layout (through `runtime.empty`, which the tests poison)."""
    b, c, h, w = x.shape
    if is_channels_last(x):
        return runtime.empty((b, h, w, c), dtype, x.device).permute(0, 3, 1, 2)
    return runtime.empty((b, c, h, w), dtype, x.device)


def _layout_args(x: Tensor, *others: Tensor | None) -> tuple[list[int], NormConfig, tuple]:
    """Sizes and strides of the launch, its config and grid. Every tensor the kernels read or write
    must share x's strides (`kernels.norm.op` makes them so): one set of offsets serves them all."""
    b, c, h, w = x.shape
    for t in others:
        if t is not None and t.stride() != x.stride():
            raise ValueError(f"strides {t.stride()} differ from x's {x.stride()}")
    config = norm_config(c, h * w, is_channels_last(x))
    grid = (triton.cdiv(h * w, config.block_p), b)
    return [c, h * w, x.stride(0), x.stride(1), x.stride(3)], config, grid


def _launch_forward(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    b, _, h, w = x.shape
    out = _empty_like(x, x.dtype)
    sizes, config, grid = _layout_args(x, gamma, beta, out)
    mean = runtime.empty((b, h * w), torch.float32, x.device)
    rstd = runtime.empty((b, h * w), torch.float32, x.device)
    affine = gamma is not None
    spade_norm_fwd_kernel[grid](
        x,
        gamma if affine else x,
        beta if affine else x,
        out,
        mean,
        rstd,
        *sizes,
        float(eps),
        HAS_AFFINE=affine,
        BLOCK_C=config.block_c,
        BLOCK_P=config.block_p,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out, mean, rstd


def _launch_backward(
    x: Tensor, gamma: Tensor | None, dout: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor | None]:
    affine = gamma is not None
    dx = _empty_like(x, x.dtype)
    dgamma = _empty_like(x, gamma.dtype) if affine else None
    sizes, config, grid = _layout_args(x, gamma, dout, dx, dgamma)
    spade_norm_bwd_kernel[grid](
        x,
        gamma if affine else x,
        dout,
        mean,
        rstd,
        dx,
        dgamma if affine else dx,
        *sizes,
        HAS_AFFINE=affine,
        BLOCK_C=config.block_c,
        BLOCK_P=config.block_p,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return dx, dgamma


# --------------------------------------------------------------------------------------------------
# Autograd and the fused backend's entry
# --------------------------------------------------------------------------------------------------


class _SpadeNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float) -> Tensor:
        out, mean, rstd = _launch_forward(x, gamma, beta, eps)
        ctx.save_for_backward(x, gamma, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor):
        x, gamma, mean, rstd = ctx.saved_tensors
        dout = dout.contiguous(memory_format=memory_format(x))
        dx, dgamma = _launch_backward(x, gamma, dout, mean, rstd)
        dbeta = dout if gamma is not None and ctx.needs_input_grad[2] else None
        return dx, dgamma, dbeta, None


def spade_modulation(
    x: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float = 1e-8
) -> Tensor:
    """`(1 + gamma) * positional_norm(x) + beta` (gamma and beta None: the normalisation alone) on
    [B, C, H, W] tensors of one dtype and one layout, NCHW- or channels_last-contiguous, C >= 2;
    validated by `kernels.norm.op`. The outputs and gradients keep that layout."""
    return _SpadeNorm.apply(x, gamma, beta, eps)
