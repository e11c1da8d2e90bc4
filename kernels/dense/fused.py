"""The fused backend of dense dynamic attention: launch configurations, launchers, the tiled and
streamed backwards, and the autograd.Function (the Triton kernels: `kernels.dense.triton`).

The default backward is tiled: one kernel recomputes each (queries x keys) score tile once and
writes the tiles every gradient is a product of (bounded scratch, chunks of keys), and batched
matrix products finish the gradients. The streamed backward (`DYNAST_DENSE_BACKWARD=streamed`,
no scratch) launches one kernel per side. Kernels never tune at run time: each launch reads its
config from the tuning table (`kernels.tuning.table.launch_config`).

File order: launch configs, launchers, the autograd.Function, the entry `attention`. The
autotuner's runners are in `kernels.dense.tuning`, the ahead-of-time cases in `kernels.dense.aot`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import runtime
from ..call import WARP_MODE_IDS, AttentionInputs, AttentionSettings
from ..tuning.table import LaunchConfig, LaunchSpace, launch_config
from .triton import (
    dense_bwd_key_kernel,
    dense_bwd_query_kernel,
    dense_bwd_tile_kernel,
    dense_fwd_kernel,
)

# The largest top-k the fused dense forward takes. Its running list is BLOCK_K = next_pow2(k)
# wide, merged by k serial rounds per key tile; k = 8, 16 and 32 are in the AOT report at the
# model's dense size (`kernels.dense.aot`); some combinations spill a few bytes
# (docs/kernels-dense.md).
TOPK_MAX = 32
# The input gradients, in the order of the inputs (q, k, v, q_prune, k_prune, warp_values).
GRADIENT_NAMES = ("dq", "dk", "dv", "dq_prune", "dk_prune", "dwarp_values")


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
#   `kernels.dense.aot.AOT_DIMS`, with bf16 and with fp32 inputs (`python -m kernels.aot`;
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
# Which backward runs: "tiled" (default: `dense_bwd_tile_kernel` plus matrix products, bounded
# scratch) or "streamed" (`dense_bwd_query_kernel` and `dense_bwd_key_kernel`: no scratch at
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


def precision(dtype: torch.dtype) -> str:
    # fp32 inputs get fp32 products: tf32 would lose the accuracy the reference promises.
    return "ieee" if dtype == torch.float32 else "tf32"


def block_sizes(kernel: str, dims: dict[str, int], config: LaunchConfig) -> dict[str, int]:
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
    meta = block_sizes(kernel, dims, config)
    return {name: meta.get(name, value) for name, value in config.items()}


def _fits(kernel: str, dims: dict[str, int], config: LaunchConfig) -> bool:
    """Estimate of a config's needs with 16-bit inputs: the fp32 tiles live per thread (the
    accumulator and about four score-sized tiles: z, s, p, g) and the operand tiles in shared
    memory. A coarse filter; `python -m kernels.aot` gives the real numbers."""
    meta = block_sizes(kernel, dims, config)
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


def _channels_contiguous(x: Tensor) -> Tensor:
    """The kernels take batch and token strides but assume contiguous channels (vector loads)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _dims(inputs: AttentionInputs, topk: int) -> dict[str, int]:
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


def _input_args(inputs: AttentionInputs) -> list:
    """The six input pointers, then their batch and token strides (a stand-in for no warp)."""
    q, *_, warp_values = inputs
    pointers = [*inputs[:5], q if warp_values is None else warp_values]
    strides = []
    for x in inputs:
        strides += [0, 0] if x is None else [x.stride(0), x.stride(1)]
    return [*pointers, *strides]


