"""The fused backend of candidate (sparse) dynamic attention: launch configurations, launchers and
the autograd.Function (the Triton kernels: `kernels.candidates.triton`).

A launch reads a candidate list, or derives each query's candidates in the kernel from the top-k a
`CandidateList` holds (`$DYNAST_CANDIDATES`, default "derived": no list is written or read). A
derived forward runs the gather kernel (`kernels.candidates.triton`) or, under
`$DYNAST_CANDIDATE_FORWARD=tile`, the query-tile kernel (`kernels.candidates.tile`); the backward
is the same after either.
Kernels never tune at run time: each launch reads its config from the tuning table
(`kernels.tuning.table.launch_config`).

File order: launch configs, launchers, the autograd.Function, the entry `attention`. The
autotuner's runners are in `kernels.candidates.tuning`, the ahead-of-time cases in
`kernels.candidates.aot`.
"""

from __future__ import annotations

import os

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import runtime
from ..call import WARP_MODE_IDS, AttentionInputs, AttentionSettings
from ..dense.fused import precision
from ..tuning.table import LaunchConfig, LaunchSpace, launch_config
from .lists import (
    PER_MATCH,
    CandidateList,
    candidate_indices,
    candidate_source,
    window_shared_grid,
)
from .tile import ABSENT, candidate_fwd_tile_kernel
from .triton import candidate_bwd_kernel, candidate_fwd_kernel

WINDOW = 4  # queries of a 2x2 window that share one inter-scale candidate list


# --------------------------------------------------------------------------------------------------
# Launchers: the launch configurations (search space, default, block sizes), then the launches
# --------------------------------------------------------------------------------------------------

# fp32 elements per thread in the largest live tile (queries x candidates x channels). The sweep
# in docs/kernels-candidates.md: 16 compiles without spills at every real size, also without
# divisibility hints; 32 and more spill in the backward of inner-scale candidates (n_cand = 20
# padded to 32). The space varies the tile's shape and the warp count around this budget.
_PER_THREAD = 16


def _dims(inputs: AttentionInputs, n_cand: int, group: int) -> dict[str, int]:
    """The shape key of a problem (bucketed by `kernels.tuning.table`; M is n_cand). A derived
    list has the key of the materialised one: both launch from the same space and share winners."""
    q, _, v, _, k_prune, warp_values = inputs
    return {
        "Nq": q.shape[1],
        "Cqk": q.shape[2],
        "Cp": k_prune.shape[2],
        "Cv": v.shape[2],
        "Cw": 0 if warp_values is None else warp_values.shape[2],
        "M": n_cand,
        "G": group,
    }


