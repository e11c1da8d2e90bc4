"""Fused Triton kernels of candidate (sparse) dynamic attention, forward and backward.

Specification: `kernels.reference.reference_candidate_attention` (docs/method.md section 4). Design
notes: docs/kernels-candidates.md. Sizes and block names: the `kernels` package docstring. In short:

- A program owns a tile of query *groups*. A group is one query (general candidates) or the four
  queries of a 2x2 window (inter-scale candidates, which those four share). A group has one
  candidate list of n_cand keys; the kernel reads the list and gathers the keys' rows of K,
  K_prune, V and the warp values itself, channel chunk by channel chunk, so no (queries x n_cand x
  channels) tensor ever reaches device memory. Scores are fp32 and the whole row of n_cand scores
  stays in registers, so softmax, mask, top-k and the warp softmax need no second pass.
- The forward saves the fp32 scores z and prune logits s ([B, Nq, n_cand] each, a few bytes per
  query) when a gradient is needed; the backward re-derives p, m and w from them instead of
  gathering K and K_prune twice.
- Backward: dq and dq_prune are per query (plain stores); dk, dv, dk_prune and d(warp_values) are
  scattered with fp32 atomics. A window-shared group sums its four queries' contributions in
  registers first, which cuts the atomics (and the gathers) by four.
- Tiles are walked batch-major and in row-major token order (windows in row-major order of the
  coarse grid), so programs that run together touch neighbouring queries, whose candidates mostly
  coincide, and one sample's keys stay resident in L2.

Shape comments in the kernels: G groups of the tile (BLOCK_G), A queries of a group (GROUP),
N candidate slots (BLOCK_N), C channels of one chunk.

File order: jit kernels, launchers (launch configs first), the autograd.Function, the public
`attention`. The autotuner's runners are in `kernels.tuning_candidates`, the ahead-of-time cases
in `kernels.aot_candidates`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import runtime
from .candidate_lists import (
    PER_MATCH,
    CandidateList,
    candidate_indices,
    candidate_source,
    window_shared_grid,
)
from .reference import WARP_MODE_IDS
from .runtime import interpreting
from .tuning import LaunchConfig, LaunchSpace, tuned_config

WINDOW = 4  # queries of a 2x2 window that share one inter-scale candidate list


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _group_tokens(pid_t, n_groups, grid_w, BLOCK_G: tl.constexpr, GROUP: tl.constexpr):
    """Token ids [BLOCK_G, GROUP] of this tile's queries, the token owning each group's candidate
    list [BLOCK_G], and which groups exist [BLOCK_G]."""
    g = pid_t * BLOCK_G + tl.arange(0, BLOCK_G)
    g_ok = g < n_groups
    if GROUP == 1:
        lead = g
    else:
        # Group g is window (u, v) of the coarse grid; its top-left query owns the list.
        half_w = grid_w // 2
        lead = 2 * (g // half_w) * grid_w + 2 * (g % half_w)
    a = tl.arange(0, GROUP)
    tok = lead[:, None] + (a // 2)[None, :] * grid_w + (a % 2)[None, :]
    return tok, lead, g_ok


@triton.jit
def _clamp(x, hi):
    return tl.minimum(tl.maximum(x, 0), hi)


@triton.jit
def _derived_candidates(SRC, b, lead, c_ok, j, n_src, src_k, grid_h, grid_w, DERIVE: tl.constexpr):
    """Candidate key tokens [G, N] (int32) of the groups whose list belongs to token `lead` [G],
    computed from the previous top-k SRC [B, n_src, src_k] in the order of the builders
    (`kernels.candidate_lists`), on the grid_h x grid_w grid:

    - inner (DERIVE 1): slot j = part * k + r. Part 0 is the query's own match r; parts 1-4 the
      match r of its upper, lower, left, right neighbour (the query itself where that neighbour
      is off the grid: replicate padding) shifted one cell back towards the query, each
      coordinate clamped to the grid. Duplicates stay.
    - inter (DERIVE 2): slot j = t * 4 + c, child c (row-major in its 2x2 block) of the coarse
      match t of the query's coarse cell (y // 2, x // 2); the coarse grid is grid_w / 2 wide.

    SRC holds a builder's private clamped copy, so every value is a token of its grid. Token
    arithmetic is int32 (every grid's tokens fit), the row offsets int64."""
    lead = lead.to(tl.int32)
    y = lead // grid_w
    x = lead % grid_w
    if DERIVE == 1:
        part = j // src_k
        r = j % src_k
        off_y = tl.where(part == 1, -1, tl.where(part == 2, 1, 0))  # [N]: which neighbour
        off_x = tl.where(part == 3, -1, tl.where(part == 4, 1, 0))
        ny = _clamp(y[:, None] + off_y[None, :], grid_h - 1)  # [G, N]
        nx = _clamp(x[:, None] + off_x[None, :], grid_w - 1)
        row = b * n_src + (ny * grid_w + nx).to(tl.int64)
        match = tl.load(SRC + row * src_k + r[None, :], mask=c_ok, other=0).to(tl.int32)
        cy = _clamp(match // grid_w - off_y[None, :], grid_h - 1)
        cx = _clamp(match % grid_w - off_x[None, :], grid_w - 1)
        cand = cy * grid_w + cx
    else:
        half_w = grid_w // 2
        cell = (y // 2) * half_w + x // 2  # [G]
        t = j // 4
        c = j % 4
        row = b * n_src + cell.to(tl.int64)
        match = tl.load(SRC + row[:, None] * src_k + t[None, :], mask=c_ok, other=0).to(tl.int32)
        cy = 2 * (match // half_w) + (c // 2)[None, :]
        cx = 2 * (match % half_w) + (c % 2)[None, :]
        cand = cy * grid_w + cx
    return cand


@triton.jit
def _tile_rows(
    CAND,
    Nq,
    Nk,
    n_cand,
    n_groups,
    grid_w,
    grid_h,
    n_src,
    src_k,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DERIVE: tl.constexpr,
):
    """What a program of grid (query tiles, batch) works on: its queries' rows q_row [G, A]
    (q_ok: the query exists), each group's candidate list cand [G, N] (slots j [N]; c_ok: the
    slot exists), the candidates' key rows k_row [G, N], and valid [G, A, N], the real (query,
    candidate) pairs. Rows count from the batch's first token: sample b's start at b * Nq
    (queries) and b * Nk (keys). DERIVE 0: CAND is the list [B, Nq, n_cand] (int32 or int64);
    1 / 2: CAND is the previous top-k [B, n_src, src_k] the inner / inter list derives from
    (`_derived_candidates`; grid_h x grid_w is the query grid)."""
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    tok, lead, g_ok = _group_tokens(pid_t, n_groups, grid_w, BLOCK_G, GROUP)
    q_ok = tl.broadcast_to(g_ok[:, None], (BLOCK_G, GROUP))
    q_row = b * Nq + tok
    j = tl.arange(0, BLOCK_N)
    c_ok = g_ok[:, None] & (j < n_cand)[None, :]
    if DERIVE == 0:
        cand = tl.load(CAND + (b * Nq + lead)[:, None] * n_cand + j[None, :], mask=c_ok, other=0)
    else:
        cand = _derived_candidates(CAND, b, lead, c_ok, j, n_src, src_k, grid_h, grid_w, DERIVE)
    k_row = b * Nk + cand.to(tl.int64)
    valid = c_ok[:, None, :] & q_ok[:, :, None]
    return q_row, q_ok, j, cand, k_row, c_ok, valid


@triton.jit
def _row_scores(
    X,
    Y,
    row_x,
    row_y,
    x_ok,
    y_ok,
    C,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 dot products <X[row_x], Y[row_y]> -> [BLOCK_G, GROUP, BLOCK_N], where row_x
    [BLOCK_G, GROUP] are query rows and row_y [BLOCK_G, BLOCK_N] gathered candidate rows."""
    acc = tl.zeros([BLOCK_G, GROUP, BLOCK_N], dtype=tl.float32)
    # Row offsets formed once, outside the channel loop (Triton 3.6 miscompiles the candidates'
    # offsets when they are expanded inside several loops: see `_derived_candidates`).
    x_at, x_in = row_x[:, :, None] * C, x_ok[:, :, None]
    y_at, y_in = row_y[:, :, None] * C, y_ok[:, :, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        x = tl.load(X + x_at + c[None, None, :], mask=x_in & c_ok[None, None, :], other=0.0).to(
            tl.float32
        )  # [G, A, C]
        y = tl.load(Y + y_at + c[None, None, :], mask=y_in & c_ok[None, None, :], other=0.0).to(
            tl.float32
        )  # [G, N, C]
        acc += tl.sum(x[:, :, None, :] * y[:, None, :, :], axis=3)
    return acc


@triton.jit
def _weighted_rows(
    weights,
    Y,
    row_y,
    y_ok,
    row_o,
    o_ok,
    OUT,
    C,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """OUT[row_o] = sum_j weights[..., j] * Y[row_y[j]], chunk by chunk (weights fp32
    [BLOCK_G, GROUP, BLOCK_N]; the store casts to OUT's dtype)."""
    y_at, y_in = row_y[:, :, None] * C, y_ok[:, :, None]  # once (see `_row_scores`)
    o_at, o_in = row_o[:, :, None] * C, o_ok[:, :, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        y = tl.load(Y + y_at + c[None, None, :], mask=y_in & c_ok[None, None, :], other=0.0).to(
            tl.float32
        )  # [G, N, C]
        o = tl.sum(weights[:, :, :, None] * y[:, None, :, :], axis=2)  # [G, A, C]
        tl.store(OUT + o_at + c[None, None, :], o, mask=o_in & c_ok[None, None, :])


@triton.jit
def _softmax(z, valid):
    """Softmax over the last axis restricted to `valid`; rows without a valid entry give zeros."""
    z = tl.where(valid, z, float("-inf"))
    top = tl.max(z, axis=2)
    top = tl.where(top == float("-inf"), 0.0, top)  # rows of absent queries: no NaN
    e = tl.where(valid, tl.exp(z - top[:, :, None]), 0.0)
    total = tl.sum(e, axis=2)
    return e / tl.where(total > 0, total, 1.0)[:, :, None]


@triton.jit
def _warp_weights(z, s, valid, WARP_MODE: tl.constexpr):
    """Softmax of z over the kept (1) or all (3) candidates, kept falling back to all when none is
    kept; "pruned" (2) is the release's formula: kept scores filled with -1e4, softmax over all,
    so a query keeping every candidate gets their uniform mean. No gradient flows through the
    selection or the fill (`_warp_z_part`)."""
    kept = s > 0
    if WARP_MODE == 2:
        # exp(-1e4 - max) is exactly 0 in fp32 beside any pruned score above -9,897, so the
        # filled keys weigh 0 unless every key is kept; then all scores are equal: uniform.
        sel = valid & (kept == 0)
        flat = (tl.max(sel.to(tl.int32), axis=2) == 0)[:, :, None]
        return _softmax(tl.where(flat, 0.0, z), sel | (valid & flat))
    if WARP_MODE == 1:
        sel = valid & kept
    else:
        sel = valid
    found = tl.max(sel.to(tl.int32), axis=2) > 0
    sel = sel | (valid & (found == 0)[:, :, None])
    return _softmax(z, sel)


@triton.jit
def _warp_z_part(x, s, WARP_MODE: tl.constexpr):
    """x where the warp softmax's score is z: everywhere but the filled (kept) keys of mode 2."""
    if WARP_MODE == 2:
        x = tl.where(s > 0, 0.0, x)
    return x


@triton.jit
def _candidate_fwd_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    CAND,
    OUT,
    CONF,
    TOPK,
    WARP,
    Z,
    S,
    Nq,
    Nk,
    n_cand,
    Cqk,
    Cp,
    Cv,
    Cw,
    n_groups,
    grid_w,
    grid_h,
    n_src,
    src_k,
    top_k,
    scale,
    prune_scale,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    SAVE_SCORES: tl.constexpr,
    DERIVE: tl.constexpr,
):
    q_row, q_ok, j, cand, k_row, c_ok, valid = _tile_rows(
        CAND, Nq, Nk, n_cand, n_groups, grid_w, grid_h, n_src, src_k,
        BLOCK_G, GROUP, BLOCK_N, DERIVE,
    )  # fmt: skip

    # Scores in fp32: the sparse scales multiply them by 100.
    z = scale * _row_scores(Q, K, q_row, k_row, q_ok, c_ok, Cqk, BLOCK_G, GROUP, BLOCK_N, BLOCK_D)
    s = prune_scale * _row_scores(
        QP, KP, q_row, k_row, q_ok, c_ok, Cp, BLOCK_G, GROUP, BLOCK_N, BLOCK_DP
    )
    if SAVE_SCORES:
        at = q_row[:, :, None] * n_cand + j[None, None, :]
        tl.store(Z + at, z, mask=valid)
        tl.store(S + at, s, mask=valid)

    # Top-k by repeated max-and-mask; equal scores go to the lower candidate position, as the
    # reference's stable sort does (duplicated candidates score exactly equal).
    # A NaN score ranks as -inf; `taken` (not the score) marks picks, so -inf ties resolve too.
    pos = j[None, None, :]
    taken = valid == 0
    z_rank = tl.where(z != z, float("-inf"), z)
    for t in range(0, top_k):
        zt = tl.where(taken, float("-inf"), z_rank)
        best = tl.max(zt, axis=2)
        hit = (zt == best[:, :, None]) & (taken == 0)
        first = tl.min(tl.where(hit, pos, BLOCK_N), axis=2)  # [G, A]
        chosen = pos == first[:, :, None]
        key = tl.sum(tl.where(chosen, cand[:, None, :], 0), axis=2)
        tl.store(TOPK + q_row * top_k + t, key.to(tl.int64), mask=q_ok)
        taken = taken | chosen

    # Only the two weight rows stay live through the gathers of V and the warp values.
    if WARP_MODE != 0:
        w = _warp_weights(z, s, valid, WARP_MODE)
    pm = tl.where(s > 0, _softmax(z, valid), 0.0)
    tl.store(CONF + q_row, tl.sum(pm, axis=2), mask=q_ok)
    _weighted_rows(pm, V, k_row, c_ok, q_row, q_ok, OUT, Cv, BLOCK_G, GROUP, BLOCK_N, BLOCK_DV)
    if WARP_MODE != 0:
        _weighted_rows(w, WV, k_row, c_ok, q_row, q_ok, WARP, Cw, BLOCK_G, GROUP, BLOCK_N, BLOCK_W)


@triton.jit
def _scatter_rows(
    coef,
    X,
    row_x,
    x_ok,
    Y,
    row_y,
    y_ok,
    DX,
    DY,
    C,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Backward of a weighted row sum over candidates, chunk by chunk, given fp32 coefficients
    coef [G, A, N] = dL/d<...> per (query, candidate):

    - DX[row_x] = sum_j coef_j Y[row_y[j]] (per query, a plain store);
    - DY[row_y[j]] += sum_a coef_aj X[row_x[a]] (fp32 atomics; the group's queries summed first).
    """
    x_row, x_in = row_x[:, :, None] * C, x_ok[:, :, None]  # once (see `_row_scores`)
    y_row, y_in = row_y[:, :, None] * C, y_ok[:, :, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ch_ok = c < C
        x_mask = x_in & ch_ok[None, None, :]
        y_mask = y_in & ch_ok[None, None, :]
        x_at = x_row + c[None, None, :]
        y_at = y_row + c[None, None, :]
        y = tl.load(Y + y_at, mask=y_mask, other=0.0).to(tl.float32)  # [G, N, C]
        dx = tl.sum(coef[:, :, :, None] * y[:, None, :, :], axis=2)  # [G, A, C]
        tl.store(DX + x_at, dx, mask=x_mask)
        x = tl.load(X + x_at, mask=x_mask, other=0.0).to(tl.float32)  # [G, A, C]
        dy = tl.sum(coef[:, :, :, None] * x[:, :, None, :], axis=1)  # [G, N, C]
        tl.atomic_add(DY + y_at, dy, mask=y_mask, sem="relaxed")


@triton.jit
def _candidate_bwd_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    CAND,
    Z,
    S,
    DOUT,
    DCONF,
    DWARP,
    DQ,
    DK,
    DV,
    DQP,
    DKP,
    DWV,
    Nq,
    Nk,
    n_cand,
    Cqk,
    Cp,
    Cv,
    Cw,
    n_groups,
    grid_w,
    grid_h,
    n_src,
    src_k,
    scale,
    prune_scale,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    DERIVE: tl.constexpr,
):
    """With g_j = dout . V_j + dconf and D = sum_j p_j m_j g_j (= dout . out + dconf * conf):
    dz_j = p_j (m_j g_j - D) + w_j (dwarp . W_j - dwarp . warp), ds_j = g_j p_j sig'(s_j);
    dq = scale sum_j dz_j K_j, dk_j += scale dz_j q, dq_p and dk_p alike with ds and prune_scale,
    dv_j += p_j m_j dout, dW_j += w_j dwarp."""
    q_row, q_ok, j, _, k_row, c_ok, valid = _tile_rows(
        CAND, Nq, Nk, n_cand, n_groups, grid_w, grid_h, n_src, src_k,
        BLOCK_G, GROUP, BLOCK_N, DERIVE,
    )  # fmt: skip

    at = q_row[:, :, None] * n_cand + j[None, None, :]
    z = tl.load(Z + at, mask=valid, other=0.0)
    s = tl.load(S + at, mask=valid, other=0.0)

    # The warp's share of dz first, so that w and z die before the value gathers.
    dz = tl.zeros([BLOCK_G, GROUP, BLOCK_N], dtype=tl.float32)
    if WARP_MODE != 0:
        w = _warp_weights(z, s, valid, WARP_MODE)
        # dw_j = dwarp . W_j while DW_j += w_j dwarp is scattered (Cw is small: one chunk).
        gw = tl.zeros([BLOCK_G, GROUP, BLOCK_N], dtype=tl.float32)
        w_row, dw_row = k_row[:, :, None] * Cw, q_row[:, :, None] * Cw  # once (`_row_scores`)
        for c0 in range(0, Cw, BLOCK_W):
            c = c0 + tl.arange(0, BLOCK_W)
            ch_ok = c < Cw
            w_at = w_row + c[None, None, :]
            w_mask = c_ok[:, :, None] & ch_ok[None, None, :]
            wv = tl.load(WV + w_at, mask=w_mask, other=0.0).to(tl.float32)  # [G, N, C]
            dw = tl.load(
                DWARP + dw_row + c[None, None, :],
                mask=q_ok[:, :, None] & ch_ok[None, None, :],
                other=0.0,
            ).to(tl.float32)  # [G, A, C]
            gw += tl.sum(dw[:, :, None, :] * wv[:, None, :, :], axis=3)
            dwv = tl.sum(w[:, :, :, None] * dw[:, :, None, :], axis=1)  # [G, N, C]
            tl.atomic_add(DWV + w_at, dwv, mask=w_mask, sem="relaxed")
        dz = _warp_z_part(w * (gw - tl.sum(w * gw, axis=2)[:, :, None]), s, WARP_MODE)

    p = _softmax(z, valid)
    pm = tl.where(s > 0, p, 0.0)
    sig = tl.sigmoid(s)
    p_sig = tl.where(valid, p * sig * (1.0 - sig), 0.0)

    # g_j = dout . V_j + dconf, while dv_j += p_j m_j dout is scattered from the same chunks.
    g = tl.zeros([BLOCK_G, GROUP, BLOCK_N], dtype=tl.float32)
    v_row, do_row = k_row[:, :, None] * Cv, q_row[:, :, None] * Cv  # once (`_row_scores`)
    for c0 in range(0, Cv, BLOCK_DV):
        c = c0 + tl.arange(0, BLOCK_DV)
        ch_ok = c < Cv
        v_at = v_row + c[None, None, :]
        v_mask = c_ok[:, :, None] & ch_ok[None, None, :]
        vv = tl.load(V + v_at, mask=v_mask, other=0.0).to(tl.float32)  # [G, N, C]
        do = tl.load(
            DOUT + do_row + c[None, None, :],
            mask=q_ok[:, :, None] & ch_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [G, A, C]
        g += tl.sum(do[:, :, None, :] * vv[:, None, :, :], axis=3)
        dv = tl.sum(pm[:, :, :, None] * do[:, :, None, :], axis=1)  # [G, N, C]
        tl.atomic_add(DV + v_at, dv, mask=v_mask, sem="relaxed")
    g += tl.load(DCONF + q_row, mask=q_ok, other=0.0).to(tl.float32)[:, :, None]

    # D = sum_j p_j m_j g_j, formed in fp32 here rather than from the stored (rounded) outputs.
    dz += pm * g - p * tl.sum(pm * g, axis=2)[:, :, None]
    dz = tl.where(valid, dz, 0.0) * scale
    ds = g * p_sig * prune_scale
    _scatter_rows(
        ds, QP, q_row, q_ok, KP, k_row, c_ok, DQP, DKP, Cp, BLOCK_G, GROUP, BLOCK_N, BLOCK_DP
    )
    _scatter_rows(dz, Q, q_row, q_ok, K, k_row, c_ok, DQ, DK, Cqk, BLOCK_G, GROUP, BLOCK_N, BLOCK_D)


# --------------------------------------------------------------------------------------------------
# Launchers: the launch configurations (search space, default, block sizes), then the launches
# --------------------------------------------------------------------------------------------------

# fp32 elements per thread in the largest live tile (queries x candidates x channels). The sweep
# in docs/kernels-candidates.md: 16 compiles without spills at every real size, also without
# divisibility hints; 32 and more spill in the backward of inner-scale candidates (n_cand = 20
# padded to 32). The space varies the tile's shape and the warp count around this budget.
_PER_THREAD = 16


def _dims(q: Tensor, k_prune: Tensor, v: Tensor, n_cand: int, cw: int, group: int) -> dict:
    """The shape key of a problem (bucketed by `kernels.tuning`; M is n_cand). A derived list has
    the key of the materialised one: both launch from the same space and share winners."""
    return {
        "Nq": q.shape[1],
        "Cqk": q.shape[2],
        "Cp": k_prune.shape[2],
        "Cv": v.shape[2],
        "Cw": cw,
        "M": n_cand,
        "G": group,
    }


def _constexprs(dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
    """Block sizes of one launch: the config's queries (BLOCK_Q, in groups of G) and channel chunk
    (BLOCK_C, clipped to each tensor's channels), fitted to the problem."""
    np2 = triton.next_power_of_2
    block_c = config["BLOCK_C"]
    return {
        "BLOCK_G": max(1, config["BLOCK_Q"] // dims["G"]),
        "GROUP": dims["G"],
        "BLOCK_N": np2(dims["M"]),
        "BLOCK_D": min(block_c, np2(dims["Cqk"])),
        "BLOCK_DP": min(block_c, np2(dims["Cp"])),
        "BLOCK_DV": min(block_c, np2(dims["Cv"])),
        "BLOCK_W": min(block_c, np2(max(dims["Cw"], 1))),
    }


def _per_thread(dims: dict[str, int], config: LaunchConfig) -> float:
    blocks = _constexprs(dims, config)
    tile = blocks["BLOCK_G"] * blocks["GROUP"] * blocks["BLOCK_N"] * config["BLOCK_C"]
    return tile / (32 * config["num_warps"])


def _fits(dims: dict[str, int], config: LaunchConfig) -> bool:
    """The pruning predicate of the search space."""
    if config["BLOCK_Q"] < dims["G"]:
        return False  # a window's four queries never split across programs
    return _per_thread(dims, config) == _PER_THREAD


def _space(dims: dict[str, int]) -> list[LaunchConfig]:
    """Every config the autotuner may pick for `dims` (the one place the search space lives)."""
    configs = [
        {"BLOCK_Q": bq, "BLOCK_C": bc, "num_warps": nw, "num_stages": 1}
        for bq in (4, 8, 16)
        for bc in (16, 32)
        for nw in (2, 4, 8)
    ]
    return [c for c in configs if _fits(dims, c)]


def _default(dims: dict[str, int]) -> LaunchConfig:
    """16 channels on 4 warps, as many queries as keep the tile at `_PER_THREAD` (8 for M = 16,
    4 for M = 20); at least one group, whatever the register cost, so any M launches."""
    block_n = triton.next_power_of_2(dims["M"])
    block_q = max(dims["G"], 1, _PER_THREAD * 32 * 4 // (block_n * 16))
    return {"BLOCK_Q": min(block_q, 16), "BLOCK_C": 16, "num_warps": 4, "num_stages": 1}


FORWARD = LaunchSpace("candidate_fwd", _space, _default)
BACKWARD = LaunchSpace("candidate_bwd", _space, _default)


def _config(
    kernel: LaunchSpace, dims: dict[str, int], device: torch.device, dtype: torch.dtype
) -> LaunchConfig:
    if interpreting():
        return kernel.default(dims)  # no tuning table applies to the CPU interpreter
    return tuned_config(kernel, dims, device, dtype)  # winners timed in this dtype only


@dataclass(frozen=True)
class Derivation:
    """Candidates derived in the kernel: `kind` "inner" or "inter" (the builders of
    `kernels.candidate_lists`) on the height x width query grid; the launch's `cand` is then
    the previous top-k [B, n_src, k] instead of the list."""

    kind: str
    height: int
    width: int

    @property
    def code(self) -> int:
        """The kernels' DERIVE flag."""
        return DERIVE_CODES[self.kind]

    def n_cand(self, src_k: int) -> int:
        return PER_MATCH[self.kind] * src_k


DERIVE_CODES = {"inner": 1, "inter": 2}  # 0: the list is read


def _geometry(
    nq: int, window: tuple[int, int] | None, derive: Derivation | None
) -> tuple[int, int, int, int]:
    """(group size, groups per sample, grid width, grid height): windows of 4 queries when the
    candidates are window-shared, else single queries. The grid is the query grid where the
    kernel needs it (windows, derivation); 1 x 1 otherwise."""
    if derive is not None:
        height, width = derive.height, derive.width
    elif window is not None:
        height, width = window
    else:
        height = width = 1
    if window is None:
        return 1, nq, width, height
    return WINDOW, (height // 2) * (width // 2), width, height


def _index_args(cand: Tensor, derive: Derivation | None) -> tuple[int, int, int, int]:
    """(n_cand, n_src, src_k, DERIVE) of a launch whose `cand` is a list or a derivation's top-k."""
    if derive is None:
        return cand.shape[2], 1, 1, 0
    return derive.n_cand(cand.shape[2]), cand.shape[1], cand.shape[2], derive.code


def _launch_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    warp_values: Tensor | None,
    cand: Tensor,
    *,
    window: tuple[int, int] | None,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_mode: int,
    save_scores: bool,
    derive: Derivation | None = None,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Runs the forward kernel on contiguous inputs; returns (out, conf, topk, warp, z, s).
    `cand`: the list [B, Nq, M], or with `derive` the previous top-k it derives from."""
    b, nq, _ = q.shape
    nk, cv = k.shape[1], v.shape[2]
    n_cand, n_src, src_k, derive_code = _index_args(cand, derive)
    cw = warp_values.shape[2] if warp_values is not None else 0
    group, n_groups, grid_w, grid_h = _geometry(nq, window, derive)
    dims = _dims(q, k_prune, v, n_cand, cw, group)
    config = config or _config(FORWARD, dims, q.device, q.dtype)
    blocks = _constexprs(dims, config)

    dev, dtype = q.device, q.dtype
    out = runtime.empty((b, nq, cv), dtype, dev)
    conf = runtime.empty((b, nq), dtype, dev)
    top = runtime.empty((b, nq, topk), torch.int64, dev) if topk else None
    warp = runtime.empty((b, nq, cw), dtype, dev) if warp_mode else None
    z = s = None
    if save_scores:
        z = runtime.empty((b, nq, n_cand), torch.float32, dev)
        s = runtime.empty((b, nq, n_cand), torch.float32, dev)
    # Unused pointers get any tensor: the constexpr flags compile their uses away.
    grid = (triton.cdiv(n_groups, blocks["BLOCK_G"]), b)
    _candidate_fwd_kernel[grid](
        q,
        k,
        v,
        q_prune,
        k_prune,
        warp_values if warp_values is not None else v,
        cand,
        out,
        conf,
        top if top is not None else cand,
        warp if warp is not None else out,
        z if z is not None else out,
        s if s is not None else out,
        nq,
        nk,
        n_cand,
        q.shape[2],
        q_prune.shape[2],
        cv,
        cw,
        n_groups,
        grid_w,
        grid_h,
        n_src,
        src_k,
        topk,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode,
        SAVE_SCORES=save_scores,
        DERIVE=derive_code,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return out, conf, top, warp, z, s


def _launch_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    warp_values: Tensor | None,
    cand: Tensor,
    z: Tensor,
    s: Tensor,
    dout: Tensor,
    dconf: Tensor,
    dwarp: Tensor | None,
    *,
    window: tuple[int, int] | None,
    scale: float,
    prune_scale: float,
    warp_mode: int,
    derive: Derivation | None = None,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Runs the backward kernel; returns (dq, dk, dv, dq_prune, dk_prune, dwarp_values), the
    scattered ones still in their fp32 accumulation buffers. `cand` as in `_launch_forward`."""
    b, nq, _ = q.shape
    nk = k.shape[1]
    n_cand, n_src, src_k, derive_code = _index_args(cand, derive)
    cw = warp_values.shape[2] if warp_values is not None else 0
    group, n_groups, grid_w, grid_h = _geometry(nq, window, derive)
    dims = _dims(q, k_prune, v, n_cand, cw, group)
    config = config or _config(BACKWARD, dims, q.device, q.dtype)
    blocks = _constexprs(dims, config)

    dq = runtime.empty(q.shape, q.dtype, q.device)
    dq_prune = runtime.empty(q_prune.shape, q_prune.dtype, q.device)
    # Atomically accumulated: fp32, zeroed before every launch.
    dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
    dk_prune = torch.zeros(k_prune.shape, device=q.device, dtype=torch.float32)
    dwv = None
    if warp_values is not None:
        dwv = torch.zeros(warp_values.shape, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(n_groups, blocks["BLOCK_G"]), b)
    _candidate_bwd_kernel[grid](
        q,
        k,
        v,
        q_prune,
        k_prune,
        warp_values if warp_values is not None else v,
        cand,
        z,
        s,
        dout,
        dconf,
        dwarp if dwarp is not None else dout,
        dq,
        dk,
        dv,
        dq_prune,
        dk_prune,
        dwv if dwv is not None else dk,
        nq,
        nk,
        n_cand,
        q.shape[2],
        q_prune.shape[2],
        v.shape[2],
        cw,
        n_groups,
        grid_w,
        grid_h,
        n_src,
        src_k,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode if dwarp is not None else 0,
        DERIVE=derive_code,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return dq, dk, dv, dq_prune, dk_prune, dwv


# --------------------------------------------------------------------------------------------------
# Autograd and the public operator
# --------------------------------------------------------------------------------------------------


class _CandidateAttention(torch.autograd.Function):
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
        candidates: Tensor,
        window: tuple[int, int] | None,
        derive: Derivation | None,
        scale: float,
        prune_scale: float,
        topk: int,
        warp_mode: int,
    ):
        save = any(ctx.needs_input_grad[:6])
        out, conf, top, warp, z, s = _launch_forward(
            q,
            k,
            v,
            q_prune,
            k_prune,
            warp_values,
            candidates,
            window=window,
            scale=scale,
            prune_scale=prune_scale,
            topk=topk,
            warp_mode=warp_mode,
            save_scores=save,
            derive=derive,
        )
        if top is not None:
            ctx.mark_non_differentiable(top)
        if save:
            ctx.save_for_backward(q, k, v, q_prune, k_prune, warp_values, candidates, z, s)
        ctx.window, ctx.derive, ctx.warp_mode = window, derive, warp_mode
        ctx.scale, ctx.prune_scale = scale, prune_scale
        return out, conf, top, warp

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable  # the kernels are not themselves differentiable: say so, not silently 0
    def backward(ctx, dout: Tensor, dconf: Tensor, _dtop: Tensor | None, dwarp: Tensor | None):
        q, k, v, q_prune, k_prune, warp_values, candidates, z, s = ctx.saved_tensors
        if dwarp is None and warp_values is not None:
            dwarp = torch.zeros(q.shape[0], q.shape[1], warp_values.shape[2], device=q.device)
        dq, dk, dv, dq_prune, dk_prune, dwv = _launch_backward(
            q,
            k,
            v,
            q_prune,
            k_prune,
            warp_values,
            candidates,
            z,
            s,
            dout.contiguous(),
            dconf.contiguous(),
            dwarp.contiguous() if dwarp is not None else None,
            window=ctx.window,
            scale=ctx.scale,
            prune_scale=ctx.prune_scale,
            warp_mode=ctx.warp_mode,
            derive=ctx.derive,
        )
        dtype = q.dtype
        need = ctx.needs_input_grad
        grads = (dq, dk.to(dtype), dv.to(dtype), dq_prune, dk_prune.to(dtype))
        grads = tuple(g if n else None for g, n in zip(grads, need[:5], strict=True))
        dwv = dwv.to(dtype) if dwv is not None and need[5] else None
        return (*grads, dwv, None, None, None, None, None, None, None)


CANDIDATES_ENV = "DYNAST_CANDIDATES"
CANDIDATE_MODES = ("derived", "list")


def candidate_mode() -> str:
    """How the fused kernels take a builder's CandidateList, `$DYNAST_CANDIDATES`: "derived"
    (the default: candidates computed in the kernel from the top-k the list holds, no list
    written or read) or "list" (the list is built and read, as for a plain tensor)."""
    value = os.environ.get(CANDIDATES_ENV, "derived").strip().lower() or "derived"
    if value not in CANDIDATE_MODES:
        raise ValueError(
            f"${CANDIDATES_ENV}={value!r}: expected one of {', '.join(CANDIDATE_MODES)}"
        )
    return value


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    candidates: Tensor | CandidateList,
    *,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_values: Tensor | None,
    warp_over: str,
    window: tuple[int, int] | None = None,
    derive: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidate dynamic attention with the fused kernels: (out, conf, topk or None, warp or None),
    the semantics of `kernels.reference.reference_candidate_attention`. Inputs arrive validated by
    `kernels.ops` (one float dtype, candidates in range, CUDA or the interpreter). `window` is
    the grid of a window-shared inter-scale CandidateList (`kernels.candidate_lists`), else None; a
    CandidateList given directly (benchmarks call this function) brings its own.

    A CandidateList's candidates are derived in the kernel from the top-k it holds when `derive`
    is True, or when it is None and `candidate_mode()` says "derived" (the default); otherwise
    its list is built (once) and read. A plain tensor is always read. Indices are read as given,
    int32 or int64."""
    source = candidate_source(candidates)
    if derive is None:
        derive = candidate_mode() == "derived"
    derivation = None
    if isinstance(candidates, CandidateList):
        window = window or window_shared_grid(candidates)
        if derive and source is not None:
            derivation = Derivation(source[0], *candidates.grid)
            candidates = source[1]
        else:
            candidates = candidate_indices(candidates)
    nq = q.shape[1]
    if window is not None:
        height, width = window
        if height % 2 or width % 2 or height * width != nq:
            window = None  # a mark that does not describe these queries: treat lists as own
    if derivation is not None and derivation.height * derivation.width != nq:
        raise ValueError(
            f"candidates were built for a {derivation.height}x{derivation.width} grid, "
            f"but q holds Nq = {nq} queries"
        )
    warp_mode = WARP_MODE_IDS[warp_over] if warp_values is not None else 0
    out, conf, top, warp = _CandidateAttention.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        q_prune.contiguous(),
        k_prune.contiguous(),
        warp_values.contiguous() if warp_values is not None else None,
        candidates.contiguous(),
        window,
        derivation,
        scale,
        prune_scale,
        topk,
        warp_mode,
    )
    return out, conf, top, warp
