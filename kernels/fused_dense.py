"""Fused Triton kernels of dense dynamic attention (docs/method.md section 4), forward and backward.

The forward works in the manner of flash attention: a program owns a tile of queries (and a chunk
of the value channels), streams key tiles, and keeps per query the running softmax statistics over
all keys, the masked value sum, conf, the restricted-softmax statistics of the warp and a running
top-k of the scores. No (queries x keys) matrix reaches device memory; the backward gets per-query
log-sum-exps and recomputes scores tile by tile. `docs/kernels-dense.md` derives the gradients.

Layout: token-major tensors with contiguous channels; a program's scores are fp32 whatever the
input dtype; softmax runs in base 2 (`z2 = z * log2 e`), so the saved statistics are base-2
log-sum-exps. The default backward is tiled: one kernel recomputes each (queries x keys) score
tile once and writes the tiles every gradient is a product of (bounded scratch, chunks of keys),
and batched matrix products finish the gradients. The streamed backward
(`DYNAST_DENSE_BACKWARD=streamed`, no scratch) has one kernel per side: the query side writes dq
and dq_prune, the key side dk, dk_prune, dv and dwarp_values; each program owns a tile of rows and
one chunk of one gradient's channels, so no two programs write the same element (no atomics).

Sizes and block names: the `kernels` package docstring. File order: jit kernels, launchers (launch
configs first), the autograd.Function, the public `attention`. The autotuner's runners are in
`kernels.tuning_dense`, the ahead-of-time cases in `kernels.aot_dense`.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime
from .reference import WARP_MODE_IDS
from .runtime import interpreting
from .tuning import LaunchConfig, LaunchSpace, tuned_config

# Softmax runs on exp2: z2 = z * log2(e).
_LOG2E = tl.constexpr(math.log2(math.e))
_LOWEST = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX: the rank of NaN and -inf scores
# The largest top-k the fused dense forward takes. Its running list is BLOCK_K = next_pow2(k)
# wide, merged by k serial rounds per key tile; k = 8, 16 and 32 are in the AOT report at the
# model's dense size (`kernels.aot_dense`); some combinations spill a few bytes
# (docs/kernels-dense.md).
TOPK_MAX = 32
# The input gradients, in the order of the inputs (q, k, v, q_prune, k_prune, warp_values).
GRADIENT_NAMES = ("dq", "dk", "dv", "dq_prune", "dk_prune", "dwarp_values")


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _row_dots(
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
def _sample_inputs(
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
def _scores(
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
    z2 = (scale * _LOG2E) * _row_dots(
        X, x_rows, x_ok, stride_xn, Y, y_rows, y_ok, stride_yn, Cqk,
        BLOCK_R, BLOCK_S, BLOCK_D, PRECISION,
    )  # fmt: skip
    s = prune_scale * _row_dots(
        XP, x_rows, x_ok, stride_xpn, YP, y_rows, y_ok, stride_ypn, Cp,
        BLOCK_R, BLOCK_S, BLOCK_DP, PRECISION,
    )  # fmt: skip
    return z2, s


@triton.jit
def _few_channel_dots(
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
    """`_row_dots` for a handful of channels (the warp's 3), on CUDA cores: outer products."""
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
def _times_few_columns(
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
def _dot_scaled(a, x, acc, PRECISION: tl.constexpr):
    """acc + a @ x for an fp32 gradient tile a (`scale dz`, `prune_scale ds`, ...): in x's dtype
    for bf16 and fp32 inputs (bf16 has fp32's range), in fp32 for fp16, whose range (65,504)
    `scale dz` can exceed where the fp32 reference stays finite."""
    if x.dtype == tl.float16:
        return tl.dot(a, x.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a.to(x.dtype), x, acc, input_precision=PRECISION)


@triton.jit
def _warp_weights(z2, s, valid, lse_w, warp_all, WARP_MODE: tl.constexpr):
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
def _warp_z_part(x, s, WARP_MODE: tl.constexpr):
    """x where the warp softmax's score is z: everywhere but the filled (kept) keys of mode 2."""
    if WARP_MODE == 2:
        x = tl.where(s > 0, 0.0, x)
    return x


@triton.jit
def _dense_fwd_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    OUT,
    CONF,
    TOPK,
    WARP,
    LSE,
    LSE_W,
    WARP_ALL,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_qpb,
    stride_qpn,
    stride_kpb,
    stride_kpn,
    stride_wvb,
    stride_wvn,
    Nq,
    Nk,
    Cqk,
    Cp,
    Cv,
    Cw,
    top_k,
    scale,
    prune_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WARP_MODE: tl.constexpr,
    HAS_TOPK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (query tiles, value-channel chunks, batch). Every chunk recomputes the same scores;
    chunk 0 alone stores conf, warp, top-k and the statistics."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    Q, K, V, QP, KP, WV = _sample_inputs(
        Q, K, V, QP, KP, WV, pid_b, stride_qb, stride_kb, stride_vb, stride_qpb, stride_kpb,
        stride_wvb,
    )  # fmt: skip

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Nq
    vcols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    vcol_ok = vcols < Cv
    wcols = tl.arange(0, BLOCK_W)
    wcol_ok = wcols < Cw
    slots = tl.arange(0, BLOCK_K)

    neg_inf = float("-inf")
    m_i = tl.full((BLOCK_M,), neg_inf, tl.float32)  # running max of z2 over all keys
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(z2 - m_i)
    conf_acc = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    # Warp: the restricted softmax's statistics, and the all-keys sum for the empty-set fallback.
    m_w = tl.full((BLOCK_M,), neg_inf, tl.float32)
    l_w = tl.zeros((BLOCK_M,), tl.float32)
    acc_w = tl.zeros((BLOCK_M, BLOCK_W), tl.float32)
    acc_wall = tl.zeros((BLOCK_M, BLOCK_W), tl.float32)
    # Running top-k of z2 (z times log2 e: the order of z), scores and key indices.
    best_z = tl.full((BLOCK_M, BLOCK_K), neg_inf, tl.float32)
    best_i = tl.full((BLOCK_M, BLOCK_K), 2147483647, tl.int32)

    for n0 in range(0, Nk, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < Nk
        # `_scores` written out: through it the forward compiles to other register counts (up
        # to 5 apart at sm_80 and sm_90, `python -m kernels.aot`), so this copy stays.
        dots = _row_dots(
            Q, rows, row_ok, stride_qn, K, keys, key_ok, stride_kn, Cqk,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION,
        )  # fmt: skip
        z2 = tl.where(key_ok[None, :], dots * (scale * _LOG2E), neg_inf)
        s = prune_scale * _row_dots(
            QP, rows, row_ok, stride_qpn, KP, keys, key_ok, stride_kpn, Cp,
            BLOCK_M, BLOCK_N, BLOCK_DP, PRECISION,
        )  # fmt: skip
        kept = (s > 0) & key_ok[None, :]

        m_new = tl.maximum(m_i, tl.max(z2, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(z2 - m_new[:, None])
        pm = tl.where(kept, p, 0.0)
        l_i = l_i * alpha + tl.sum(p, 1)
        conf_acc = conf_acc * alpha + tl.sum(pm, 1)
        v_ptrs = V + keys.to(tl.int64)[:, None] * stride_vn + vcols[None, :]
        v = tl.load(v_ptrs, mask=key_ok[:, None] & vcol_ok[None, :], other=0.0)
        acc = tl.dot(pm.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

        if WARP_MODE != 0:
            if WARP_MODE == 2:
                # The release's all-kept row: a plain sum of W, the uniform mean at the end.
                ones = tl.where(key_ok[None, :], 1.0, tl.zeros_like(p))
                acc_wall += _times_few_columns(
                    ones, WV, keys, key_ok, stride_wvn, Cw, BLOCK_M, BLOCK_W
                )
            else:
                acc_wall = acc_wall * alpha[:, None] + _times_few_columns(
                    p, WV, keys, key_ok, stride_wvn, Cw, BLOCK_M, BLOCK_W
                )
            if WARP_MODE != 3:
                if WARP_MODE == 1:
                    sel = kept
                else:
                    sel = (s <= 0) & key_ok[None, :]
                zw = tl.where(sel, z2, neg_inf)
                m_w_new = tl.maximum(m_w, tl.max(zw, 1))
                # Until a row meets a selected key its max stays -inf: shift by 0 instead.
                m_w_safe = tl.where(m_w_new == neg_inf, 0.0, m_w_new)
                alpha_w = tl.exp2(m_w - m_w_safe)
                pw = tl.exp2(zw - m_w_safe[:, None])
                l_w = l_w * alpha_w + tl.sum(pw, 1)
                acc_w = acc_w * alpha_w[:, None] + _times_few_columns(
                    pw, WV, keys, key_ok, stride_wvn, Cw, BLOCK_M, BLOCK_W
                )
                m_w = m_w_new

        if HAS_TOPK:
            # Merge the tile into the running top-k by repeated max: the best score, then the
            # lowest key index holding it (earlier tiles hold lower indices). A pick is removed
            # by index; emptied slots and padding keys read -inf and lose to every real key, whose
            # score is ranked at least -FLT_MAX (NaN and -inf scores rank as -FLT_MAX: lowest
            # index first, after every finite score). With k <= Nk every slot ends on a distinct
            # real key.
            low = (z2 != z2) | (z2 == neg_inf)
            tile = tl.where(key_ok[None, :] & low, _LOWEST, z2)
            merged_z = tl.full((BLOCK_M, BLOCK_K), neg_inf, tl.float32)
            merged_i = tl.full((BLOCK_M, BLOCK_K), 2147483647, tl.int32)
            for t in range(0, top_k):
                pick = tl.maximum(tl.max(best_z, 1), tl.max(tile, 1))
                from_best = tl.min(tl.where(best_z == pick[:, None], best_i, 2147483647), 1)
                from_tile = tl.min(tl.where(tile == pick[:, None], keys[None, :], 2147483647), 1)
                index = tl.minimum(from_best, from_tile)
                merged_z = tl.where(slots[None, :] == t, pick[:, None], merged_z)
                merged_i = tl.where(slots[None, :] == t, index[:, None], merged_i)
                best_z = tl.where(best_i == index[:, None], neg_inf, best_z)
                tile = tl.where(keys[None, :] == index[:, None], neg_inf, tile)
            best_z = merged_z
            best_i = merged_i

    inv_l = 1.0 / l_i
    out_ptrs = OUT + (pid_b * Nq + rows)[:, None] * Cv + vcols[None, :]
    out = acc * inv_l[:, None]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & vcol_ok[None, :])
    if pid_v == 0:
        stat = pid_b * Nq + rows
        tl.store(CONF + stat, (conf_acc * inv_l).to(CONF.dtype.element_ty), mask=row_ok)
        lse = m_i + tl.log2(l_i)
        tl.store(LSE + stat, lse, mask=row_ok)
        if WARP_MODE != 0:
            if WARP_MODE == 3:
                empty = row_ok
                warp = acc_wall * inv_l[:, None]
                lse_w = lse
            else:
                empty = l_w == 0.0
                l_w_safe = tl.where(empty, 1.0, l_w)
                if WARP_MODE == 2:
                    # No key pruned: every score filled alike, the uniform mean (z2 read as 0).
                    fallback = acc_wall / Nk
                    lse_fallback = tl.log2(tl.zeros_like(lse) + Nk)
                else:
                    fallback = acc_wall * inv_l[:, None]
                    lse_fallback = lse
                warp = tl.where(empty[:, None], fallback, acc_w / l_w_safe[:, None])
                lse_w = tl.where(empty, lse_fallback, m_w + tl.log2(l_w_safe))
            warp_ptrs = WARP + stat[:, None] * Cw + wcols[None, :]
            warp_mask = row_ok[:, None] & wcol_ok[None, :]
            tl.store(warp_ptrs, warp.to(WARP.dtype.element_ty), mask=warp_mask)
            tl.store(LSE_W + stat, lse_w, mask=row_ok)
            tl.store(WARP_ALL + stat, empty.to(tl.int32), mask=row_ok)
        if HAS_TOPK:
            top_ptrs = TOPK + stat[:, None] * top_k + slots[None, :]
            tl.store(top_ptrs, best_i.to(tl.int64), mask=row_ok[:, None] & (slots < top_k)[None, :])


@triton.jit
def _dense_bwd_query_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    DOUT,
    DCONF,
    DWARP,
    LSE,
    LSE_W,
    WARP_ALL,
    DELTA,
    DELTA_W,
    DQ,
    DQP,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_qpb,
    stride_qpn,
    stride_kpb,
    stride_kpn,
    stride_wvb,
    stride_wvn,
    Nq,
    Nk,
    Cqk,
    Cp,
    Cv,
    Cw,
    chunks_dq,
    scale,
    prune_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dq and dq_prune. Grid (query tiles, output-channel chunks: `chunks_dq` of dq then those of
    dq_prune, batch). A program streams the keys, recomputes its tile of z, s and g, and
    accumulates one chunk: dq = scale * dz K, dq_prune = prune_scale * ds K_prune."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    Q, K, V, QP, KP, WV = _sample_inputs(
        Q, K, V, QP, KP, WV, pid_b, stride_qb, stride_kb, stride_vb, stride_qpb, stride_kpb,
        stride_wvb,
    )  # fmt: skip
    DOUT += pid_b * Nq * Cv
    DWARP += pid_b * Nq * Cw

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Nq
    stat = pid_b * Nq + rows
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    dconf = tl.load(DCONF + stat, mask=row_ok, other=0.0).to(tl.float32)
    want_dq = pid_c < chunks_dq
    if want_dq:
        chunk = pid_c
        c_out = Cqk
        X = K
        stride_xn = stride_kn
        DX = DQ
    else:
        chunk = pid_c - chunks_dq
        c_out = Cp
        X = KP
        stride_xn = stride_kpn
        DX = DQP
    cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < c_out
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)

    for n0 in range(0, Nk, BLOCK_N):
        keys = n0 + tl.arange(0, BLOCK_N)
        key_ok = keys < Nk
        valid = row_ok[:, None] & key_ok[None, :]
        z2, s = _scores(
            Q, QP, rows, row_ok, stride_qn, stride_qpn, K, KP, keys, key_ok, stride_kn, stride_kpn,
            Cqk, Cp, scale, prune_scale, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DP, PRECISION,
        )  # fmt: skip
        p = tl.where(valid, tl.exp2(z2 - lse[:, None]), 0.0)
        g = dconf[:, None] + _row_dots(
            DOUT, rows, row_ok, Cv, V, keys, key_ok, stride_vn, Cv,
            BLOCK_M, BLOCK_N, BLOCK_DV, PRECISION,
        )  # fmt: skip
        if want_dq:
            dz = p * (tl.where(s > 0, g, 0.0) - delta[:, None])
            if WARP_MODE != 0:
                lse_w = tl.load(LSE_W + stat, mask=row_ok, other=0.0)
                delta_w = tl.load(DELTA_W + stat, mask=row_ok, other=0.0)
                warp_all = tl.load(WARP_ALL + stat, mask=row_ok, other=0) != 0
                w = _warp_weights(z2, s, valid, lse_w[:, None], warp_all[:, None], WARP_MODE)
                gw = _few_channel_dots(
                    DWARP, rows, row_ok, Cw, WV, keys, key_ok, stride_wvn, Cw,
                    BLOCK_M, BLOCK_N, BLOCK_W,
                )  # fmt: skip
                dz += _warp_z_part(w * (gw - delta_w[:, None]), s, WARP_MODE)
            a = dz * scale
        else:
            sig = tl.sigmoid(s)
            a = (g * p * sig * (1.0 - sig)) * prune_scale
        x_ptrs = X + keys.to(tl.int64)[:, None] * stride_xn + cols[None, :]
        x = tl.load(x_ptrs, mask=key_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot_scaled(a, x, acc, PRECISION)

    dx_ptrs = DX + stat[:, None] * c_out + cols[None, :]
    tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _dense_bwd_key_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    DOUT,
    DCONF,
    DWARP,
    LSE,
    LSE_W,
    WARP_ALL,
    DELTA,
    DELTA_W,
    DK,
    DKP,
    DV,
    DWV,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_qpb,
    stride_qpn,
    stride_kpb,
    stride_kpn,
    stride_wvb,
    stride_wvn,
    Nq,
    Nk,
    Cqk,
    Cp,
    Cv,
    Cw,
    chunks_dk,
    chunks_dkp,
    chunks_dv,
    scale,
    prune_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dk, dk_prune, dv and dwarp_values. Grid (key tiles, output-channel chunks of dk, then
    dk_prune, dv and dwarp_values, batch). A program streams the queries with its tiles
    transposed (keys x queries), so that its sums over queries are plain matrix products and no
    two programs write the same element (no atomics)."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    Q, K, V, QP, KP, WV = _sample_inputs(
        Q, K, V, QP, KP, WV, pid_b, stride_qb, stride_kb, stride_vb, stride_qpb, stride_kpb,
        stride_wvb,
    )  # fmt: skip
    DOUT += pid_b * Nq * Cv
    DWARP += pid_b * Nq * Cw

    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < Nk
    # Which gradient this program writes: 0 dk (= scale dz^T Q), 1 dk_prune (= prune_scale ds^T
    # Q_prune), 2 dv (= (p m)^T dout), 3 dwarp_values (= w^T dwarp).
    ends_dkp = chunks_dk + chunks_dkp
    ends_dv = ends_dkp + chunks_dv
    if pid_c < chunks_dk:
        role = 0
        chunk = pid_c
        c_out = Cqk
        X = Q
        stride_xn = stride_qn
        DX = DK
    elif pid_c < ends_dkp:
        role = 1
        chunk = pid_c - chunks_dk
        c_out = Cp
        X = QP
        stride_xn = stride_qpn
        DX = DKP
    elif pid_c < ends_dv:
        role = 2
        chunk = pid_c - ends_dkp
        c_out = Cv
        X = DOUT
        stride_xn = Cv
        DX = DV
    else:
        role = 3
        chunk = pid_c - ends_dv
        c_out = Cw
        X = DWARP
        stride_xn = Cw
        DX = DWV
    cols = chunk * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < c_out
    acc = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)

    for m0 in range(0, Nq, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < Nq
        stat = pid_b * Nq + rows
        valid = key_ok[:, None] & row_ok[None, :]
        lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
        z2, s = _scores(
            K, KP, keys, key_ok, stride_kn, stride_kpn, Q, QP, rows, row_ok, stride_qn, stride_qpn,
            Cqk, Cp, scale, prune_scale, BLOCK_N, BLOCK_M, BLOCK_D, BLOCK_DP, PRECISION,
        )  # fmt: skip
        p = tl.where(valid, tl.exp2(z2 - lse[None, :]), 0.0)
        if role == 2:
            a = tl.where(s > 0, p, 0.0)
        elif role == 3:
            a = p  # WARP_MODE 3 (all keys): the warp weights are p
            if WARP_MODE == 1 or WARP_MODE == 2:
                lse_w = tl.load(LSE_W + stat, mask=row_ok, other=0.0)
                warp_all = tl.load(WARP_ALL + stat, mask=row_ok, other=0) != 0
                a = _warp_weights(z2, s, valid, lse_w[None, :], warp_all[None, :], WARP_MODE)
        else:
            # Both need g = dout . V + dconf, the gradient reaching p m.
            dconf = tl.load(DCONF + stat, mask=row_ok, other=0.0).to(tl.float32)
            g = dconf[None, :] + _row_dots(
                V, keys, key_ok, stride_vn, DOUT, rows, row_ok, Cv, Cv,
                BLOCK_N, BLOCK_M, BLOCK_DV, PRECISION,
            )  # fmt: skip
            if role == 0:
                delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
                dz = p * (tl.where(s > 0, g, 0.0) - delta[None, :])
                if WARP_MODE != 0:
                    lse_w = tl.load(LSE_W + stat, mask=row_ok, other=0.0)
                    warp_all = tl.load(WARP_ALL + stat, mask=row_ok, other=0) != 0
                    delta_w = tl.load(DELTA_W + stat, mask=row_ok, other=0.0)
                    w = _warp_weights(z2, s, valid, lse_w[None, :], warp_all[None, :], WARP_MODE)
                    gw = _few_channel_dots(
                        WV, keys, key_ok, stride_wvn, DWARP, rows, row_ok, Cw, Cw,
                        BLOCK_N, BLOCK_M, BLOCK_W,
                    )  # fmt: skip
                    dz += _warp_z_part(w * (gw - delta_w[None, :]), s, WARP_MODE)
                a = dz * scale
            else:
                sig = tl.sigmoid(s)
                a = (g * p * sig * (1.0 - sig)) * prune_scale
        x_ptrs = X + rows.to(tl.int64)[:, None] * stride_xn + cols[None, :]
        x = tl.load(x_ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _dot_scaled(a, x, acc, PRECISION)

    dx_ptrs = DX + (pid_b * Nk + keys)[:, None] * c_out + cols[None, :]
    tl.store(dx_ptrs, acc.to(DX.dtype.element_ty), mask=key_ok[:, None] & col_ok[None, :])


@triton.jit
def _dense_bwd_tile_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    DOUT,
    DCONF,
    DWARP,
    LSE,
    LSE_W,
    WARP_ALL,
    DELTA,
    DELTA_W,
    DZ,
    DS,
    PM,
    PW,
    stride_qb,
    stride_qn,
    stride_kb,
    stride_kn,
    stride_vb,
    stride_vn,
    stride_qpb,
    stride_qpn,
    stride_kpb,
    stride_kpn,
    stride_wvb,
    stride_wvn,
    row0,
    n_rows,
    Nq,
    Nk,
    Cqk,
    Cp,
    Cv,
    Cw,
    scale,
    prune_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The tiled backward's one kernel. Grid (query tiles of rows row0 .. row0 + n_rows, key
    tiles, batch). A program recomputes its (queries x keys) tile of z, s and g once, from the
    saved statistics, and writes the four tiles every gradient is a product of: dz * scale (for
    dq, dk), ds (for dq_prune, dk_prune), p m (for dv) and the warp weights (for dwarp_values),
    into [B, n_rows, Nk] buffers of the work dtype; matrix products over those (cuBLAS) finish
    the gradients. Unlike the streamed kernels, no tile is computed twice. A chunk of keys is a
    launch on K, V, KP and WV views starting at the chunk, with Nk its length."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    pid_b = tl.program_id(2).to(tl.int64)
    # `_sample_inputs` written out: through it this kernel compiles to other register counts
    # (153 for 155 at sm_80 with 64 x 64 tiles, `python -m kernels.aot`), so this copy stays.
    Q += pid_b * stride_qb
    K += pid_b * stride_kb
    V += pid_b * stride_vb
    QP += pid_b * stride_qpb
    KP += pid_b * stride_kpb
    WV += pid_b * stride_wvb
    DOUT += pid_b * Nq * Cv
    DWARP += pid_b * Nq * Cw

    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = row0 + local
    row_ok = (local < n_rows) & (rows < Nq)
    keys = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    key_ok = keys < Nk
    valid = row_ok[:, None] & key_ok[None, :]
    stat = pid_b * Nq + rows
    lse = tl.load(LSE + stat, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    dconf = tl.load(DCONF + stat, mask=row_ok, other=0.0).to(tl.float32)

    z2, s = _scores(
        Q, QP, rows, row_ok, stride_qn, stride_qpn, K, KP, keys, key_ok, stride_kn, stride_kpn,
        Cqk, Cp, scale, prune_scale, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DP, PRECISION,
    )  # fmt: skip
    g = dconf[:, None] + _row_dots(
        DOUT, rows, row_ok, Cv, V, keys, key_ok, stride_vn, Cv,
        BLOCK_M, BLOCK_N, BLOCK_DV, PRECISION,
    )  # fmt: skip
    p = tl.where(valid, tl.exp2(z2 - lse[:, None]), 0.0)
    kept = s > 0
    dz = p * (tl.where(kept, g, 0.0) - delta[:, None])
    sig = tl.sigmoid(s)
    ds = (g * p * sig * (1.0 - sig)) * prune_scale

    out = (pid_b * n_rows + local).to(tl.int64)[:, None] * Nk + keys[None, :]
    if WARP_MODE != 0:
        lse_w = tl.load(LSE_W + stat, mask=row_ok, other=0.0)
        delta_w = tl.load(DELTA_W + stat, mask=row_ok, other=0.0)
        warp_all = tl.load(WARP_ALL + stat, mask=row_ok, other=0) != 0
        w = _warp_weights(z2, s, valid, lse_w[:, None], warp_all[:, None], WARP_MODE)
        gw = _few_channel_dots(
            DWARP, rows, row_ok, Cw, WV, keys, key_ok, stride_wvn, Cw,
            BLOCK_M, BLOCK_N, BLOCK_W,
        )  # fmt: skip
        dz += _warp_z_part(w * (gw - delta_w[:, None]), s, WARP_MODE)
        tl.store(PW + out, w.to(PW.dtype.element_ty), mask=valid)
    tl.store(DZ + out, (dz * scale).to(DZ.dtype.element_ty), mask=valid)
    tl.store(DS + out, ds.to(DS.dtype.element_ty), mask=valid)
    tl.store(PM + out, tl.where(kept, p, 0.0).to(PM.dtype.element_ty), mask=valid)


# --------------------------------------------------------------------------------------------------
# Launchers: the launch configurations (search space, defaults, block sizes derived from the
# problem), then the launches
# --------------------------------------------------------------------------------------------------

# The search space, declared once, in order of preference: the default is the first candidate
# that fits the problem (`_default`). Each is (BLOCK_M, BLOCK_N, output chunk, num_warps,
# num_stages); the output chunk is BLOCK_V (value channels per forward program) or BLOCK_C
# (gradient channels per backward program), and `_space` clips every candidate to the problem's
# padded channel counts. What the choice trades:
# - every chunk of one output recomputes the same score tiles: wide chunks recompute less but
#   hold a wider fp32 accumulator;
# - a program reloads its row tile's operands for every streamed tile, so a (query, key) pair
#   costs about Cqk (1/BLOCK_M + 1/BLOCK_N) of loads: square tiles move least;
# - with 8 warps, a score tile of fewer than 8 tensor-core tiles (16 x 8) is computed twice over
#   (32 x 16) or four times (16 x 16) by warps holding copies;
# - registers: each default compiles without spills for sm_80 and sm_90 at every model size of
#   `kernels.aot_dense.AOT_DIMS`, with bf16 and with fp32 inputs (`python -m kernels.aot`;
#   docs/kernels-dense.md has the table). Few warps, or two pipeline stages, often cost registers.
# Four or five a kernel: `kernels.aot` compiles each for two GPUs and four model sizes, and the
# autotuner times each per shape.
_CANDIDATES: dict[str, tuple[tuple[int, int, int, int, int], ...]] = {
    "dense_fwd": (
        (32, 32, 512, 8, 1),  # Cv 512 in one chunk: scores computed once
        (32, 16, 512, 8, 1),  # more register headroom (fp32 at Cv 64), repeated score tile
        (32, 16, 256, 8, 2),  # two chunks, loads pipelined
        (32, 16, 128, 4, 1),  # four warps, four chunks: more programs for small batches
    ),
    "dense_bwd_query": (
        (64, 32, 256, 8, 1),  # dq in 3 chunks of Cqk 640, dq_prune in 1
        (64, 16, 512, 8, 1),  # dq in 2 chunks; spills with fp32 inputs at Cqk 640
        (64, 16, 256, 8, 2),  # loads pipelined; spills with fp32 inputs at Cqk 640
        (32, 32, 128, 4, 1),  # four warps
    ),
    "dense_bwd_key": (
        # Chunks over dk, dk_prune, dv and dwarp_values at 640/128/512/3: C256 7, C128 11, C512 5.
        (32, 16, 256, 8, 1),  # the widest that fits in fp32 too, repeated score tile
        (32, 32, 128, 8, 1),  # square score tile, most register headroom
        (32, 32, 128, 8, 2),  # loads pipelined (the former default)
        (16, 16, 512, 8, 1),  # the widest
        (16, 16, 256, 4, 1),  # four warps
    ),
    # The tiled backward's kernel owns its output tile (no accumulator over a stream, no output
    # chunks): wide tiles like a matrix product's, with pipelined channel loads. Chunk unused.
    "dense_bwd_tile": (
        (32, 32, 0, 4, 2),  # the H200's pick at 1,024 tokens; no spills with fp32 inputs
        (64, 32, 0, 8, 2),  # its pick at 4,096 (3% ahead of 32 x 32 there)
        (64, 64, 0, 8, 2),  # square tile, fewer operand reloads: spills with fp32 inputs
        (64, 64, 0, 8, 1),
        (64, 32, 0, 8, 1),
    ),
}
# Channels per step of the reductions behind the score tiles (z, s and g).
_BLOCK_D = 64
# Bytes the tiled backward may allocate besides its inputs and the gradients it returns, all its
# buffers together (`tiled_scratch_bytes`). Beyond it the backward runs in chunks of keys, and
# where not one key fits, the streamed backward (no scratch) runs instead. 320 MiB: the model's
# dense block at 4,096 tokens (bf16, B 8) then runs in 5 passes of 832 keys, and its modelled
# peak stays within 4.2x that at 1,024 tokens (4.10x); the 4 passes of 384 MiB would not (4.43x).
SCRATCH_BUDGET = 320 << 20
# Which backward runs: "tiled" (default: `_dense_bwd_tile_kernel` plus matrix products, bounded
# scratch) or "streamed" (`_dense_bwd_query_kernel` and `_dense_bwd_key_kernel`: no scratch at
# all, every score tile recomputed per output chunk, several times slower at the model's sizes).
BACKWARD_ENV = "DYNAST_DENSE_BACKWARD"
BACKWARD_STRATEGIES = ("tiled", "streamed")
# Shared memory of the smallest card we build for (A100: 163 KB), with slack for the compiler's
# own scratch; fp32 values per thread for the tiles a program keeps live (accumulator and score
# tiles), leaving about 110 of the 255 registers to operands, pointers and masks.
_SHARED_BUDGET = 128 * 1024
_REGISTER_BUDGET = 144


def _pad16(n: int) -> int:
    """A power-of-two block covering n channels, at least 16 wide (the least `tl.dot` takes)."""
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get fp32 products: tf32 would lose the accuracy the reference promises.
    return "ieee" if dtype == torch.float32 else "tf32"


def _meta(kernel: str, dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
    """The kernel's block-size constexprs for this problem: the config's, clipped to the padded
    channel counts, plus the blocks the sizes alone decide."""
    block_d = min(config["BLOCK_D"], _pad16(dims["Cqk"]))
    meta = {
        "BLOCK_M": config["BLOCK_M"],
        "BLOCK_N": config["BLOCK_N"],
        "BLOCK_D": block_d,
        "BLOCK_DP": min(block_d, _pad16(dims["Cp"])),
        "BLOCK_W": triton.next_power_of_2(max(dims["Cw"], 1)),
    }
    if kernel == "dense_fwd":
        meta["BLOCK_V"] = min(config["BLOCK_V"], _pad16(dims["Cv"]))
        meta["BLOCK_K"] = triton.next_power_of_2(max(dims["k"], 1))
        return meta
    if kernel == "dense_bwd_tile":
        meta["BLOCK_DV"] = min(block_d, _pad16(dims["Cv"]))
        return meta
    widest = max(dims["Cqk"], dims["Cp"])
    if kernel == "dense_bwd_key":
        widest = max(widest, dims["Cv"], dims["Cw"])
    meta["BLOCK_DV"] = min(block_d, _pad16(dims["Cv"]))
    meta["BLOCK_C"] = min(config["BLOCK_C"], _pad16(widest))
    return meta


def _clipped(kernel: str, dims: dict[str, int], config: LaunchConfig) -> LaunchConfig:
    """The config with its block sizes as the kernel will really use them (so that two configs
    that differ only beyond the problem's size count once)."""
    meta = _meta(kernel, dims, config)
    return {name: meta.get(name, value) for name, value in config.items()}


def _fits(kernel: str, dims: dict[str, int], config: LaunchConfig) -> bool:
    """Estimate of a config's needs with 16-bit inputs: the fp32 tiles live per thread (the
    accumulator and about four score-sized tiles: z, s, p, g) and the operand tiles in shared
    memory. A coarse filter; `python -m kernels.aot` gives the real numbers."""
    meta = _meta(kernel, dims, config)
    m, n, d = meta["BLOCK_M"], meta["BLOCK_N"], meta["BLOCK_D"]
    if kernel == "dense_bwd_tile":  # z, s, g, p, dz, ds live at once; three operand pairs
        live = 6 * m * n / (32 * config["num_warps"])
        shared = 2 * config["num_stages"] * (m + n) * d
        return live <= _REGISTER_BUDGET and shared <= _SHARED_BUDGET
    rows = n if kernel == "dense_bwd_key" else m
    out = meta["BLOCK_V"] if kernel == "dense_fwd" else meta["BLOCK_C"]
    live = (rows * out + 4 * m * n) / (32 * config["num_warps"])
    shared = 2 * (config["num_stages"] * (m + n) * d + (m + n) * out)
    return live <= _REGISTER_BUDGET and shared <= _SHARED_BUDGET


def _config_of(kernel: str, candidate: tuple[int, int, int, int, int]) -> LaunchConfig:
    block_m, block_n, chunk, num_warps, num_stages = candidate
    config = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": _BLOCK_D}
    if kernel != "dense_bwd_tile":
        config["BLOCK_V" if kernel == "dense_fwd" else "BLOCK_C"] = chunk
    return {**config, "num_warps": num_warps, "num_stages": num_stages}


def _space(kernel: str, dims: dict[str, int]) -> list[LaunchConfig]:
    """Every config the autotuner may try for `kernel` on a problem of these sizes, in order of
    preference; each one compiles for sm_80 and sm_90 (`python -m kernels.aot`)."""
    configs: list[LaunchConfig] = []
    for candidate in _CANDIDATES[kernel]:
        config = _clipped(kernel, dims, _config_of(kernel, candidate))
        if config not in configs and _fits(kernel, dims, config):
            configs.append(config)
    return configs


def _default(kernel: str, dims: dict[str, int]) -> LaunchConfig:
    """What runs when the tuning table has nothing for this GPU and shape bucket: the first
    candidate that fits. Clipping only shrinks a candidate, and every candidate fits at full
    size, so at every problem size that is the first one, clipped; its register reports at the
    model sizes (no spills) are what chose it."""
    return _space(kernel, dims)[0]


def _launch_space(kernel: str) -> LaunchSpace:
    return LaunchSpace(
        name=kernel,
        space=lambda dims: _space(kernel, dims),
        default=lambda dims: _default(kernel, dims),
    )


FORWARD = _launch_space("dense_fwd")
BACKWARD_QUERY = _launch_space("dense_bwd_query")
BACKWARD_KEY = _launch_space("dense_bwd_key")
BACKWARD_TILE = _launch_space("dense_bwd_tile")


def _config(
    kernel: LaunchSpace, dims: dict[str, int], device: torch.device, dtype: torch.dtype
) -> LaunchConfig:
    if interpreting():
        return kernel.default(dims)  # no tuning table applies to the CPU interpreter
    return tuned_config(kernel, dims, device, dtype)  # winners timed in this dtype only


Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]


def _channels_contiguous(x: Tensor | None) -> Tensor | None:
    """The kernels take batch and token strides but assume contiguous channels (vector loads)."""
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


def _dims(inputs: Inputs, topk: int) -> dict[str, int]:
    """The sizes tuning is keyed on, named as in `kernels.shapes` (Cw = 0: no warp)."""
    q, k, v, q_prune, _, warp_values = inputs
    return {
        "B": q.shape[0],
        "Nq": q.shape[1],
        "Nk": k.shape[1],
        "Cqk": q.shape[2],
        "Cp": q_prune.shape[2],
        "Cv": v.shape[2],
        "Cw": 0 if warp_values is None else warp_values.shape[2],
        "k": topk,
    }


def _input_args(inputs: Inputs) -> list:
    """The six input pointers, then their batch and token strides (a stand-in for no warp)."""
    q, *_, warp_values = inputs
    pointers = [*inputs[:5], q if warp_values is None else warp_values]
    strides = []
    for x in inputs:
        strides += [0, 0] if x is None else [x.stride(0), x.stride(1)]
    return [*pointers, *strides]


def _launch_forward(
    inputs: Inputs,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_mode: int,
    config: LaunchConfig,
) -> dict[str, Tensor | None]:
    """One forward launch. Returns out, conf, topk, warp and the per-query statistics the
    backward needs: lse (base-2 log-sum-exp of z over all keys), lse_w (that of the warp's
    softmax) and warp_all (1 where the warp's selected set was empty and it used all keys).
    For fp16 inputs out, conf and warp stay fp32 (`_work_dtype`): the backward's per-query sums
    `dout . out` are formed from them, and at scale 100 the error of an fp16-rounded out,
    multiplied by the scale, would dominate the gradients; the caller casts what it returns."""
    q, k, _, q_prune, _, _ = inputs
    dims = _dims(inputs, topk)
    b, nq, cv, cw = dims["B"], dims["Nq"], dims["Cv"], dims["Cw"]
    dev, dtype = q.device, q.dtype
    out_dtype = _work_dtype(dtype)
    warp = warp_mode != 0
    res: dict[str, Tensor | None] = {
        "out": runtime.empty((b, nq, cv), out_dtype, dev),
        "conf": runtime.empty((b, nq), out_dtype, dev),
        "topk": runtime.empty((b, nq, topk), torch.int64, dev) if topk else None,
        "warp": runtime.empty((b, nq, cw), out_dtype, dev) if warp else None,
        "lse": runtime.empty((b, nq), torch.float32, dev),
        "lse_w": runtime.empty((b, nq), torch.float32, dev) if warp else None,
        "warp_all": runtime.empty((b, nq), torch.int32, dev) if warp else None,
    }
    # Outputs not asked for: stand-ins of the right type that the constexpr flags leave alone.
    stand_in = {
        "topk": torch.empty(1, dtype=torch.int64, device=dev),
        "warp": res["out"],
        "lse_w": res["lse"],
        "warp_all": torch.empty(1, dtype=torch.int32, device=dev),
    }
    out_args = [res[name] if res[name] is not None else stand_in[name] for name in stand_in]
    meta = _meta("dense_fwd", dims, config)
    grid = (triton.cdiv(nq, meta["BLOCK_M"]), triton.cdiv(cv, meta["BLOCK_V"]), b)
    args = _input_args(inputs)
    _dense_fwd_kernel[grid](
        *args[:6],
        res["out"], res["conf"], out_args[0], out_args[1], res["lse"], out_args[2], out_args[3],
        *args[6:],
        nq, k.shape[1], q.shape[2], q_prune.shape[2], cv, cw, topk,
        scale, prune_scale,
        **meta,
        WARP_MODE=warp_mode,
        HAS_TOPK=topk > 0,
        PRECISION=_precision(dtype),
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    return res


def _backward_grads(
    out: Tensor,
    conf: Tensor,
    warp: Tensor | None,
    dout: Tensor,
    dconf: Tensor,
    dwarp: Tensor | None,
) -> dict[str, Tensor | None]:
    """Upstream gradients in the kernels' layout, with the per-query sums the softmax backward
    subtracts: delta = sum_j p m g = dout . out + dconf * conf and delta_w = dwarp . warp (fp32).
    """
    delta = (dout.float() * out.float()).sum(-1) + dconf.float() * conf.float()
    return {
        "dout": dout.contiguous(),
        "dconf": dconf.contiguous(),
        "dwarp": None if dwarp is None else dwarp.contiguous(),
        "delta": delta.contiguous(),
        "delta_w": None if warp is None else (dwarp.float() * warp.float()).sum(-1).contiguous(),
    }


def _launch_backward(
    side: str,
    inputs: Inputs,
    stats: dict[str, Tensor | None],
    grads: dict[str, Tensor | None],
    wanted: dict[str, bool],
    scale: float,
    prune_scale: float,
    warp_mode: int,
    config: LaunchConfig,
) -> dict[str, Tensor | None]:
    """One backward launch for one side ("query": dq, dq_prune; "key": dk, dk_prune, dv,
    dwarp_values), writing the gradients `wanted` marks (None for the others).

    stats: lse, lse_w, warp_all from the forward; grads: from `_backward_grads`."""
    q, k, v, q_prune, k_prune, warp_values = inputs
    dims = _dims(inputs, 0)
    kernel = "dense_bwd_" + side
    meta = _meta(kernel, dims, config)
    targets = {"dq": q, "dq_prune": q_prune} if side == "query" else {
        "dk": k, "dk_prune": k_prune, "dv": v, "dwarp_values": warp_values,
    }  # fmt: skip
    result = {
        name: runtime.empty(x.shape, x.dtype, x.device) if wanted[name] and x is not None else None
        for name, x in targets.items()
    }
    chunks = [
        0 if result[name] is None else triton.cdiv(x.shape[2], meta["BLOCK_C"])
        for name, x in targets.items()
    ]
    if sum(chunks) == 0:
        return result
    lse = stats["lse"]
    warp_all = stats["warp_all"]
    if warp_all is None:
        warp_all = torch.empty(1, dtype=torch.int32, device=q.device)
    # Gradients not asked for: their chunk count is 0, so a stand-in pointer is never written.
    stand_in = torch.empty(1, dtype=q.dtype, device=q.device)
    out_args = [dx if dx is not None else stand_in for dx in result.values()]
    tokens, rows = (
        (dims["Nq"], meta["BLOCK_M"]) if side == "query" else (dims["Nk"], meta["BLOCK_N"])
    )
    grid = (triton.cdiv(tokens, rows), sum(chunks), dims["B"])
    fn = _dense_bwd_query_kernel if side == "query" else _dense_bwd_key_kernel
    args = _input_args(inputs)
    fn[grid](
        *args[:6],
        grads["dout"], grads["dconf"], grads["dout"] if grads["dwarp"] is None else grads["dwarp"],
        lse, lse if stats["lse_w"] is None else stats["lse_w"], warp_all,
        grads["delta"], lse if grads["delta_w"] is None else grads["delta_w"],
        *out_args,
        *args[6:],
        dims["Nq"], dims["Nk"], dims["Cqk"], dims["Cp"], dims["Cv"], dims["Cw"],
        *chunks[:-1],
        scale, prune_scale,
        **meta,
        WARP_MODE=warp_mode,
        PRECISION=_precision(q.dtype),
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    return result


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the tiled backward's tiles and products: the input dtype, but fp32 for fp16,
    whose range (65,504) `scale dz` exceeds where the fp32 reference stays finite (scale 100 with
    large upstream gradients), and whose 11-bit rounding of dz costs ten times the reference's
    error. bf16 has fp32's range."""
    return torch.float32 if dtype == torch.float16 else dtype


def tiled_scratch_bytes(
    b: int,
    nq: int,
    nk: int,
    channels: dict[str, int],
    dtype: torch.dtype,
    cols: int,
    summed_in_product: bool = True,
) -> int:
    """Bytes of every buffer `_tiled_backward` allocates beyond its inputs and the gradients it
    returns, for chunks of `cols` keys. Always the tiles dz, ds, p m (and w) [B, Nq, cols]. In
    one pass: the query side's product [B, Nq, C] before it lands in dq (and for fp16 the key
    side's fp32 product before rounding). In chunks: one chunk's key-side product [B, cols, C]
    before it is copied into its gradient, and the fp32 sums of dq and dq_prune over the chunks
    (the gradients themselves for fp32); where the matrix product cannot add its bf16 operands'
    product into an fp32 sum itself (`summed_in_product` False: on the CPU), one chunk's product
    [B, Nq, C] too. For fp16, the operands' fp32 copies. `channels`: Cqk, Cp, Cv, Cw (0 without
    warp)."""
    work = _work_dtype(dtype)
    e_work = work.itemsize
    c_qk, c_p, c_w = channels["Cqk"], channels["Cp"], channels["Cw"]
    query_c = max(c_qk, c_p)
    key_c = max(channels.values())
    total = (3 + (c_w > 0)) * b * nq * cols * e_work
    if cols >= nk:
        total += b * nq * query_c * e_work
        if work != dtype:
            total += b * nk * key_c * e_work
    else:
        total += b * cols * key_c * e_work
        if dtype != torch.float32:
            total += b * nq * (c_qk + c_p) * 4
        if work != torch.float32 and not summed_in_product:
            total += b * nq * query_c * e_work
    if work != dtype:  # fp32 copies of k, k_prune (query side), q, q_prune, dout, dwarp
        key_side = c_qk + c_p + channels["Cv"] + c_w
        total += (b * nk * (c_qk + c_p) + b * nq * key_side) * 4
    return total


def _chunk_keys(
    b: int,
    nq: int,
    nk: int,
    channels: dict[str, int],
    dtype: torch.dtype,
    summed_in_product: bool = True,
) -> int:
    """Keys per pass of the tiled backward: all of them if everything fits in SCRATCH_BUDGET
    bytes, else as few passes as fit, each of the same multiple of 16 keys where 16 or more fit;
    0 when not even one key fits, and the streamed backward (no scratch) runs instead."""

    def used(cols: int) -> int:
        return tiled_scratch_bytes(b, nq, nk, channels, dtype, cols, summed_in_product)

    if used(nk) <= SCRATCH_BUDGET:
        return nk
    fixed = used(0)
    most = min(nk - 1, max(0, (SCRATCH_BUDGET - fixed) // (used(1) - fixed)))
    if most < 16:
        return most
    most = most // 16 * 16
    passes = triton.cdiv(nk, most)
    return min(most, triton.cdiv(triton.cdiv(nk, passes), 16) * 16)


def _sum_product(total: Tensor, a: Tensor, x: Tensor) -> None:
    """total += a @ x (batched), with `total` in fp32: on a GPU the matrix product adds into the
    fp32 sum itself, whatever the operands' dtype; elsewhere bf16 operands' product is formed
    first (`tiled_scratch_bytes` counts it)."""
    if a.dtype == total.dtype:
        torch.baddbmm(total, a, x, out=total)
    elif total.is_cuda:
        torch.baddbmm(total, a, x, out_dtype=total.dtype, out=total)
    else:
        total.add_(torch.bmm(a, x))


def _tiled_backward(
    inputs: Inputs,
    stats: dict[str, Tensor | None],
    grads: dict[str, Tensor | None],
    wanted: dict[str, bool],
    scale: float,
    prune_scale: float,
    warp_mode: int,
    config: LaunchConfig,
    cols: int | None = None,
) -> dict[str, Tensor | None]:
    """Every wanted gradient, by the tiled backward: per chunk of keys, one launch of
    `_dense_bwd_tile_kernel` writes dz, ds, p m and the warp weights for all queries against
    those keys, and batched matrix products (cuBLAS on a GPU) turn them into the chunk's rows of
    dk, dk_prune, dv and dwarp_values, complete, and add its share of dq and dq_prune. Chunks of
    keys rather than of queries: the sums over chunks are then the query side's (Cqk + Cp
    channels, 768 in the model) rather than the key side's (Cqk + Cp + Cv + Cw, 1,283), so more
    of the budget goes to tiles and fewer passes run. With the model's 640 and 512 channels the
    streamed kernels recompute every score tile once per output chunk (4 and 7 times), which
    this avoids. Everything it allocates besides the gradients stays within SCRATCH_BUDGET bytes
    (`tiled_scratch_bytes`); `cols` is the chunk, `_chunk_keys`'s when None."""
    q, k, v, q_prune, k_prune, warp_values = inputs
    dims = _dims(inputs, 0)
    b, nq, nk = dims["B"], dims["Nq"], dims["Nk"]
    dtype, dev = q.dtype, q.device
    work = _work_dtype(dtype)
    if cols is None:
        channels = {name: dims[name] for name in ("Cqk", "Cp", "Cv", "Cw")}
        cols = _chunk_keys(b, nq, nk, channels, dtype, summed_in_product=q.is_cuda)
    chunked = cols < nk
    result: dict[str, Tensor | None] = {name: None for name in GRADIENT_NAMES}
    if all(not wanted[name] for name in GRADIENT_NAMES):
        return result
    query_side = {"dq": q, "dq_prune": q_prune}
    key_side = {"dk": k, "dk_prune": k_prune, "dv": v, "dwarp_values": warp_values}
    for name, x in query_side.items():
        if wanted[name]:
            # Several chunks' products are summed in fp32; one chunk's is the gradient itself.
            result[name] = torch.zeros(x.shape, dtype=torch.float32, device=dev) if chunked else (
                runtime.empty(x.shape, dtype, dev)
            )  # fmt: skip
    if chunked:
        for name, x in key_side.items():
            if wanted[name] and x is not None:
                result[name] = runtime.empty(x.shape, dtype, dev)

    warp = warp_mode != 0
    scratch = [runtime.empty((b * nq * cols,), work, dev) for _ in range(3 + warp)]
    lse = stats["lse"]
    warp_all = stats["warp_all"]
    if warp_all is None:
        warp_all = torch.empty(1, dtype=torch.int32, device=dev)
    dout, dwarp = grads["dout"], grads["dwarp"]

    def op(x: Tensor | None) -> Tensor | None:  # a product's operand in the work dtype
        return None if x is None else x.to(work)

    names = ("k", "k_prune", "q", "q_prune", "dout", "dwarp")
    w = dict(zip(names, map(op, (k, k_prune, q, q_prune, dout, dwarp)), strict=True))
    meta = _meta("dense_bwd_tile", dims, config)

    def one_pass(col0: int, n: int) -> None:
        """Tiles for keys col0 .. col0 + n, then their products. The tiles' views live only
        here, so that emptying `scratch` below frees them."""
        span = slice(col0, col0 + n)
        # The chunk's keys as views (same strides): the kernel sees n keys from the chunk's first.
        chunk = [x if x is None or i in (0, 3) else x[:, span] for i, x in enumerate(inputs)]
        args = _input_args(tuple(chunk))
        dz, ds, pm, *pw = (buf[: b * nq * n].view(b, nq, n) for buf in scratch)
        grid = (triton.cdiv(nq, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), b)
        _dense_bwd_tile_kernel[grid](
            *args[:6],
            dout, grads["dconf"], dout if dwarp is None else dwarp,
            lse, lse if stats["lse_w"] is None else stats["lse_w"], warp_all,
            grads["delta"], lse if grads["delta_w"] is None else grads["delta_w"],
            dz, ds, pm, pw[0] if warp else pm,
            *args[6:],
            0, nq, nq, n, dims["Cqk"], dims["Cp"], dims["Cv"], dims["Cw"],
            scale, prune_scale,
            **meta,
            WARP_MODE=warp_mode,
            PRECISION=_precision(dtype),
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )  # fmt: skip
        for name, (tile, x) in {"dq": (dz, w["k"]), "dq_prune": (ds, w["k_prune"])}.items():
            if result[name] is None:
                continue
            if chunked:
                _sum_product(result[name], tile, x[:, span])
            else:
                result[name][:] = torch.bmm(tile, x)
        key_terms = {
            "dk": (dz, w["q"]), "dk_prune": (ds, w["q_prune"]), "dv": (pm, w["dout"]),
            "dwarp_values": (pw[0] if warp else None, w["dwarp"]),
        }  # fmt: skip
        for name, (tile, x) in key_terms.items():
            if not wanted[name] or key_side[name] is None:
                continue
            if chunked:
                result[name][:, span] = torch.bmm(tile.transpose(1, 2), x)
            else:
                result[name] = torch.bmm(tile.transpose(1, 2), x).to(dtype)

    for col0 in range(0, nk, cols):
        one_pass(col0, min(cols, nk - col0))
    # The tiles and operand copies go before the fp32 sums are rounded, so that the rounded
    # copies never share memory with them: the peak stays that of the passes.
    scratch.clear()
    w.clear()
    for name in query_side:
        if chunked and result[name] is not None:
            result[name] = result[name].to(dtype)
    return result


# --------------------------------------------------------------------------------------------------
# Autograd and the public operator
# --------------------------------------------------------------------------------------------------


def backward_strategy() -> str:
    """The dense backward `$DYNAST_DENSE_BACKWARD` asks for ("tiled" when unset)."""
    value = os.environ.get(BACKWARD_ENV, "tiled").strip().lower() or "tiled"
    if value not in BACKWARD_STRATEGIES:
        raise ValueError(
            f"${BACKWARD_ENV}={value!r}: expected one of {', '.join(BACKWARD_STRATEGIES)}"
        )
    return value


class _DenseAttention(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_prune: Tensor,
        k_prune: Tensor,
        warp_values: Tensor | None,
        scale: float,
        prune_scale: float,
        topk: int,
        warp_over: str,
    ):
        inputs = tuple(_channels_contiguous(x) for x in (q, k, v, q_prune, k_prune, warp_values))
        warp_mode = 0 if warp_values is None else WARP_MODE_IDS[warp_over]
        config = _config(FORWARD, _dims(inputs, topk), q.device, q.dtype)
        res = _launch_forward(inputs, scale, prune_scale, topk, warp_mode, config)
        ctx.save_for_backward(
            *inputs, res["out"], res["conf"], res["warp"], res["lse"], res["lse_w"], res["warp_all"]
        )
        ctx.scale, ctx.prune_scale, ctx.warp_mode = scale, prune_scale, warp_mode
        if res["topk"] is not None:
            ctx.mark_non_differentiable(res["topk"])
        warp = None if res["warp"] is None else res["warp"].to(q.dtype)
        return res["out"].to(q.dtype), res["conf"].to(q.dtype), res["topk"], warp

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable  # the kernels are not themselves differentiable: say so, not silently 0
    def backward(ctx, dout: Tensor, dconf: Tensor, _dtopk: Tensor | None, dwarp: Tensor | None):
        *inputs, out, conf, warp, lse, lse_w, warp_all = ctx.saved_tensors
        inputs = tuple(inputs)
        stats = {"lse": lse, "lse_w": lse_w, "warp_all": warp_all}
        grads = _backward_grads(out, conf, warp, dout, dconf, dwarp)
        # needs_input_grad follows forward's arguments: q, k, v, q_prune, k_prune, warp_values.
        wanted = dict(zip(GRADIENT_NAMES, ctx.needs_input_grad[:6], strict=True))
        dims = _dims(inputs, 0)
        channels = {name: dims[name] for name in ("Cqk", "Cp", "Cv", "Cw")}
        cols = _chunk_keys(
            dims["B"], dims["Nq"], dims["Nk"], channels, inputs[0].dtype,
            summed_in_product=inputs[0].is_cuda,
        )  # fmt: skip
        if backward_strategy() == "tiled" and cols > 0:
            config = _config(BACKWARD_TILE, dims, inputs[0].device, inputs[0].dtype)
            result = _tiled_backward(
                inputs, stats, grads, wanted, ctx.scale, ctx.prune_scale, ctx.warp_mode, config,
                cols=cols,
            )  # fmt: skip
            return *(result[name] for name in GRADIENT_NAMES), None, None, None, None
        result: dict[str, Tensor | None] = {}
        for side, kernel in (("query", BACKWARD_QUERY), ("key", BACKWARD_KEY)):
            config = _config(kernel, dims, inputs[0].device, inputs[0].dtype)
            result |= _launch_backward(
                side, inputs, stats, grads, wanted,
                ctx.scale, ctx.prune_scale, ctx.warp_mode, config,
            )  # fmt: skip
        return *(result[name] for name in GRADIENT_NAMES), None, None, None, None


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    *,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_values: Tensor | None,
    warp_over: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Dense dynamic attention, the semantics of `reference.reference_dynamic_attention`:
    returns (out, conf, topk, warp). Inputs arrive validated from `kernels.ops`: one float
    dtype, CUDA tensors (or CPU ones under TRITON_INTERPRET=1), autocast off."""
    if topk > TOPK_MAX:
        raise ValueError(
            f"topk ({topk}) must be at most {TOPK_MAX} with the fused dense kernels: the forward "
            f"keeps a next_pow2(k)-wide list per query in registers (docs/kernels-dense.md); "
            f"use backend='torch' for larger k"
        )
    return _DenseAttention.apply(
        q, k, v, q_prune, k_prune, warp_values, scale, prune_scale, topk, warp_over
    )
