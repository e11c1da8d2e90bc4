"""The query-tile forward kernel of candidate attention: one program owns a TILE_Y x TILE_X tile
of neighbouring queries, loads each distinct candidate key of the tile once, and scores all of
the tile's queries against them.

Same specification and outputs as `candidate_fwd_kernel` (`kernels.candidates.triton`), for
candidates derived in the kernel from the previous top-k (DERIVE 1 inner, 2 inter). Design notes:
docs/kernels-candidates.md, "Query tiles". Per program:

1. Each query derives its candidate tokens cand [Q, N] (Q = TILE_Y * TILE_X queries, N slots).
2. The union: the tile's L = Q * N tokens sorted (`_sorted`, a bitonic network), the first of
   each run of equal tokens marked and counted (`tl.cumsum`): the union [L] lists the distinct
   tokens in ascending order, and each (query, slot) gets its token's index in it (binary
   searches, `_lower_bound`, one `tl.gather` per halving).
3. The union is staged in pages of BLOCK_U keys. One page holds the whole union of nearly every
   tile of a smooth correspondence field at the shipped sizes; a tile with more distinct keys
   loops over further pages, each key loaded once all the same, so every union is exact and only
   the cost grows.
4. Scores: per page, the keys' rows of K and K_prune are loaded once, chunk by chunk, and every
   query of the tile is scored against every key of the page with `tl.dot` ([Q, BLOCK_U], fp32
   accumulation); each candidate's score is gathered from that tile by its index. From there on
   the kernel works on candidate rows [Q, 1, N] with the per-query kernel's helpers (top-k,
   softmax, mask, warp weights).
5. Outputs: per chunk of value (warp) channels and per page, the page's rows of V (W) are loaded
   once ([BLOCK_U, C]) and each candidate's row is gathered from them through shared memory,
   weighted and summed per query.

The forward saves z and s in the per-query kernel's layout, so the per-query backward
(`candidate_bwd_kernel`) runs unchanged after it. Shape comments: Q queries of the tile, N
candidate slots, L = Q * N, U keys of a page, C channels of one chunk.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..dense.tiles import row_dots
from .triton import derived_candidates, masked_softmax, warp_weights

# The token of an absent (query, slot) pair: sorts after every key (the launcher keeps Nk below).
ABSENT = tl.constexpr(2**30)


@triton.jit
def _store_topk(z, valid, cand, j, q_row, q_ok, TOPK, top_k, BLOCK_N: tl.constexpr):
    """Writes TOPK[q_row, :top_k], the keys cand [G, N] of the top_k largest scores z [G, A, N]
    (`valid` ones), exactly as `candidate_fwd_kernel` selects them: repeated max-and-mask, equal
    scores to the lower candidate position (the reference's stable sort; duplicated candidates
    score exactly equal), a NaN ranking as -inf, `taken` (not the score) marking picks so that
    -inf ties resolve too. The gather kernel keeps its own inline copy of these lines: behind a
    call, its inner-scale default compiles to 64 registers and 8 bytes of stack at sm_90 instead
    of 68 and none."""
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


@triton.jit
def _sorted(x, LOG: tl.constexpr):
    """x [2**LOG] in ascending order: a bitonic network on the [2] * LOG hypercube, each
    compare-exchange a min and a max over one size-2 axis (`tl.sort` exchanges through an xor
    reduction with a user-defined combine, which the interpreter runs element by element; and
    no nested jit call here, as each costs the interpreter a patch of triton.language)."""
    h = tl.reshape(x, [2] * LOG)
    for stage in tl.static_range(1, LOG + 1):
        # Blocks of 2**stage alternate ascending / descending until the last stage.
        if stage < LOG:
            block = tl.reshape(tl.arange(0, 2), [1] * (LOG - stage - 1) + [2] + [1] * stage)
        else:
            block = tl.zeros([1] * LOG, dtype=tl.int32)
        # Exchanges along hypercube axis stage - 1 - i counted from the innermost, i.e. axis
        # LOG - stage + i. (Constexpr arithmetic stays inline: a name assigned in the loop would
        # become a tensor.)
        for i in tl.static_range(stage):
            right = tl.reshape(
                tl.arange(0, 2), [1] * (LOG - stage + i) + [2] + [1] * (stage - 1 - i)
            )
            lo = tl.min(h, LOG - stage + i, keep_dims=True)
            hi = tl.max(h, LOG - stage + i, keep_dims=True)
            h = tl.where((block ^ right) != 0, hi, lo)
    return tl.reshape(h, [2**LOG])


@triton.jit
def _lower_bound(arr, x, LOG: tl.constexpr):
    """Per element of x, how many elements of the ascending arr (2**LOG of them) are below it: a
    branch-free binary search, one gather per halving."""
    pos = tl.zeros_like(x)
    for i in tl.static_range(LOG):
        probe = tl.gather(arr, pos + ((1 << (LOG - 1 - i)) - 1), 0)
        pos = tl.where(probe < x, pos + (1 << (LOG - 1 - i)), pos)
    probe = tl.gather(arr, pos, 0)
    return tl.where(probe < x, pos + 1, pos)


@triton.jit
def _tile_union(cand, c_ok, BLOCK_L: tl.constexpr, LOG_L: tl.constexpr):
    """The tile's distinct candidate tokens: the union [L] in ascending order (entries from the
    count on are padding), their count, and each (query, slot)'s index in the union [Q, N]
    (garbage where absent)."""
    flat = tl.reshape(tl.where(c_ok, cand, ABSENT), [BLOCK_L])
    tokens = _sorted(flat, LOG_L)
    i = tl.arange(0, BLOCK_L)
    prev = tl.gather(tokens, tl.maximum(i - 1, 0), 0)
    first = ((i == 0) | (tokens != prev)) & (tokens != ABSENT)
    ends = tl.cumsum(first.to(tl.int32), 0)  # distinct tokens up to each position
    # Distinct token u sits where `ends` first reaches u + 1; a token's index is `ends` - 1 at
    # its first position.
    union = tl.gather(tokens, tl.minimum(_lower_bound(ends, i + 1, LOG_L), BLOCK_L - 1), 0)
    at = tl.minimum(_lower_bound(tokens, flat, LOG_L), BLOCK_L - 1)
    slot = tl.gather(ends, at, 0) - 1
    return union, tl.max(ends, 0), tl.reshape(slot, cand.shape)


@triton.jit
def _page(union, n_unique, slot, c_ok, page, b, Nk, BLOCK_U: tl.constexpr):
    """Page `page` of the union: its key rows [U] (int64, from the batch's first key) and which
    exist, and for every (query, slot) its index among them (clamped into the page) and whether
    its key is on this page."""
    u = page * BLOCK_U + tl.arange(0, BLOCK_U)
    key_ok = u < n_unique
    key = tl.where(key_ok, tl.gather(union, tl.minimum(u, union.shape[0] - 1), 0), 0)
    local = slot - page * BLOCK_U
    here = c_ok & (local >= 0) & (local < BLOCK_U)
    local = tl.minimum(tl.maximum(local, 0), BLOCK_U - 1)
    return b * Nk + key.to(tl.int64), key_ok, local, here


@triton.jit
def _staged(x, at):
    """x gathered at the flat positions `at` (any shape): x is flattened first, so the gather
    spans every warp and goes through shared memory. (Gathering along one axis of a 2-D tile lets
    Triton lay it out warp by warp and gather with shuffles: some 50-120 registers more here, and
    an assertion in Triton 3.6 for some shapes.)"""
    flat = tl.reshape(x, [x.numel])
    return tl.reshape(tl.gather(flat, tl.reshape(at, [at.numel]), 0), at.shape)


@triton.jit
def _page_scores(
    z, s, Q, K, QP, KP, q_row, q_ok, key_row, key_ok, local, here, Cqk, Cp, scale, prune_scale,
    BLOCK_Q: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DP: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """z and s [Q, N] with the scores of the candidates on this page filled in: every query of the
    tile against every key of the page by `tl.dot` ([Q, U], fp32), then gathered by slot."""
    at = tl.arange(0, BLOCK_Q)[:, None] * BLOCK_U + local
    zu = row_dots(Q, q_row, q_ok, Cqk, K, key_row, key_ok, Cqk, Cqk,
                  BLOCK_Q, BLOCK_U, BLOCK_D, PRECISION)  # fmt: skip
    z = tl.where(here, scale * _staged(zu, at), z)
    su = row_dots(QP, q_row, q_ok, Cp, KP, key_row, key_ok, Cp, Cp,
                  BLOCK_Q, BLOCK_U, BLOCK_DP, PRECISION)  # fmt: skip
    return z, tl.where(here, prune_scale * _staged(su, at), s)


@triton.jit
def _weighted_pages(
    weights, Y, OUT, q_row, q_ok, union, n_unique, n_pages, slot, c_ok, b, Nk, C,
    BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """OUT[q_row] = sum_j weights[q, j] Y[cand[q, j]] (weights [Q, N] fp32), chunk by chunk over
    C: per page, the page's rows are loaded once ([U, C]) and gathered per candidate."""
    out_at = q_row[:, None] * C
    cols = tl.arange(0, BLOCK_C)
    for c0 in range(0, C, BLOCK_C):
        c_in = (c0 + cols < C)[None, :]
        o = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        for page in range(0, n_pages):
            key_row, key_ok, local, here = _page(union, n_unique, slot, c_ok, page, b, Nk, BLOCK_U)
            y = tl.load(
                Y + key_row[:, None] * C + (c0 + cols)[None, :],
                mask=key_ok[:, None] & c_in,
                other=0.0,
            )  # [U, C]
            rows = _staged(y, local[:, :, None] * BLOCK_C + cols[None, None, :])  # [Q, N, C]
            w = tl.where(here, weights, 0.0)
            o += tl.sum(w[:, :, None] * rows.to(tl.float32), axis=1)
        tl.store(OUT + out_at + (c0 + cols)[None, :], o, mask=q_ok[:, None] & c_in)


@triton.jit
def candidate_fwd_tile_kernel(
    Q,
    K,
    V,
    QP,
    KP,
    WV,
    SRC,
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
    grid_w,
    grid_h,
    n_src,
    src_k,
    top_k,
    scale,
    prune_scale,
    TILE_Y: tl.constexpr,
    TILE_X: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    LOG_L: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DP: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_W: tl.constexpr,
    WARP_MODE: tl.constexpr,
    SAVE_SCORES: tl.constexpr,
    DERIVE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Grid (tiles, B), tiles row-major over the grid_h x grid_w query grid. BLOCK_Q = TILE_Y *
    TILE_X, BLOCK_L = BLOCK_Q * BLOCK_N = 2**LOG_L. SRC is the previous top-k the candidates
    derive from (`derived_candidates`)."""
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    tiles_w = tl.cdiv(grid_w, TILE_X)
    a = tl.arange(0, BLOCK_Q)
    y = (pid_t // tiles_w) * TILE_Y + a // TILE_X
    x = (pid_t % tiles_w) * TILE_X + a % TILE_X
    q_ok = (y < grid_h) & (x < grid_w)
    tok = y * grid_w + x
    q_row = b * Nq + tok.to(tl.int64)
    j = tl.arange(0, BLOCK_N)
    c_ok = q_ok[:, None] & (j < n_cand)[None, :]
    cand = derived_candidates(SRC, b, tok, c_ok, j, n_src, src_k, grid_h, grid_w, DERIVE)

    union, n_unique, slot = _tile_union(cand, c_ok, BLOCK_L, LOG_L)
    n_pages = tl.cdiv(n_unique, BLOCK_U)

    z = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    s = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    for page in range(0, n_pages):
        key_row, key_ok, local, here = _page(union, n_unique, slot, c_ok, page, b, Nk, BLOCK_U)
        z, s = _page_scores(
            z, s, Q, K, QP, KP, q_row, q_ok, key_row, key_ok, local, here, Cqk, Cp, scale,
            prune_scale, BLOCK_Q, BLOCK_U, BLOCK_D, BLOCK_DP, PRECISION,
        )  # fmt: skip
    if SAVE_SCORES:
        at = q_row[:, None] * n_cand + j[None, :]
        tl.store(Z + at, z, mask=c_ok)
        tl.store(S + at, s, mask=c_ok)

    # Candidate rows [Q, 1, N] from here on: the per-query kernel's helpers, unchanged.
    z3, s3, valid = z[:, None, :], s[:, None, :], c_ok[:, None, :]
    _store_topk(z3, valid, cand, j, q_row[:, None], q_ok[:, None], TOPK, top_k, BLOCK_N)
    if WARP_MODE != 0:
        w = tl.reshape(warp_weights(z3, s3, valid, WARP_MODE), [BLOCK_Q, BLOCK_N])
    pm = tl.where(s3 > 0, masked_softmax(z3, valid), 0.0)
    tl.store(CONF + q_row[:, None], tl.sum(pm, axis=2), mask=q_ok[:, None])
    pm = tl.reshape(pm, [BLOCK_Q, BLOCK_N])

    pages = (union, n_unique, n_pages, slot, c_ok, b, Nk)
    _weighted_pages(pm, V, OUT, q_row, q_ok, *pages, Cv, BLOCK_Q, BLOCK_N, BLOCK_U, BLOCK_DV)
    if WARP_MODE != 0:
        _weighted_pages(w, WV, WARP, q_row, q_ok, *pages, Cw, BLOCK_Q, BLOCK_N, BLOCK_U, BLOCK_W)
