"""The Triton kernels of candidate (sparse) dynamic attention, forward and backward.

Specification: `kernels.candidates.reference` (docs/method.md section 4). Design notes:
docs/kernels-candidates.md. Sizes and block names: the `kernels` package docstring. In short:

- A program owns a tile of query *groups*. A group is one query (general candidates) or the four
  queries of a 2x2 window (inter-scale candidates, which those four share). A group has one
  candidate list of n_cand keys; the kernel reads the list (or derives it from the previous top-k,
  DERIVE) and gathers the keys' rows of K, K_prune, V and the warp values itself, channel chunk by
  channel chunk, so no (queries x n_cand x channels) tensor ever reaches device memory. Scores are
  fp32 and the whole row of n_cand scores stays in registers, so softmax, mask, top-k and the warp
  softmax need no second pass.
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
N candidate slots (BLOCK_N), C channels of one chunk. The launchers: `kernels.candidates.fused`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..dense.tiles import warp_z_part


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
def derived_candidates(SRC, b, lead, c_ok, j, n_src, src_k, grid_h, grid_w, DERIVE: tl.constexpr):
    """Candidate key tokens [G, N] (int32) of the groups whose list belongs to token `lead` [G],
    computed from the previous top-k SRC [B, n_src, src_k] in the order of the builders
    (`kernels.candidates.lists`), on the grid_h x grid_w grid:

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
    (`derived_candidates`; grid_h x grid_w is the query grid)."""
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
        cand = derived_candidates(CAND, b, lead, c_ok, j, n_src, src_k, grid_h, grid_w, DERIVE)
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
    # offsets when they are expanded inside several loops: see `derived_candidates`).
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
def masked_softmax(z, valid):
    """Softmax over the last axis restricted to `valid`; rows without a valid entry give zeros."""
    z = tl.where(valid, z, float("-inf"))
    top = tl.max(z, axis=2)
    top = tl.where(top == float("-inf"), 0.0, top)  # rows of absent queries: no NaN
    e = tl.where(valid, tl.exp(z - top[:, :, None]), 0.0)
    total = tl.sum(e, axis=2)
    return e / tl.where(total > 0, total, 1.0)[:, :, None]


@triton.jit
def warp_weights(z, s, valid, WARP_MODE: tl.constexpr):
    """Softmax of z over the kept (1) or all (3) candidates, kept falling back to all when none is
    kept; "pruned" (2) is the release's formula: kept scores filled with -1e4, softmax over all,
    so a query keeping every candidate gets their uniform mean. No gradient flows through the
    selection or the fill (`warp_z_part`)."""
    kept = s > 0
    if WARP_MODE == 2:
        # exp(-1e4 - max) is exactly 0 in fp32 beside any pruned score above -9,897, so the
        # filled keys weigh 0 unless every key is kept; then all scores are equal: uniform.
        sel = valid & (kept == 0)
        flat = (tl.max(sel.to(tl.int32), axis=2) == 0)[:, :, None]
        return masked_softmax(tl.where(flat, 0.0, z), sel | (valid & flat))
    if WARP_MODE == 1:
        sel = valid & kept
    else:
        sel = valid
    found = tl.max(sel.to(tl.int32), axis=2) > 0
    sel = sel | (valid & (found == 0)[:, :, None])
    return masked_softmax(z, sel)


@triton.jit
def candidate_fwd_kernel(
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
        w = warp_weights(z, s, valid, WARP_MODE)
    pm = tl.where(s > 0, masked_softmax(z, valid), 0.0)
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
def candidate_bwd_kernel(
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
        w = warp_weights(z, s, valid, WARP_MODE)
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
        dz = warp_z_part(w * (gw - tl.sum(w * gw, axis=2)[:, :, None]), s, WARP_MODE)

    p = masked_softmax(z, valid)
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
