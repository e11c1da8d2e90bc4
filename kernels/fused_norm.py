"""Fused Triton kernels of the positional normalisation and the SPADE modulation, forward and
backward.

Specification: `kernels.reference.reference_positional_norm` and `reference_spade_modulation`:
`out = (1 + gamma) * (x - mean) * rstd + beta`, mean and unbiased variance over the C channels of
each pixel, `rstd = 1 / sqrt(var + eps)`. Eager PyTorch runs that as a chain of about ten
memory-bound kernels (mean, var, sub, add, sqrt, div, add, mul, add), each reading and writing a
[B, C, H, W] tensor; its backward as many again. Here each direction is one kernel:

- forward: x read twice (channel sums, then the output), gamma and beta once, out written once;
  the per-pixel mean and rstd (fp32, B * H * W each) are kept for the backward;
- backward: x, dout and gamma read twice, dx and dgamma written once; dbeta is dout itself.

A program owns BLOCK_P neighbouring pixels of one sample and walks the channels in steps of
BLOCK_C. Inputs are NCHW- or channels_last-contiguous (all in one layout, given to the kernels as
strides). NCHW steps load BLOCK_C rows of 128 consecutive pixels, channels_last steps a run of up
to 64 consecutive channels per pixel: coalesced whatever C is. All arithmetic is fp32; the
outputs are rounded once, to the inputs' dtype. The channel sums are taken about the pixel's
first channel (a shifted-data variance), so a large mean does not cancel the variance away, with
one pass over x instead of two.

File order: jit kernels, the launchers, the autograd.Function, the public `spade_modulation`.
The operators with validation and backends are in `kernels.norm`; the ahead-of-time cases in
`kernels.aot_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime

# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C: tl.constexpr):
    """Offsets [C, P] and mask of the channel step starting at c0 over the program's pixels."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    mask = (offs_c[:, None] < n_channels) & mask_p[None, :]
    ptrs = base + offs_c[:, None].to(tl.int64) * stride_c + offs_p[None, :].to(tl.int64) * stride_p
    return ptrs, mask


@triton.jit
def _spade_norm_fwd_kernel(
    X,
    GAMMA,
    BETA,
    OUT,
    MEAN,
    RSTD,
    n_channels,
    n_pixels,
    stride_b,
    stride_c,
    stride_p,
    eps,
    HAS_AFFINE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [P]
    mask_p = offs_p < n_pixels
    base = b.to(tl.int64) * stride_b
    shift = tl.load(X + base + offs_p.to(tl.int64) * stride_p, mask=mask_p, other=0.0).to(
        tl.float32
    )  # [P]
    sum_d = tl.zeros([BLOCK_P], dtype=tl.float32)
    sum_dd = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        ptrs, mask = _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C)
        x = tl.load(X + ptrs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift[None, :], 0.0)
        sum_d += tl.sum(d, axis=0)
        sum_dd += tl.sum(d * d, axis=0)
    mean_d = sum_d / n_channels
    var = tl.maximum((sum_dd - sum_d * mean_d) / (n_channels - 1), 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    mean = shift + mean_d
    stats = b.to(tl.int64) * n_pixels + offs_p
    tl.store(MEAN + stats, mean, mask=mask_p)
    tl.store(RSTD + stats, rstd, mask=mask_p)
    for c0 in range(0, n_channels, BLOCK_C):
        ptrs, mask = _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C)
        x = tl.load(X + ptrs, mask=mask, other=0.0).to(tl.float32)
        y = (x - mean[None, :]) * rstd[None, :]
        if HAS_AFFINE:
            g = tl.load(GAMMA + ptrs, mask=mask, other=0.0).to(tl.float32)
            bt = tl.load(BETA + ptrs, mask=mask, other=0.0).to(tl.float32)
            y = y * (1.0 + g) + bt
        tl.store(OUT + ptrs, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _spade_norm_bwd_kernel(
    X,
    GAMMA,
    DOUT,
    MEAN,
    RSTD,
    DX,
    DGAMMA,
    n_channels,
    n_pixels,
    stride_b,
    stride_c,
    stride_p,
    HAS_AFFINE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # With C channels, n = (x - mean) * rstd and dn = dout * (1 + gamma):
    #   dx = rstd * (dn - sum(dn) / C - n * sum(dn * n) / (C - 1)),  dgamma = dout * n.
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < n_pixels
    base = b.to(tl.int64) * stride_b
    stats = b.to(tl.int64) * n_pixels + offs_p
    mean = tl.load(MEAN + stats, mask=mask_p, other=0.0)
    rstd = tl.load(RSTD + stats, mask=mask_p, other=0.0)
    sum_dn = tl.zeros([BLOCK_P], dtype=tl.float32)
    sum_dn_n = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, n_channels, BLOCK_C):
        ptrs, mask = _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C)
        x = tl.load(X + ptrs, mask=mask, other=0.0).to(tl.float32)
        dn = tl.load(DOUT + ptrs, mask=mask, other=0.0).to(tl.float32)
        if HAS_AFFINE:
            dn = dn * (1.0 + tl.load(GAMMA + ptrs, mask=mask, other=0.0).to(tl.float32))
        n = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
        sum_dn += tl.sum(dn, axis=0)
        sum_dn_n += tl.sum(dn * n, axis=0)
    mean_dn = sum_dn / n_channels
    proj = sum_dn_n / (n_channels - 1)
    for c0 in range(0, n_channels, BLOCK_C):
        ptrs, mask = _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C)
        x = tl.load(X + ptrs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DOUT + ptrs, mask=mask, other=0.0).to(tl.float32)
        n = (x - mean[None, :]) * rstd[None, :]
        dn = dy
        if HAS_AFFINE:
            dn = dy * (1.0 + tl.load(GAMMA + ptrs, mask=mask, other=0.0).to(tl.float32))
            tl.store(DGAMMA + ptrs, (dy * n).to(DGAMMA.dtype.element_ty), mask=mask)
        dx = rstd[None, :] * (dn - mean_dn[None, :] - n * proj[None, :])
        tl.store(DX + ptrs, dx.to(DX.dtype.element_ty), mask=mask)


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
    must share x's strides (`kernels.norm` makes them so): one set of offsets serves them all."""
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
    _spade_norm_fwd_kernel[grid](
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
    _spade_norm_bwd_kernel[grid](
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
# autograd
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
    validated by `kernels.norm`. The outputs and gradients keep that layout."""
    return _SpadeNorm.apply(x, gamma, beta, eps)
