"""The building blocks of the dense kernels (`kernels.dense.triton`): score tiles, products over
a handful of channels, and the warp weights recomputed from saved statistics.

Softmax runs in base 2 (`z2 = z * log2 e`), so the scores these return are base-2 scores and the
statistics base-2 log-sum-exps. The candidate kernels share `warp_z_part`.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

# Softmax runs on exp2: z2 = z * log2(e).
LOG2E = tl.constexpr(math.log2(math.e))
LOWEST = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX: the rank of NaN and -inf scores


@triton.jit
def row_dots(
    X,
    x_rows,
    x_ok,
    stride_x,
    Y,
    y_rows,
    y_ok,
    stride_y,
    C,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """[BLOCK_R, BLOCK_S] fp32 of `X[x_rows] . Y[y_rows]` over C contiguous channels, in chunks of
    BLOCK_D so that channel counts of 640 never need a 1024-wide padded tile."""
    acc = tl.zeros((BLOCK_R, BLOCK_S), dtype=tl.float32)
    x_off = x_rows.to(tl.int64)[:, None] * stride_x
    y_off = y_rows.to(tl.int64)[None, :] * stride_y
    for c0 in range(0, C, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D)
        c_ok = cols < C
        x = tl.load(X + x_off + cols[None, :], mask=x_ok[:, None] & c_ok[None, :], other=0.0)
        y = tl.load(Y + y_off + cols[:, None], mask=y_ok[None, :] & c_ok[:, None], other=0.0)
        acc = tl.dot(x, y, acc, input_precision=PRECISION)
    return acc


@triton.jit
def sample_inputs(
    Q, K, V, QP, KP, WV, pid_b, stride_qb, stride_kb, stride_vb, stride_qpb, stride_kpb, stride_wvb
):
    """The six input pointers moved to sample pid_b, by their batch strides."""
    return (
        Q + pid_b * stride_qb,
        K + pid_b * stride_kb,
        V + pid_b * stride_vb,
        QP + pid_b * stride_qpb,
        KP + pid_b * stride_kpb,
        WV + pid_b * stride_wvb,
    )


@triton.jit
def score_tiles(
    X,
    XP,
    x_rows,
    x_ok,
    stride_xn,
    stride_xpn,
    Y,
    YP,
    y_rows,
    y_ok,
    stride_yn,
    stride_ypn,
    Cqk,
    Cp,
    scale,
    prune_scale,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The fp32 score tiles [BLOCK_R, BLOCK_S] of rows x_rows against rows y_rows: the base-2
    softmax scores z2 = scale log2(e) X . Y and the prune logits s = prune_scale XP . YP. The
    queries are the x side and the keys the y side, but for the key kernel's transposed tiles."""
    z2 = (scale * LOG2E) * row_dots(
        X, x_rows, x_ok, stride_xn, Y, y_rows, y_ok, stride_yn, Cqk,
        BLOCK_R, BLOCK_S, BLOCK_D, PRECISION,
    )  # fmt: skip
    s = prune_scale * row_dots(
        XP, x_rows, x_ok, stride_xpn, YP, y_rows, y_ok, stride_ypn, Cp,
        BLOCK_R, BLOCK_S, BLOCK_DP, PRECISION,
    )  # fmt: skip
    return z2, s


@triton.jit
def few_channel_dots(
    X,
    x_rows,
    x_ok,
    stride_x,
    Y,
    y_rows,
    y_ok,
    stride_y,
    C,
    BLOCK_R: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_X: tl.constexpr,
):
    """`row_dots` for a handful of channels (the warp's 3), on CUDA cores: outer products."""
    acc = tl.zeros((BLOCK_R, BLOCK_S), dtype=tl.float32)
    x_off = x_rows.to(tl.int64) * stride_x
    y_off = y_rows.to(tl.int64) * stride_y
    for c in tl.static_range(BLOCK_X):
        # Channel tests as tensors: the interpreter rejects a tensor & scalar mask.
        x_c_ok = (tl.zeros_like(x_rows) + c) < C
        y_c_ok = (tl.zeros_like(y_rows) + c) < C
        x = tl.load(X + x_off + c, mask=x_ok & x_c_ok, other=0.0).to(tl.float32)
        y = tl.load(Y + y_off + c, mask=y_ok & y_c_ok, other=0.0).to(tl.float32)
        acc += x[:, None] * y[None, :]
    return acc


@triton.jit
def times_few_columns(
    p, X, x_rows, x_ok, stride_x, c_x, BLOCK_R: tl.constexpr, BLOCK_X: tl.constexpr
):
    """[BLOCK_R, BLOCK_X] fp32 `p @ X[x_rows, :c_x]` for a handful of channels (the 3 of the warp),
    on CUDA cores: a tensor-core product would pad them to 16 and hold wide tiles in registers."""
    out_cols = tl.arange(0, BLOCK_X)
    out = tl.zeros((BLOCK_R, BLOCK_X), tl.float32)
    x_off = x_rows.to(tl.int64) * stride_x
    for c in tl.static_range(BLOCK_X):
        # The channel test as a tensor: the interpreter rejects a tensor & scalar mask.
        c_ok = (tl.zeros_like(x_rows) + c) < c_x
        x = tl.load(X + x_off + c, mask=x_ok & c_ok, other=0.0).to(tl.float32)
        out += tl.where(out_cols[None, :] == c, tl.sum(p * x[None, :], 1)[:, None], 0.0)
    return out


@triton.jit
def dot_scaled(a, x, acc, PRECISION: tl.constexpr):
    """acc + a @ x for an fp32 gradient tile a (`scale dz`, `prune_scale ds`, ...): in x's dtype
    for bf16 and fp32 inputs (bf16 has fp32's range), in fp32 for fp16, whose range (65,504)
    `scale dz` can exceed where the fp32 reference stays finite."""
    if x.dtype == tl.float16:
        return tl.dot(a, x.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a.to(x.dtype), x, acc, input_precision=PRECISION)


@triton.jit
def warp_weights(z2, s, valid, lse_w, warp_all, WARP_MODE: tl.constexpr):
    """The warp weights w recomputed from the saved base-2 log-sum-exp `lse_w`: over the kept
    keys (1; all of them where none is kept, `warp_all`), over all keys (3), or the release's
    "pruned" (2): softmax of z with the kept scores filled with -1e4. exp(-1e4 - max) is exactly
    0 in fp32 beside any pruned score above -9,897, so there the pruned keys' softmax; where every
    key is kept (`warp_all`, lse_w = log2 Nk) all scores are equal: the uniform 1 / Nk.
    A selection, never differentiated."""
    if WARP_MODE == 1:
        w = tl.where(((s > 0) | warp_all) & valid, tl.exp2(z2 - lse_w), 0.0)
    elif WARP_MODE == 2:
        sel = ((s <= 0) | warp_all) & valid
        w = tl.where(sel, tl.exp2(tl.where(warp_all, 0.0, z2) - lse_w), 0.0)
    else:
        w = tl.where(valid, tl.exp2(z2 - lse_w), 0.0)
    return w


@triton.jit
def warp_z_part(x, s, WARP_MODE: tl.constexpr):
    """x where the warp softmax's score is z: everywhere but the filled (kept) keys of mode 2."""
    if WARP_MODE == 2:
        x = tl.where(s > 0, 0.0, x)
    return x