def launch_forward(
    inputs: AttentionInputs,
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
    meta = block_sizes("dense_fwd", dims, config)
    grid = (triton.cdiv(nq, meta["BLOCK_M"]), triton.cdiv(cv, meta["BLOCK_V"]), b)
    args = _input_args(inputs)
    dense_fwd_kernel[grid](
        *args[:6],
        res["out"], res["conf"], out_args[0], out_args[1], res["lse"], out_args[2], out_args[3],
        *args[6:],
        nq, k.shape[1], q.shape[2], q_prune.shape[2], cv, cw, topk,
        scale, prune_scale,
        **meta,
        WARP_MODE=warp_mode,
        HAS_TOPK=topk > 0,
        PRECISION=precision(dtype),
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
    )  # fmt: skip
    return res


def backward_grads(
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


@dataclass(frozen=True)
class BackwardProblem:
    """What either backward takes: the inputs; the forward's per-query statistics `stats` (lse,
    lse_w, warp_all); the upstream gradients in the kernels' layout with the per-query sums
    (`grads`, from `backward_grads`); the input gradients `wanted` (by GRADIENT_NAMES); the
    scales and the warp mode of the forward."""

    inputs: AttentionInputs
    stats: dict[str, Tensor | None]
    grads: dict[str, Tensor | None]
    wanted: dict[str, bool]
    scale: float
    prune_scale: float
    warp_mode: int


def launch_backward(
    side: str, problem: BackwardProblem, config: LaunchConfig
) -> dict[str, Tensor | None]:
    """One backward launch for one side ("query": dq, dq_prune; "key": dk, dk_prune, dv,
    dwarp_values), writing the gradients `wanted` marks (None for the others)."""
    inputs, stats, grads, wanted = problem.inputs, problem.stats, problem.grads, problem.wanted
    scale, prune_scale, warp_mode = problem.scale, problem.prune_scale, problem.warp_mode
    q, k, v, q_prune, k_prune, warp_values = inputs
    dims = _dims(inputs, 0)
    kernel = "dense_bwd_" + side
    meta = block_sizes(kernel, dims, config)
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
    fn = dense_bwd_query_kernel if side == "query" else dense_bwd_key_kernel
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
        PRECISION=precision(q.dtype),
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
    """Bytes of every buffer `tiled_backward` allocates beyond its inputs and the gradients it
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


def chunk_keys(
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


def sum_product(total: Tensor, a: Tensor, x: Tensor) -> None:
    """total += a @ x (batched), with `total` in fp32: on a GPU the matrix product adds into the
    fp32 sum itself, whatever the operands' dtype; elsewhere bf16 operands' product is formed
    first (`tiled_scratch_bytes` counts it)."""
    if a.dtype == total.dtype:
        torch.baddbmm(total, a, x, out=total)
    elif total.is_cuda:
        torch.baddbmm(total, a, x, out_dtype=total.dtype, out=total)
    else:
        total.add_(torch.bmm(a, x))


def tiled_backward(
    problem: BackwardProblem, config: LaunchConfig, cols: int | None = None
) -> dict[str, Tensor | None]:
    """Every wanted gradient, by the tiled backward: per chunk of keys, one launch of
    `dense_bwd_tile_kernel` writes dz, ds, p m and the warp weights for all queries against
    those keys, and batched matrix products (cuBLAS on a GPU) turn them into the chunk's rows of
    dk, dk_prune, dv and dwarp_values, complete, and add its share of dq and dq_prune. Chunks of
    keys rather than of queries: the sums over chunks are then the query side's (Cqk + Cp
    channels, 768 in the model) rather than the key side's (Cqk + Cp + Cv + Cw, 1,283), so more
    of the budget goes to tiles and fewer passes run. With the model's 640 and 512 channels the
    streamed kernels recompute every score tile once per output chunk (4 and 7 times), which
    this avoids. Everything it allocates besides the gradients stays within SCRATCH_BUDGET bytes
    (`tiled_scratch_bytes`); `cols` is the chunk, `chunk_keys`'s when None."""
    inputs, stats, grads, wanted = problem.inputs, problem.stats, problem.grads, problem.wanted
    scale, prune_scale, warp_mode = problem.scale, problem.prune_scale, problem.warp_mode
    q, k, v, q_prune, k_prune, warp_values = inputs
    dims = _dims(inputs, 0)
    b, nq, nk = dims["B"], dims["Nq"], dims["Nk"]
    dtype, dev = q.dtype, q.device
    work = _work_dtype(dtype)
    if cols is None:
        channels = {name: dims[name] for name in ("Cqk", "Cp", "Cv", "Cw")}
        cols = chunk_keys(b, nq, nk, channels, dtype, summed_in_product=q.is_cuda)
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
    meta = block_sizes("dense_bwd_tile", dims, config)

    def one_pass(col0: int, n: int) -> None:
        """Tiles for keys col0 .. col0 + n, then their products. The tiles' views live only
        here, so that emptying `scratch` below frees them."""
        span = slice(col0, col0 + n)
        # The chunk's keys as views (same strides): the kernel sees n keys from the chunk's first.
        args = _input_args(
            inputs._replace(
                k=k[:, span],
                v=v[:, span],
                k_prune=k_prune[:, span],
                warp_values=None if warp_values is None else warp_values[:, span],
            )
        )
        dz, ds, pm, *pw = (buf[: b * nq * n].view(b, nq, n) for buf in scratch)
        grid = (triton.cdiv(nq, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), b)
        dense_bwd_tile_kernel[grid](
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
            PRECISION=precision(dtype),
            num_warps=config["num_warps"],
            num_stages=config["num_stages"],
        )  # fmt: skip
        for name, (tile, x) in {"dq": (dz, w["k"]), "dq_prune": (ds, w["k_prune"])}.items():
            if result[name] is None:
                continue
            if chunked:
                sum_product(result[name], tile, x[:, span])
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
# Autograd and the fused backend's entry
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
        inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values).map(_channels_contiguous)
        warp_mode = 0 if warp_values is None else WARP_MODE_IDS[warp_over]
        config = launch_config(FORWARD, _dims(inputs, topk), q.device, q.dtype)
        res = launch_forward(inputs, scale, prune_scale, topk, warp_mode, config)
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
        *saved, out, conf, warp, lse, lse_w, warp_all = ctx.saved_tensors
        inputs = AttentionInputs(*saved)
        q = inputs.q
        problem = BackwardProblem(
            inputs=inputs,
            stats={"lse": lse, "lse_w": lse_w, "warp_all": warp_all},
            grads=backward_grads(out, conf, warp, dout, dconf, dwarp),
            # needs_input_grad follows forward's arguments: q, k, v, q_prune, k_prune, warp_values.
            wanted=dict(zip(GRADIENT_NAMES, ctx.needs_input_grad[:6], strict=True)),
            scale=ctx.scale,
            prune_scale=ctx.prune_scale,
            warp_mode=ctx.warp_mode,
        )
        dims = _dims(inputs, 0)
        channels = {name: dims[name] for name in ("Cqk", "Cp", "Cv", "Cw")}
        cols = chunk_keys(
            dims["B"], dims["Nq"], dims["Nk"], channels, q.dtype, summed_in_product=q.is_cuda
        )
        if backward_strategy() == "tiled" and cols > 0:
            config = launch_config(BACKWARD_TILE, dims, q.device, q.dtype)
            result = tiled_backward(problem, config, cols=cols)
            return *(result[name] for name in GRADIENT_NAMES), None, None, None, None
        result: dict[str, Tensor | None] = {}
        for side, kernel in (("query", BACKWARD_QUERY), ("key", BACKWARD_KEY)):
            config = launch_config(kernel, dims, q.device, q.dtype)
            result |= launch_backward(side, problem, config)
        return *(result[name] for name in GRADIENT_NAMES), None, None, None, None


def attention(
    inputs: AttentionInputs, settings: AttentionSettings
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Dense dynamic attention with the fused kernels, the semantics of
    `kernels.dense.reference.reference_dynamic_attention`: returns (out, conf, topk, warp). Inputs
    arrive validated from `kernels.dense.op`: one float dtype, CUDA tensors (or CPU ones under
    TRITON_INTERPRET=1), autocast off."""
    topk = settings.topk
    if topk > TOPK_MAX:
        raise ValueError(
            f"topk ({topk}) must be at most {TOPK_MAX} with the fused dense kernels: the forward "
            f"keeps a next_pow2(k)-wide list per query in registers (docs/kernels-dense.md); "
            f"use backend='torch' for larger k"
        )
    return _DenseAttention.apply(
        *inputs, settings.scale, settings.prune_scale, topk, settings.warp_over
    )
