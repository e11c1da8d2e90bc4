"""Fused Triton kernels of candidate (sparse) dynamic attention, forward and backward.

Specification: `kernels.reference.reference_candidate_attention` (docs/method.md section 4). Design
notes: docs/kernels-candidates.md. In short:

- A program owns a tile of query *groups*. A group is one query (general candidates) or the four
  queries of a 2x2 window (inter-scale candidates, which those four share). A group has one
  candidate list of M keys; the kernel reads the list and gathers the keys' rows of K, K_prune, V
  and the warp values itself, channel chunk by channel chunk, so no (queries x M x channels)
  tensor ever reaches device memory. Scores are fp32 and the whole row of M scores stays in
  registers, so softmax, mask, top-k and the warp softmax need no second pass.
- The forward saves the fp32 scores z and prune logits s ([B, Nq, M] each, a few bytes per query)
  when a gradient is needed; the backward re-derives p, m and w from them instead of gathering K
  and K_prune twice.
- Backward: dq and dq_prune are per query (plain stores); dk, dv, dk_prune and d(warp_values) are
  scattered with fp32 atomics. A window-shared group sums its four queries' contributions in
  registers first, which cuts the atomics (and the gathers) by four.
- Tiles are walked batch-major and in row-major token order (windows in row-major order of the
  coarse grid), so programs that run together touch neighbouring queries, whose candidates mostly
  coincide, and one sample's keys stay resident in L2.

File order: jit kernels, launchers, launch configs (tuning and ahead-of-time cases), the
autograd.Function, the public `attention`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .aot import AotCase
from .candidates import CandidateList, candidate_indices, window_shared_grid
from .reference import WARP_MODE_IDS
from .runtime import interpreting
from .shapes import AttentionShape, make_problem, sparse_scale_sizes
from .tuning import LaunchConfig, TunableKernel, tuned_config

# WARP_MODE constexpr: 0 = no warp output, then one per `warp_over` value.
_KEPT = WARP_MODE_IDS["kept"]
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
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 dot products <X[row_x], Y[row_y]> -> [BLOCK_G, GROUP, BLOCK_M], where row_x
    [BLOCK_G, GROUP] are query rows and row_y [BLOCK_G, BLOCK_M] gathered candidate rows."""
    acc = tl.zeros([BLOCK_G, GROUP, BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        x = tl.load(
            X + row_x[:, :, None] * C + c[None, None, :],
            mask=x_ok[:, :, None] & c_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [G, A, C]
        y = tl.load(
            Y + row_y[:, :, None] * C + c[None, None, :],
            mask=y_ok[:, :, None] & c_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [G, M, C]
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
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """OUT[row_o] = sum_j weights[..., j] * Y[row_y[j]], chunk by chunk (weights fp32
    [BLOCK_G, GROUP, BLOCK_M]; the store casts to OUT's dtype)."""
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        c_ok = c < C
        y = tl.load(
            Y + row_y[:, :, None] * C + c[None, None, :],
            mask=y_ok[:, :, None] & c_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [G, M, C]
        o = tl.sum(weights[:, :, :, None] * y[:, None, :, :], axis=2)  # [G, A, C]
        tl.store(
            OUT + row_o[:, :, None] * C + c[None, None, :],
            o,
            mask=o_ok[:, :, None] & c_ok[None, None, :],
        )


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
    n_top,
    scale,
    prune_scale,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_CQK: tl.constexpr,
    BLOCK_CP: tl.constexpr,
    BLOCK_CV: tl.constexpr,
    BLOCK_CW: tl.constexpr,
    WARP_MODE: tl.constexpr,
    SAVE_SCORES: tl.constexpr,
):
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    tok, lead, g_ok = _group_tokens(pid_t, n_groups, grid_w, BLOCK_G, GROUP)
    q_ok = tl.broadcast_to(g_ok[:, None], (BLOCK_G, GROUP))  # [G, A]
    q_row = b * Nq + tok  # [G, A]

    j = tl.arange(0, BLOCK_M)
    j_ok = j < n_cand
    c_ok = g_ok[:, None] & j_ok[None, :]  # [G, M]
    cand = tl.load(CAND + (b * Nq + lead)[:, None] * n_cand + j[None, :], mask=c_ok, other=0)
    k_row = b * Nk + cand.to(tl.int64)  # [G, M]
    valid = c_ok[:, None, :] & q_ok[:, :, None]  # [G, A, M]

    # Scores in fp32: the sparse scales multiply them by 100.
    z = scale * _row_scores(Q, K, q_row, k_row, q_ok, c_ok, Cqk, BLOCK_G, GROUP, BLOCK_M, BLOCK_CQK)
    s = prune_scale * _row_scores(
        QP, KP, q_row, k_row, q_ok, c_ok, Cp, BLOCK_G, GROUP, BLOCK_M, BLOCK_CP
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
    for t in range(0, n_top):
        zt = tl.where(taken, float("-inf"), z_rank)
        best = tl.max(zt, axis=2)
        hit = (zt == best[:, :, None]) & (taken == 0)
        first = tl.min(tl.where(hit, pos, BLOCK_M), axis=2)  # [G, A]
        chosen = pos == first[:, :, None]
        key = tl.sum(tl.where(chosen, cand[:, None, :], 0), axis=2)
        tl.store(TOPK + q_row * n_top + t, key.to(tl.int64), mask=q_ok)
        taken = taken | chosen

    # Only the two weight rows stay live through the gathers of V and the warp values.
    if WARP_MODE != 0:
        w = _warp_weights(z, s, valid, WARP_MODE)
    pm = tl.where(s > 0, _softmax(z, valid), 0.0)
    tl.store(CONF + q_row, tl.sum(pm, axis=2), mask=q_ok)
    _weighted_rows(pm, V, k_row, c_ok, q_row, q_ok, OUT, Cv, BLOCK_G, GROUP, BLOCK_M, BLOCK_CV)
    if WARP_MODE != 0:
        _weighted_rows(w, WV, k_row, c_ok, q_row, q_ok, WARP, Cw, BLOCK_G, GROUP, BLOCK_M, BLOCK_CW)


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
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Backward of a weighted row sum over candidates, chunk by chunk, given fp32 coefficients
    coef [G, A, M] = dL/d<...> per (query, candidate):

    - DX[row_x] = sum_j coef_j Y[row_y[j]] (per query, a plain store);
    - DY[row_y[j]] += sum_a coef_aj X[row_x[a]] (fp32 atomics; the group's queries summed first).
    """
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        ch_ok = c < C
        x_mask = x_ok[:, :, None] & ch_ok[None, None, :]
        y_mask = y_ok[:, :, None] & ch_ok[None, None, :]
        x_at = row_x[:, :, None] * C + c[None, None, :]
        y_at = row_y[:, :, None] * C + c[None, None, :]
        y = tl.load(Y + y_at, mask=y_mask, other=0.0).to(tl.float32)  # [G, M, C]
        dx = tl.sum(coef[:, :, :, None] * y[:, None, :, :], axis=2)  # [G, A, C]
        tl.store(DX + x_at, dx, mask=x_mask)
        x = tl.load(X + x_at, mask=x_mask, other=0.0).to(tl.float32)  # [G, A, C]
        dy = tl.sum(coef[:, :, :, None] * x[:, :, None, :], axis=1)  # [G, M, C]
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
    scale,
    prune_scale,
    BLOCK_G: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_CQK: tl.constexpr,
    BLOCK_CP: tl.constexpr,
    BLOCK_CV: tl.constexpr,
    BLOCK_CW: tl.constexpr,
    WARP_MODE: tl.constexpr,
):
    """With g_j = dout . V_j + dconf and D = sum_j p_j m_j g_j (= dout . out + dconf * conf):
    dz_j = p_j (m_j g_j - D) + w_j (dwarp . W_j - dwarp . warp), ds_j = g_j p_j sig'(s_j);
    dq = scale sum_j dz_j K_j, dk_j += scale dz_j q, dq_p and dk_p alike with ds and prune_scale,
    dv_j += p_j m_j dout, dW_j += w_j dwarp."""
    pid_t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    tok, lead, g_ok = _group_tokens(pid_t, n_groups, grid_w, BLOCK_G, GROUP)
    q_ok = tl.broadcast_to(g_ok[:, None], (BLOCK_G, GROUP))
    q_row = b * Nq + tok

    j = tl.arange(0, BLOCK_M)
    j_ok = j < n_cand
    c_ok = g_ok[:, None] & j_ok[None, :]
    cand = tl.load(CAND + (b * Nq + lead)[:, None] * n_cand + j[None, :], mask=c_ok, other=0)
    k_row = b * Nk + cand.to(tl.int64)
    valid = c_ok[:, None, :] & q_ok[:, :, None]

    at = q_row[:, :, None] * n_cand + j[None, None, :]
    z = tl.load(Z + at, mask=valid, other=0.0)
    s = tl.load(S + at, mask=valid, other=0.0)

    # The warp's share of dz first, so that w and z die before the value gathers.
    dz = tl.zeros([BLOCK_G, GROUP, BLOCK_M], dtype=tl.float32)
    if WARP_MODE != 0:
        w = _warp_weights(z, s, valid, WARP_MODE)
        # dw_j = dwarp . W_j while DW_j += w_j dwarp is scattered (Cw is small: one chunk).
        gw = tl.zeros([BLOCK_G, GROUP, BLOCK_M], dtype=tl.float32)
        for c0 in range(0, Cw, BLOCK_CW):
            c = c0 + tl.arange(0, BLOCK_CW)
            ch_ok = c < Cw
            w_at = k_row[:, :, None] * Cw + c[None, None, :]
            w_mask = c_ok[:, :, None] & ch_ok[None, None, :]
            wv = tl.load(WV + w_at, mask=w_mask, other=0.0).to(tl.float32)  # [G, M, C]
            dw = tl.load(
                DWARP + q_row[:, :, None] * Cw + c[None, None, :],
                mask=q_ok[:, :, None] & ch_ok[None, None, :],
                other=0.0,
            ).to(tl.float32)  # [G, A, C]
            gw += tl.sum(dw[:, :, None, :] * wv[:, None, :, :], axis=3)
            dwv = tl.sum(w[:, :, :, None] * dw[:, :, None, :], axis=1)  # [G, M, C]
            tl.atomic_add(DWV + w_at, dwv, mask=w_mask, sem="relaxed")
        dz = _warp_z_part(w * (gw - tl.sum(w * gw, axis=2)[:, :, None]), s, WARP_MODE)

    p = _softmax(z, valid)
    pm = tl.where(s > 0, p, 0.0)
    sig = tl.sigmoid(s)
    p_sig = tl.where(valid, p * sig * (1.0 - sig), 0.0)

    # g_j = dout . V_j + dconf, while dv_j += p_j m_j dout is scattered from the same chunks.
    g = tl.zeros([BLOCK_G, GROUP, BLOCK_M], dtype=tl.float32)
    for c0 in range(0, Cv, BLOCK_CV):
        c = c0 + tl.arange(0, BLOCK_CV)
        ch_ok = c < Cv
        v_at = k_row[:, :, None] * Cv + c[None, None, :]
        v_mask = c_ok[:, :, None] & ch_ok[None, None, :]
        vv = tl.load(V + v_at, mask=v_mask, other=0.0).to(tl.float32)  # [G, M, C]
        do = tl.load(
            DOUT + q_row[:, :, None] * Cv + c[None, None, :],
            mask=q_ok[:, :, None] & ch_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [G, A, C]
        g += tl.sum(do[:, :, None, :] * vv[:, None, :, :], axis=3)
        dv = tl.sum(pm[:, :, :, None] * do[:, :, None, :], axis=1)  # [G, M, C]
        tl.atomic_add(DV + v_at, dv, mask=v_mask, sem="relaxed")
    g += tl.load(DCONF + q_row, mask=q_ok, other=0.0).to(tl.float32)[:, :, None]

    # D = sum_j p_j m_j g_j, formed in fp32 here rather than from the stored (rounded) outputs.
    dz += pm * g - p * tl.sum(pm * g, axis=2)[:, :, None]
    dz = tl.where(valid, dz, 0.0) * scale
    ds = g * p_sig * prune_scale
    _scatter_rows(
        ds, QP, q_row, q_ok, KP, k_row, c_ok, DQP, DKP, Cp, BLOCK_G, GROUP, BLOCK_M, BLOCK_CP
    )
    _scatter_rows(
        dz, Q, q_row, q_ok, K, k_row, c_ok, DQ, DK, Cqk, BLOCK_G, GROUP, BLOCK_M, BLOCK_CQK
    )


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def _dims(q: Tensor, k_prune: Tensor, v: Tensor, cand: Tensor, cw: int, group: int) -> dict:
    """The shape key of a problem (bucketed by `kernels.tuning`)."""
    return {
        "Nq": q.shape[1],
        "Cqk": q.shape[2],
        "Cp": k_prune.shape[2],
        "Cv": v.shape[2],
        "Cw": cw,
        "M": cand.shape[2],
        "G": group,
    }


def _constexprs(dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
    """Block sizes of one launch: the config's query and channel blocks, fitted to the problem."""
    np2 = triton.next_power_of_2
    block_c = config["BLOCK_C"]
    return {
        "BLOCK_G": max(1, config["BLOCK_Q"] // dims["G"]),
        "GROUP": dims["G"],
        "BLOCK_M": np2(dims["M"]),
        "BLOCK_CQK": min(block_c, np2(dims["Cqk"])),
        "BLOCK_CP": min(block_c, np2(dims["Cp"])),
        "BLOCK_CV": min(block_c, np2(dims["Cv"])),
        "BLOCK_CW": min(block_c, np2(max(dims["Cw"], 1))),
    }


def _geometry(nq: int, window: tuple[int, int] | None) -> tuple[int, int, int]:
    """(group size, groups per sample, grid width): windows of 4 queries when the candidates are
    window-shared, else single queries."""
    if window is None:
        return 1, nq, 1
    height, width = window
    return WINDOW, (height // 2) * (width // 2), width


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
    n_top: int,
    warp_mode: int,
    save_scores: bool,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Runs the forward kernel on contiguous inputs; returns (out, conf, topk, warp, z, s)."""
    b, nq, _ = q.shape
    nk, cv, m = k.shape[1], v.shape[2], cand.shape[2]
    cw = warp_values.shape[2] if warp_values is not None else 0
    group, n_groups, grid_w = _geometry(nq, window)
    dims = _dims(q, k_prune, v, cand, cw, group)
    config = config or _config(FORWARD, dims, q.device)
    blocks = _constexprs(dims, config)

    out = torch.empty(b, nq, cv, device=q.device, dtype=q.dtype)
    conf = torch.empty(b, nq, device=q.device, dtype=q.dtype)
    top = torch.empty(b, nq, n_top, device=q.device, dtype=torch.int64) if n_top else None
    warp = torch.empty(b, nq, cw, device=q.device, dtype=q.dtype) if warp_mode else None
    z = s = None
    if save_scores:
        z = torch.empty(b, nq, m, device=q.device, dtype=torch.float32)
        s = torch.empty_like(z)
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
        m,
        q.shape[2],
        q_prune.shape[2],
        cv,
        cw,
        n_groups,
        grid_w,
        n_top,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode,
        SAVE_SCORES=save_scores,
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
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Runs the backward kernel; returns (dq, dk, dv, dq_prune, dk_prune, dwarp_values), the
    scattered ones still in their fp32 accumulation buffers."""
    b, nq, _ = q.shape
    nk, m = k.shape[1], cand.shape[2]
    cw = warp_values.shape[2] if warp_values is not None else 0
    group, n_groups, grid_w = _geometry(nq, window)
    dims = _dims(q, k_prune, v, cand, cw, group)
    config = config or _config(BACKWARD, dims, q.device)
    blocks = _constexprs(dims, config)

    dq = torch.empty_like(q)
    dq_prune = torch.empty_like(q_prune)
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
        m,
        q.shape[2],
        q_prune.shape[2],
        v.shape[2],
        cw,
        n_groups,
        grid_w,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode if dwarp is not None else 0,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return dq, dk, dv, dq_prune, dk_prune, dwv


# --------------------------------------------------------------------------------------------------
# Launch configurations: the search space, the defaults, the autotuner's runners, AOT cases
# --------------------------------------------------------------------------------------------------

# fp32 elements per thread in the largest live tile (queries x candidates x channels). The sweep
# in docs/kernels-candidates.md: 16 compiles without spills at every real size, also without
# divisibility hints; 32 and more spill in the backward of inner-scale candidates (M = 20 padded
# to 32). The space varies the tile's shape and the warp count around this budget.
_PER_THREAD = 16


def _per_thread(dims: dict[str, int], config: LaunchConfig) -> float:
    blocks = _constexprs(dims, config)
    tile = blocks["BLOCK_G"] * blocks["GROUP"] * blocks["BLOCK_M"] * config["BLOCK_C"]
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
    block_m = triton.next_power_of_2(dims["M"])
    block_q = max(dims["G"], 1, _PER_THREAD * 32 * 4 // (block_m * 16))
    return {"BLOCK_Q": min(block_q, 16), "BLOCK_C": 16, "num_warps": 4, "num_stages": 1}


def _config(kernel: TunableKernel, dims: dict[str, int], device: torch.device) -> LaunchConfig:
    if interpreting():
        return kernel.default(dims)  # no tuning table applies to the CPU interpreter
    return tuned_config(kernel, dims, device)


def _random_problem(dims: dict[str, int], device: torch.device, dtype: torch.dtype):
    """Fresh inputs of the given dims, one sample, as the model would feed them
    (`kernels.shapes`): unit-norm rows at scale 100 and spatially coherent candidates, since the
    cache hit rate of the gathers depends on it. G = 4 gives window-shared inter-scale lists
    (M = 4k), G = 1 inner-scale ones (M = 5k)."""
    nq, m = dims["Nq"], dims["M"]
    block, per_match = ("inter", 4) if dims["G"] == WINDOW else ("inner", 5)
    if m % per_match:
        raise ValueError(f"dims M={m} is no multiple of {per_match} ({block}-scale candidates)")
    height = 2 ** ((nq.bit_length() - 1) // 2)  # a square-ish grid of about Nq tokens
    shape = AttentionShape(
        block,
        height,
        max(2, nq // height),
        cqk=dims["Cqk"],
        cp=dims["Cp"],
        cv=dims["Cv"],
        cw=dims["Cw"],
        k=m // per_match,
    )
    return make_problem(shape, 1, device=device, dtype=dtype)


def _launch_args(problem) -> dict:
    head = problem.positional()[:5]
    return {
        "args": (*head, problem.warp_values, candidate_indices(problem.candidates)),
        "window": window_shared_grid(problem.candidates),  # a CandidateList's own fact
        "scale": problem.shape.scale,
        "prune_scale": problem.shape.prune_scale,
        "warp_mode": _KEPT if problem.warp_values is not None else 0,
    }


def _forward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    problem = _random_problem(dims, device, dtype)
    x = _launch_args(problem)

    def run() -> object:
        return _launch_forward(
            *x["args"],
            window=x["window"],
            scale=x["scale"],
            prune_scale=x["prune_scale"],
            n_top=problem.shape.k,
            warp_mode=x["warp_mode"],
            save_scores=True,
            config=config,
        )

    return run


def _backward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    problem = _random_problem(dims, device, dtype)
    x = _launch_args(problem)
    common = {k: x[k] for k in ("window", "scale", "prune_scale", "warp_mode")}
    out, conf, _, warp, z, s = _launch_forward(
        *x["args"], n_top=0, save_scores=True, config=_default(dims), **common
    )
    dout, dconf = torch.randn_like(out), torch.randn_like(conf)
    dwarp = torch.randn_like(warp) if warp is not None else None

    def run() -> object:
        # The fp32 buffers are allocated and zeroed inside: that cost belongs to every backward.
        return _launch_backward(*x["args"], z, s, dout, dconf, dwarp, config=config, **common)

    return run


FORWARD = TunableKernel("candidate_fwd", _space, _default, _forward_runner)
BACKWARD = TunableKernel("candidate_bwd", _space, _default, _backward_runner)
TUNABLE: list[TunableKernel] = [FORWARD, BACKWARD]

# The sparse scales of deepfashion-256 (tokens, Cqk, Cp, Cv) and a small preset's channels; Cw 3.
MODEL_SIZES = sparse_scale_sizes("deepfashion-256")
SMALL_SIZES = [(4096, 48, 16, 32)]


def tuning_dims() -> list[dict[str, int]]:
    """The problems worth tuning: every sparse scale, inter-scale (M = 16, window-shared) and
    inner-scale (M = 20) candidates."""
    return [
        {"Nq": nq, "Cqk": cqk, "Cp": cp, "Cv": cv, "Cw": 3, "M": m, "G": group}
        for nq, cqk, cp, cv in MODEL_SIZES + SMALL_SIZES
        for m, group in ((16, WINDOW), (20, 1))
    ]


# Pointer element types that do not follow the input dtype ("idx" = the candidates' integer type).
_POINTER_TYPES = {
    "CAND": "idx",
    "TOPK": "i64",
    "Z": "fp32",
    "S": "fp32",
    "DK": "fp32",
    "DV": "fp32",
    "DKP": "fp32",
    "DWV": "fp32",
}
_FLOAT_ARGS = ("scale", "prune_scale")


def _parameters(fn: triton.JITFunction) -> list[tuple[str, bool]]:
    """(name, is_constexpr) of a kernel's parameters, read from the Python function itself so that
    it works on interpreted kernels too."""
    params = inspect.signature(fn.fn).parameters.values()
    return [(p.name, "constexpr" in str(p.annotation)) for p in params]


def _signature(fn: triton.JITFunction, dtype: str, index: str) -> dict[str, str]:
    """Argument types of a kernel for ahead-of-time compiles: upper-case names are pointers (or
    constexprs, by annotation), lower-case ones i32 sizes or fp32 scales."""
    sig = {}
    for name, is_constexpr in _parameters(fn):
        if is_constexpr:
            sig[name] = "constexpr"
        elif name.isupper():
            sig[name] = "*" + _POINTER_TYPES.get(name, dtype).replace("idx", index)
        else:
            sig[name] = "fp32" if name in _FLOAT_ARGS else "i32"
    return sig


def _divisibility_attrs(fn: triton.JITFunction, dims: dict[str, int]) -> dict:
    """The specialisation Triton's JIT applies at run time for these sizes: pointers (16-byte
    aligned allocations) and integer arguments divisible by 16 are marked so. Without it the
    gathers cannot be vectorised and a compile misjudges registers (see docs)."""
    nq, groups = dims["Nq"], dims["Nq"] // dims["G"]
    width = 2 ** ((nq.bit_length() - 1) // 2) if dims["G"] == WINDOW else 1
    values = {
        "Nq": nq,
        "Nk": nq,
        "n_cand": dims["M"],
        "Cqk": dims["Cqk"],
        "Cp": dims["Cp"],
        "Cv": dims["Cv"],
        "Cw": dims["Cw"],
        "n_groups": groups,
        "grid_w": width,
        "n_top": 4,
    }
    attrs = {}
    for i, (name, is_constexpr) in enumerate(_parameters(fn)):
        pointer = name.isupper() and not is_constexpr
        if pointer or values.get(name, 1) % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def aot_cases() -> list[AotCase]:
    """Every kernel x every config of its space x the model's sizes, as trained: bf16, int64
    candidates, warp over kept keys, scores saved for the backward. Sizes whose block sizes come
    out the same compile to the same kernel, so each distinct one is listed once, labelled with
    the sizes it stands for."""
    merged: dict[tuple, dict] = {}
    for dims in tuning_dims():
        for kernel in TUNABLE:
            fn = _candidate_fwd_kernel if kernel is FORWARD else _candidate_bwd_kernel
            flags = {"WARP_MODE": _KEPT}
            if kernel is FORWARD:
                flags["SAVE_SCORES"] = True
            for config in kernel.space(dims):
                constexprs = {**_constexprs(dims, config), **flags}
                attrs = _divisibility_attrs(fn, dims)
                key = (
                    kernel.name,
                    tuple(sorted(constexprs.items())),
                    config["num_warps"],
                    tuple(sorted(attrs)),
                )
                entry = merged.setdefault(
                    key,
                    {"fn": fn, "kernel": kernel, "config": config, "constexprs": constexprs},
                )
                entry.setdefault("sizes", []).append(f"{dims['Cqk']}/{dims['Cp']}/{dims['Cv']}")
                entry["default"] = entry.get("default", False) or config == kernel.default(dims)
                entry.setdefault("attrs", attrs)
                entry.setdefault("M", dims["M"])
    cases = []
    for entry in merged.values():
        config, constexprs = entry["config"], entry["constexprs"]
        label = (
            f"{entry['kernel'].name} M={entry['M']} G={constexprs['GROUP']} "
            f"Q{config['BLOCK_Q']} C{config['BLOCK_C']} Cqk/Cp/Cv={','.join(entry['sizes'])}"
        )
        cases.append(
            AotCase(
                label=label,
                module=__name__,
                function=entry["fn"].__name__,
                signature=_signature(entry["fn"], "bf16", "i64"),
                constexprs=constexprs,
                num_warps=config["num_warps"],
                num_stages=config["num_stages"],
                is_default=entry["default"],
                extra={"attrs": entry["attrs"]},
            )
        )
    return cases


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
        scale: float,
        prune_scale: float,
        n_top: int,
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
            n_top=n_top,
            warp_mode=warp_mode,
            save_scores=save,
        )
        if top is not None:
            ctx.mark_non_differentiable(top)
        if save:
            ctx.save_for_backward(q, k, v, q_prune, k_prune, warp_values, candidates, z, s)
        ctx.window, ctx.warp_mode = window, warp_mode
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
        )
        dtype = q.dtype
        need = ctx.needs_input_grad
        grads = (dq, dk.to(dtype), dv.to(dtype), dq_prune, dk_prune.to(dtype))
        grads = tuple(g if n else None for g, n in zip(grads, need[:5], strict=True))
        dwv = dwv.to(dtype) if dwv is not None and need[5] else None
        return (*grads, dwv, None, None, None, None, None, None)


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
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidate dynamic attention with the fused kernels: (out, conf, topk or None, warp or None),
    the semantics of `kernels.reference.reference_candidate_attention`. Inputs arrive validated by
    `kernels.ops` (one float dtype, candidates in range, CUDA or the interpreter). `window` is
    the grid of a window-shared inter-scale CandidateList (`kernels.candidates`), else None; a
    CandidateList given directly (benchmarks call this function) brings its own."""
    if isinstance(candidates, CandidateList):
        window = window or window_shared_grid(candidates)
        candidates = candidate_indices(candidates)
    nq = q.shape[1]
    if window is not None:
        height, width = window
        if height % 2 or width % 2 or height * width != nq:
            window = None  # a mark that does not describe these queries: treat lists as own
    warp_mode = WARP_MODE_IDS[warp_over] if warp_values is not None else 0
    out, conf, top, warp = _CandidateAttention.apply(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        q_prune.contiguous(),
        k_prune.contiguous(),
        warp_values.contiguous() if warp_values is not None else None,
        # int64 whatever was given: Triton 3.6 (PyTorch 2.11's) fails to compile these kernels
        # with int32 indices (a layout pass crashes), 3.9 does not; an int32 list is small.
        candidates.to(torch.int64).contiguous(),
        window,
        scale,
        prune_scale,
        topk,
        warp_mode,
    )
    return out, conf, top, warp