def block_sizes(dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
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
    blocks = block_sizes(dims, config)
    tile = blocks["BLOCK_G"] * blocks["GROUP"] * blocks["BLOCK_N"] * config["BLOCK_C"]
    return tile / (32 * config["num_warps"])


def fits(dims: dict[str, int], config: LaunchConfig) -> bool:
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
    return [c for c in configs if fits(dims, c)]


def _default(dims: dict[str, int]) -> LaunchConfig:
    """16 channels on 4 warps, as many queries as keep the tile at `_PER_THREAD` (8 for M = 16,
    4 for M = 20); at least one group, whatever the register cost, so any M launches."""
    block_n = triton.next_power_of_2(dims["M"])
    block_q = max(dims["G"], 1, _PER_THREAD * 32 * 4 // (block_n * 16))
    return {"BLOCK_Q": min(block_q, 16), "BLOCK_C": 16, "num_warps": 4, "num_stages": 1}


FORWARD = LaunchSpace("candidate_fwd", _space, _default)
BACKWARD = LaunchSpace("candidate_bwd", _space, _default)


# The query-tile forward (`kernels.candidates.tile`). A config is the tile (TILE_Y x TILE_X
# queries), BLOCK_U keys of the union staged per page, BLOCK_C channels per step of the score
# products (tl.dot: at least 16) and num_warps.
_TILE_CANDIDATES = (
    # (TILE_Y, TILE_X, BLOCK_U, BLOCK_C, num_warps), in order of preference
    (4, 4, 128, 16, 8),
    (4, 4, 64, 16, 4),
    (4, 4, 128, 16, 4),
    (4, 4, 64, 16, 8),
)
# Distinct keys per query a page holds at least, by G: on the benchmark's plausible correspondence
# (`kernels.shapes.plausible_topk`) the union of 99% of the inner-scale 4x4 tiles at 256x256 fits
# in 8 per query (128 keys), and every inter-scale tile in 4 (its four windows' 16 candidates).
_TILE_KEYS_PER_QUERY = {1: 8, WINDOW: 4}
# fp32 values per thread of the [Q, BLOCK_U] score tile, and of the gathered candidate rows
# [Q * N, channels] that set the value channels per gather step (BLOCK_DV, BLOCK_W).
_TILE_SCORES_PER_THREAD = 16
_TILE_GATHER_PER_THREAD = 8
_TILE_MAX_ROWS = 1024  # Q * N: the tile's (query, slot) pairs, sorted in registers


def tile_block_sizes(dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
    """Block sizes of one query-tile launch (`candidate_fwd_tile_kernel`)."""
    np2 = triton.next_power_of_2
    block_q = config["TILE_Y"] * config["TILE_X"]
    block_n = np2(dims["M"])
    rows = block_q * block_n
    gather = max(1, _TILE_GATHER_PER_THREAD * 32 * config["num_warps"] // rows)

    def gathered(channels: int) -> int:
        return min(gather, np2(max(channels, 1)))

    def dotted(channels: int) -> int:  # tl.dot takes at least 16
        return min(config["BLOCK_C"], max(16, np2(channels)))

    return {
        "TILE_Y": config["TILE_Y"],
        "TILE_X": config["TILE_X"],
        "BLOCK_Q": block_q,
        "BLOCK_N": block_n,
        "BLOCK_L": rows,
        "LOG_L": rows.bit_length() - 1,
        "BLOCK_U": config["BLOCK_U"],
        "BLOCK_D": dotted(dims["Cqk"]),
        "BLOCK_DP": dotted(dims["Cp"]),
        "BLOCK_DV": gathered(dims["Cv"]),
        "BLOCK_W": gathered(dims["Cw"]),
    }


def tile_fits(dims: dict[str, int], config: LaunchConfig) -> bool:
    """The pruning predicate of the query-tile space: the score tile within its register budget,
    the (query, slot) pairs within what the kernel sorts, whole 2x2 windows in a tile of
    inter-scale candidates, and a page between the usual union (`_TILE_KEYS_PER_QUERY`) and the
    most distinct keys the tile's lists can hold."""
    block_q = config["TILE_Y"] * config["TILE_X"]
    scores = block_q * config["BLOCK_U"] / (32 * config["num_warps"])
    rows = block_q * triton.next_power_of_2(dims["M"])
    windows = dims["G"] == 1 or (config["TILE_Y"] % 2 == 0 and config["TILE_X"] % 2 == 0)
    least = _TILE_KEYS_PER_QUERY.get(dims["G"], 8) * block_q
    most = max(16, triton.next_power_of_2(block_q // dims["G"] * dims["M"]))
    page = min(least, most) <= config["BLOCK_U"] <= most
    return scores <= _TILE_SCORES_PER_THREAD and rows <= _TILE_MAX_ROWS and windows and page


def _tile_space(dims: dict[str, int]) -> list[LaunchConfig]:
    configs = [
        {"TILE_Y": ty, "TILE_X": tx, "BLOCK_U": bu, "BLOCK_C": bc, "num_warps": nw,
         "num_stages": 1}
        for ty, tx, bu, bc, nw in _TILE_CANDIDATES
    ]  # fmt: skip
    return [c for c in configs if tile_fits(dims, c)]


def _tile_default(dims: dict[str, int]) -> LaunchConfig:
    """The first config of the space: inner-scale, a 4x4 tile with 128 keys per page on 8 warps;
    inter-scale, 64 keys per page on 4 warps (the first candidate where nothing fits: such
    problems run the gather forward, see `tile_applies`)."""
    space = _tile_space(dims)
    ty, tx, bu, bc, nw = _TILE_CANDIDATES[0]
    first = {"TILE_Y": ty, "TILE_X": tx, "BLOCK_U": bu, "BLOCK_C": bc, "num_warps": nw,
             "num_stages": 1}  # fmt: skip
    return space[0] if space else first


FORWARD_TILE = LaunchSpace("candidate_fwd_tile", _tile_space, _tile_default)


DERIVE_CODES = {"inner": 1, "inter": 2}  # the kernels' DERIVE flag; 0: the list is read


def _index_args(
    candidates: Tensor | CandidateList,
) -> tuple[Tensor, int, int, int, int, tuple[int, int] | None]:
    """(index, n_cand, n_src, src_k, DERIVE, grid) of a launch: a plain list [B, Nq, M] is read
    (DERIVE 0); a CandidateList's candidates are derived in the kernel from the top-k
    [B, n_src, k] it holds (`kernels.candidates.lists.candidate_source`), on its query grid."""
    if not isinstance(candidates, CandidateList):
        return candidates, candidates.shape[2], 1, 1, 0, None
    kind, top = candidate_source(candidates)
    n_cand = PER_MATCH[kind] * top.shape[2]
    return top, n_cand, top.shape[1], top.shape[2], DERIVE_CODES[kind], candidates.grid


def _geometry(
    nq: int, window: tuple[int, int] | None, grid: tuple[int, int] | None
) -> tuple[int, int, int, int]:
    """(group size, groups per sample, grid width, grid height): windows of 4 queries when the
    candidates are window-shared, else single queries. The grid is the query grid where the
    kernel needs it (windows, derivation); 1 x 1 otherwise."""
    if grid is not None:
        height, width = grid
    elif window is not None:
        height, width = window
    else:
        height = width = 1
    if window is None:
        return 1, nq, width, height
    return WINDOW, (height // 2) * (width // 2), width, height


def _plan(
    kernel: LaunchSpace,
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
    window: tuple[int, int] | None,
    config: LaunchConfig | None,
) -> tuple[list[Tensor], list[int], int, LaunchConfig, dict[str, int], tuple[int, int]]:
    """What both launchers work out alike: the input pointers (a stand-in for no warp values,
    whose uses WARP_MODE compiles away), the sizes the kernels take after the outputs, n_cand,
    the config (`config`, else the tuned one), its block sizes and the grid."""
    q, k, v, q_prune, k_prune, warp_values = inputs
    b, nq, _ = q.shape
    cand, n_cand, n_src, src_k, derive, derive_grid = _index_args(candidates)
    cw = warp_values.shape[2] if warp_values is not None else 0
    group, n_groups, grid_w, grid_h = _geometry(nq, window, derive_grid)
    dims = _dims(inputs, n_cand, group)
    config = config or launch_config(kernel, dims, q.device, q.dtype)
    blocks = block_sizes(dims, config) | {"DERIVE": derive}
    pointers = [q, k, v, q_prune, k_prune, warp_values if warp_values is not None else v, cand]
    sizes = [nq, k.shape[1], n_cand, q.shape[2], q_prune.shape[2], v.shape[2], cw, n_groups]
    sizes += [grid_w, grid_h, n_src, src_k]
    return pointers, sizes, n_cand, config, blocks, (triton.cdiv(n_groups, blocks["BLOCK_G"]), b)


def launch_forward(
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
    *,
    window: tuple[int, int] | None,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_mode: int,
    save_scores: bool,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Runs the forward kernel on contiguous inputs; returns (out, conf, topk, warp, z, s).
    `candidates`: the list [B, Nq, M] read, or a CandidateList whose candidates the kernel
    derives (`_index_args`); `window` the grid whose 2x2 windows share one list, or None."""
    pointers, sizes, n_cand, config, blocks, grid = _plan(
        FORWARD, inputs, candidates, window, config
    )
    q, cw = inputs.q, sizes[6]
    b, nq, dev, dtype = q.shape[0], q.shape[1], q.device, q.dtype
    out = runtime.empty((b, nq, inputs.v.shape[2]), dtype, dev)
    conf = runtime.empty((b, nq), dtype, dev)
    top = runtime.empty((b, nq, topk), torch.int64, dev) if topk else None
    warp = runtime.empty((b, nq, cw), dtype, dev) if warp_mode else None
    z = s = None
    if save_scores:
        z = runtime.empty((b, nq, n_cand), torch.float32, dev)
        s = runtime.empty((b, nq, n_cand), torch.float32, dev)
    # Unused pointers get any tensor: the constexpr flags compile their uses away.
    stand_in = [top, pointers[-1]], [warp, out], [z, out], [s, out]
    candidate_fwd_kernel[grid](
        *pointers,
        out,
        conf,
        *(x if x is not None else other for x, other in stand_in),
        *sizes,
        topk,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode,
        SAVE_SCORES=save_scores,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return out, conf, top, warp, z, s


def _tile_dims(inputs: AttentionInputs, candidates: CandidateList) -> dict[str, int]:
    kind, top = candidate_source(candidates)
    group = WINDOW if kind == "inter" else 1
    return _dims(inputs, PER_MATCH[kind] * top.shape[2], group)


def tile_applies(inputs: AttentionInputs, candidates: Tensor | CandidateList) -> bool:
    """Whether the query-tile forward runs this call: candidates derived from a CandidateList (it
    needs their grid), a launch config that fits its lists (every model size; `tile_fits`),
    every key token below the sort's end marker, and no bf16 on the interpreter (whose `tl.dot`
    is wrong for bf16)."""
    if not isinstance(candidates, CandidateList):
        return False
    if runtime.interpreting() and inputs.q.dtype == torch.bfloat16:
        return False
    return inputs.k.shape[1] < ABSENT and bool(_tile_space(_tile_dims(inputs, candidates)))


def launch_forward_tile(
    inputs: AttentionInputs,
    candidates: CandidateList,
    *,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_mode: int,
    save_scores: bool,
    config: LaunchConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """The query-tile forward (`candidate_fwd_tile_kernel`) on contiguous inputs, candidates
    derived from the CandidateList's top-k: the same (out, conf, topk, warp, z, s) as
    `launch_forward`, z and s laid out for `launch_backward`."""
    if not tile_applies(inputs, candidates):
        raise ValueError(
            "the query-tile forward takes a CandidateList (candidates derived in the kernel) of "
            f"at most {_TILE_MAX_ROWS // 16} candidates per query, fewer than {ABSENT} keys, and "
            "no bf16 under the interpreter"
        )
    q, k, v, q_prune, k_prune, warp_values = inputs
    b, nq, dev, dtype = q.shape[0], q.shape[1], q.device, q.dtype
    top_src, n_cand, n_src, src_k, derive, (height, width) = _index_args(candidates)
    cw = warp_values.shape[2] if warp_values is not None else 0
    dims = _tile_dims(inputs, candidates)
    config = config or launch_config(FORWARD_TILE, dims, dev, dtype)
    blocks = tile_block_sizes(dims, config)
    out = runtime.empty((b, nq, v.shape[2]), dtype, dev)
    conf = runtime.empty((b, nq), dtype, dev)
    top = runtime.empty((b, nq, topk), torch.int64, dev) if topk else None
    warp = runtime.empty((b, nq, cw), dtype, dev) if warp_mode else None
    z = s = None
    if save_scores:
        z = runtime.empty((b, nq, n_cand), torch.float32, dev)
        s = runtime.empty((b, nq, n_cand), torch.float32, dev)
    grid = (triton.cdiv(height, config["TILE_Y"]) * triton.cdiv(width, config["TILE_X"]), b)
    # Unused pointers get any tensor: the constexpr flags compile their uses away.
    stand_in = [top, top_src], [warp, out], [z, out], [s, out]
    candidate_fwd_tile_kernel[grid](
        q, k, v, q_prune, k_prune, warp_values if warp_values is not None else v, top_src,
        out, conf, *(x if x is not None else other for x, other in stand_in),
        nq, k.shape[1], n_cand, q.shape[2], q_prune.shape[2], v.shape[2], cw, width, height,
        n_src, src_k, topk, scale, prune_scale,
        **blocks,
        WARP_MODE=warp_mode,
        SAVE_SCORES=save_scores,
        DERIVE=derive,
        PRECISION=precision(dtype),
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    return out, conf, top, warp, z, s


def launch_backward(
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
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
    scattered ones still in their fp32 accumulation buffers. `candidates` and `window` as in
    `launch_forward`."""
    pointers, sizes, _, config, blocks, grid = _plan(BACKWARD, inputs, candidates, window, config)
    q, k, v, q_prune, k_prune, warp_values = inputs
    dq = runtime.empty(q.shape, q.dtype, q.device)
    dq_prune = runtime.empty(q_prune.shape, q_prune.dtype, q.device)
    # Atomically accumulated: fp32, zeroed before every launch.
    dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
    dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
    dk_prune = torch.zeros(k_prune.shape, device=q.device, dtype=torch.float32)
    dwv = None
    if warp_values is not None:
        dwv = torch.zeros(warp_values.shape, device=q.device, dtype=torch.float32)
    candidate_bwd_kernel[grid](
        *pointers,
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
        *sizes,
        scale,
        prune_scale,
        **blocks,
        WARP_MODE=warp_mode if dwarp is not None else 0,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )
    return dq, dk, dv, dq_prune, dk_prune, dwv


# --------------------------------------------------------------------------------------------------
# Autograd and the fused backend's entry
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
        candidates: Tensor | CandidateList,
        window: tuple[int, int] | None,
        scale: float,
        prune_scale: float,
        topk: int,
        warp_mode: int,
        tile: bool,
    ):
        inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
        save = any(ctx.needs_input_grad[:6])
        options = dict(scale=scale, prune_scale=prune_scale, topk=topk, warp_mode=warp_mode)
        if tile:
            out, conf, top, warp, z, s = launch_forward_tile(
                inputs, candidates, **options, save_scores=save
            )
        else:
            out, conf, top, warp, z, s = launch_forward(
                inputs, candidates, window=window, **options, save_scores=save
            )
        if top is not None:
            ctx.mark_non_differentiable(top)
        if save:
            listed = candidates if isinstance(candidates, Tensor) else None
            ctx.save_for_backward(*inputs, listed, z, s)
            # A CandidateList is immutable: kept as it is, for the backward to derive again.
            ctx.derived = candidates if listed is None else None
        ctx.window, ctx.warp_mode = window, warp_mode
        ctx.scale, ctx.prune_scale = scale, prune_scale
        return out, conf, top, warp

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable  # the kernels are not themselves differentiable: say so, not silently 0
    def backward(ctx, dout: Tensor, dconf: Tensor, _dtop: Tensor | None, dwarp: Tensor | None):
        *saved, listed, z, s = ctx.saved_tensors
        inputs = AttentionInputs(*saved)
        q, warp_values = inputs.q, inputs.warp_values
        if dwarp is None and warp_values is not None:
            dwarp = torch.zeros(q.shape[0], q.shape[1], warp_values.shape[2], device=q.device)
        dq, dk, dv, dq_prune, dk_prune, dwv = launch_backward(
            inputs,
            ctx.derived if listed is None else listed,
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


FORWARD_ENV = "DYNAST_CANDIDATE_FORWARD"
FORWARD_KERNELS = ("gather", "tile")


def forward_kernel() -> str:
    """Which forward runs derived candidates, `$DYNAST_CANDIDATE_FORWARD`: "gather" (the default:
    `candidate_fwd_kernel`, each query gathers its candidates' rows) or "tile" (the query-tile
    kernel, `candidate_fwd_tile_kernel`, each distinct key loaded once per tile of queries)."""
    value = os.environ.get(FORWARD_ENV, "gather").strip().lower() or "gather"
    if value not in FORWARD_KERNELS:
        raise ValueError(f"${FORWARD_ENV}={value!r}: expected one of {', '.join(FORWARD_KERNELS)}")
    return value


def attention(
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
    settings: AttentionSettings,
    *,
    window: tuple[int, int] | None = None,
    derive: bool | None = None,
    tile: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidate dynamic attention with the fused kernels: (out, conf, topk or None, warp or None),
    the semantics of the reference, `reference_candidate_attention`. Inputs arrive validated by
    `kernels.candidates.op` (one float dtype, candidates in range, CUDA or the interpreter).
    `window` is the grid of a window-shared inter-scale CandidateList, else None; a CandidateList
    given directly (benchmarks call this function) brings its own.

    A CandidateList's candidates are derived in the kernel from the top-k it holds when `derive`
    is True, or when it is None and `candidate_mode()` says "derived" (the default); otherwise
    its list is built (once) and read. A plain tensor is always read. Indices are read as given,
    int32 or int64.

    Derived candidates run the query-tile forward when `tile` is True, or when it is None and
    `forward_kernel()` says "tile", wherever `tile_applies` (else the gather forward)."""
    if derive is None:
        derive = candidate_mode() == "derived"
    if isinstance(candidates, CandidateList):
        window = window or window_shared_grid(candidates)
        if not derive:
            candidates = candidate_indices(candidates).contiguous()
    else:
        candidates = candidates.contiguous()
    nq = inputs.q.shape[1]
    if window is not None:
        height, width = window
        if height % 2 or width % 2 or height * width != nq:
            window = None  # a mark that does not describe these queries: treat lists as own
    if isinstance(candidates, CandidateList):
        height, width = candidates.grid
        if height * width != nq:
            raise ValueError(
                f"candidates were built for a {height}x{width} grid, but q holds Nq = {nq} queries"
            )
    warp_mode = WARP_MODE_IDS[settings.warp_over] if inputs.warp_values is not None else 0
    scales = (settings.scale, settings.prune_scale)
    if tile is None:
        tile = forward_kernel() == "tile"
    tile = tile and tile_applies(inputs, candidates)
    out, conf, top, warp = _CandidateAttention.apply(
        *inputs.map(Tensor.contiguous), candidates, window, *scales, settings.topk, warp_mode, tile
    )
    return out, conf, top, warp
