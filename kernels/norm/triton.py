"""The Triton kernels of the positional normalisation and the SPADE modulation, forward and
backward.

Specification: `kernels.norm.reference`: `out = (1 + gamma) * (x - mean) * rstd + beta`, mean and
unbiased variance over the C channels of each pixel, `rstd = 1 / sqrt(var + eps)`. Eager PyTorch
runs that as a chain of about ten memory-bound kernels (mean, var, sub, add, sqrt, div, add, mul,
add), each reading and writing a [B, C, H, W] tensor; its backward as many again. Here each
direction is one kernel:

- forward: x read twice (channel sums, then the output), gamma and beta once, out written once;
  the per-pixel mean and rstd (fp32, B * H * W each) are kept for the backward;
- backward: x, dout and gamma read twice, dx and dgamma written once; dbeta is dout itself.

A program owns BLOCK_P neighbouring pixels of one sample and walks the channels in steps of
BLOCK_C. Inputs are NCHW- or channels_last-contiguous (all in one layout, given to the kernels as
strides). All arithmetic is fp32; the outputs are rounded once, to the inputs' dtype. The channel
sums are taken about the pixel's first channel (a shifted-data variance), so a large mean does not
cancel the variance away, with one pass over x instead of two. The launchers:
`kernels.norm.fused`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(c0, offs_p, mask_p, base, n_channels, stride_c, stride_p, BLOCK_C: tl.constexpr):
    """Offsets [C, P] and mask of the channel step starting at c0 over the program's pixels."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    mask = (offs_c[:, None] < n_channels) & mask_p[None, :]
    ptrs = base + offs_c[:, None].to(tl.int64) * stride_c + offs_p[None, :].to(tl.int64) * stride_p
    return ptrs, mask


@triton.jit
def spade_norm_fwd_kernel(
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
def spade_norm_bwd_kernel(
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
