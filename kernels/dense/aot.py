"""The ahead-of-time compile cases of the dense kernels (`kernels.dense.triton`): every kernel x
every config of its space x the model sizes below, for `python -m kernels.aot`."""

from __future__ import annotations

import torch
import triton

from ..aot.compile import AotCase, aligned_arguments, kernel_signature
from ..call import WARP_MODE_IDS
from ..shapes import AOT_DENSE_DIMS
from . import fused
from .triton import (
    dense_bwd_key_kernel,
    dense_bwd_query_kernel,
    dense_bwd_tile_kernel,
    dense_fwd_kernel,
)

# The dense problems of the model presets (kernels.shapes: deepfashion-256, the same grid with
# its finest channels, synthetic-64-narrow, synthetic-64).
AOT_DIMS = AOT_DENSE_DIMS
# The training presets run in fp32 (mixed precision "no"): their dense problems (deepfashion's and
# synthetic-64's) also compile the default configs with fp32 inputs.
_AOT_FP32_DIMS = (AOT_DIMS[0], AOT_DIMS[3])
# Top-k sizes up to `fused.TOPK_MAX`, compiled at the model's dense size (`_large_k_cases`).
_LARGE_K = (8, 16, 32)
# Pointer arguments whose type is not the input dtype.
_POINTER_TYPES = {
    "TOPK": "i64",
    "LSE": "fp32",
    "LSE_W": "fp32",
    "DELTA": "fp32",
    "DELTA_W": "fp32",
    "WARP_ALL": "i32",
}
# Each kernel with its launch space, in the order of the report.
_KERNELS = (
    (fused.FORWARD, dense_fwd_kernel),
    (fused.BACKWARD_TILE, dense_bwd_tile_kernel),
    (fused.BACKWARD_QUERY, dense_bwd_query_kernel),
    (fused.BACKWARD_KEY, dense_bwd_key_kernel),
)


def _argument_values(dims: dict[str, int], meta: dict[str, int]) -> dict[str, int]:
    """The integer arguments a launch on contiguous inputs of these sizes passes (the tiled
    backward in one pass), so that the compile marks the same ones divisible by 16 as Triton's
    JIT would: it then builds the code that runs (vectorised channel loads)."""
    nq, nk = dims["Nq"], dims["Nk"]
    channels = {"q": dims["Cqk"], "k": dims["Cqk"], "v": dims["Cv"], "qp": dims["Cp"]}
    channels |= {"kp": dims["Cp"], "wv": dims["Cw"]}
    values = {"Nq": nq, "Nk": nk, **{c: dims[c] for c in ("Cqk", "Cp", "Cv", "Cw")}}
    values |= {"top_k": dims["k"], "row0": 0, "n_rows": nq}
    for name, c in channels.items():
        tokens = nq if name in ("q", "qp") else nk
        values[f"stride_{name}b"], values[f"stride_{name}n"] = tokens * c, c
    if "BLOCK_C" in meta:
        for name, c in (("dq", "Cqk"), ("dk", "Cqk"), ("dkp", "Cp"), ("dv", "Cv")):
            values[f"chunks_{name}"] = triton.cdiv(dims[c], meta["BLOCK_C"])
    return values


def _case(label, fn, dims, dtype_name, config, constexprs, is_default) -> AotCase:
    return AotCase(
        label=label,
        module=fn.fn.__module__,
        function=fn.fn.__name__,
        signature=kernel_signature(fn, dtype_name, _POINTER_TYPES),
        constexprs=constexprs,
        num_warps=config["num_warps"],
        num_stages=config["num_stages"],
        is_default=is_default,
        divisible_by_16=aligned_arguments(fn, _argument_values(dims, constexprs)),
    )


def _large_k_cases() -> list[AotCase]:
    """The default forward at the model's dense size (bf16 and fp32) with k = 8, 16, 32: in the
    report for their registers and spills, not held to the defaults' no-spill rule."""
    dims0 = AOT_DIMS[0]
    cases = []
    for dtype, dtype_name in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for k in _LARGE_K:
            dims = {**dims0, "k": k}
            config = fused.FORWARD.default(dims)
            meta = fused.block_sizes(fused.FORWARD.name, dims, config)
            flags = {"WARP_MODE": WARP_MODE_IDS["kept"], "PRECISION": fused.precision(dtype)}
            label = (
                f"dense_fwd {dtype_name} Cqk={dims['Cqk']} Cp={dims['Cp']} "
                f"Cv={dims['Cv']} k={k} (BLOCK_K {meta['BLOCK_K']})"
            )
            constexprs = {**meta, **flags, "HAS_TOPK": True}
            fn = dense_fwd_kernel
            cases.append(_case(label, fn, dims, dtype_name, config, constexprs, False))
    return cases


def aot_cases() -> list[AotCase]:
    """Every kernel x every config of its space x AOT_DIMS with bf16 inputs (mixed-precision
    training, and the autotuner's default dtype), plus the default configs with fp32 inputs at
    _AOT_FP32_DIMS; the warp over the kept keys, top-k 4."""
    problems = [(dims, torch.bfloat16, False) for dims in AOT_DIMS]
    problems += [(dims, torch.float32, True) for dims in _AOT_FP32_DIMS]
    cases = _large_k_cases()
    for dims, dtype, defaults_only in problems:
        dtype_name = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
        flags = {"WARP_MODE": WARP_MODE_IDS["kept"], "PRECISION": fused.precision(dtype)}
        sizes = f"Cqk={dims['Cqk']} Cp={dims['Cp']} Cv={dims['Cv']}"
        if dtype != torch.bfloat16:
            sizes = f"{dtype_name} {sizes}"
        for kernel, fn in _KERNELS:
            forward = kernel is fused.FORWARD
            extra = {"HAS_TOPK": True} if forward else {}
            kernel_dims = dims if forward else {**dims, "k": 0}
            default = kernel.default(kernel_dims)
            space = [default] if defaults_only else kernel.space(kernel_dims)
            for config in space:
                meta = fused.block_sizes(kernel.name, kernel_dims, config)
                out = {"BLOCK_V": "V", "BLOCK_C": "C"}
                blocks = f"M{meta['BLOCK_M']} N{meta['BLOCK_N']} D{meta['BLOCK_D']}" + "".join(
                    f" {letter}{meta[name]}" for name, letter in out.items() if name in meta
                )
                label = f"{kernel.name} {sizes} {blocks}"
                constexprs = {**meta, **flags, **extra}
                is_default = config == default
                cases.append(
                    _case(label, fn, kernel_dims, dtype_name, config, constexprs, is_default)
                )
    return cases
