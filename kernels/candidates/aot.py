"""The ahead-of-time compile cases of the candidate kernels (`kernels.candidates.triton`, and the
query-tile forward of `kernels.candidates.tile`): every kernel x every config of its space x the
model's sizes, for `python -m kernels.aot`."""

from __future__ import annotations

import torch

from ..aot.compile import AotCase, aligned_arguments, kernel_signature
from ..call import WARP_MODE_IDS
from ..dense.fused import precision
from ..shapes import sparse_scale_sizes
from . import fused
from .lists import PER_MATCH
from .tile import candidate_fwd_tile_kernel
from .triton import candidate_bwd_kernel, candidate_fwd_kernel

# The sparse scales of deepfashion-256 (tokens, Cqk, Cp, Cv) and a small preset's channels; Cw 3.
MODEL_SIZES = sparse_scale_sizes("deepfashion-256")
SMALL_SIZES = [(4096, 48, 16, 32)]


def tuning_dims() -> list[dict[str, int]]:
    """The problems worth tuning: every sparse scale, inter-scale (M = 16, window-shared) and
    inner-scale (M = 20) candidates."""
    return [
        {"Nq": nq, "Cqk": cqk, "Cp": cp, "Cv": cv, "Cw": 3, "M": m, "G": group}
        for nq, cqk, cp, cv in MODEL_SIZES + SMALL_SIZES
        for m, group in ((16, fused.WINDOW), (20, 1))
    ]


def _problems() -> list[tuple[dict[str, int], int]]:
    """(dims, DERIVE) of every compile: each tuning problem with its list read, and derived from
    the previous top-k the way the model's lists are (window-shared M = 16: inter; M = 20:
    inner)."""
    problems = []
    for dims in tuning_dims():
        problems.append((dims, 0))
        problems.append((dims, _derive_code(dims)))
    return problems


# Pointer element types that do not follow the input dtype: int32 indices, as the builders make
# them at every model size (a list, or with DERIVE the top-k it derives from).
_POINTER_TYPES = {
    "CAND": "i32",
    "SRC": "i32",
    "TOPK": "i64",
    "Z": "fp32",
    "S": "fp32",
    "DK": "fp32",
    "DV": "fp32",
    "DKP": "fp32",
    "DWV": "fp32",
}


def _argument_values(dims: dict[str, int], derive: int) -> dict[str, int]:
    """The integer arguments a launch on a problem of these sizes passes (top-k 4), so that the
    compile marks the same ones divisible by 16 as Triton's JIT would. Without the marks the
    gathers cannot be vectorised and a compile misjudges registers (docs/kernels-candidates.md)."""
    nq = dims["Nq"]
    side = 2 ** ((nq.bit_length() - 1) // 2)
    derived = derive != 0
    per_match = PER_MATCH["inter" if dims["G"] == fused.WINDOW else "inner"]
    return {
        "Nq": nq,
        "Nk": nq,
        "n_cand": dims["M"],
        "Cqk": dims["Cqk"],
        "Cp": dims["Cp"],
        "Cv": dims["Cv"],
        "Cw": dims["Cw"],
        "n_groups": nq // dims["G"],
        "grid_w": side if dims["G"] == fused.WINDOW or derived else 1,
        "grid_h": nq // side if derived or dims["G"] == fused.WINDOW else 1,
        "n_src": (nq // dims["G"] if derived else 1),
        "src_k": dims["M"] // per_match if derived else 1,
        "top_k": 4,
    }


def _derive_code(dims: dict[str, int]) -> int:
    """DERIVE of the model's lists of this kind: window-shared M = 16 inter, M = 20 inner."""
    return fused.DERIVE_CODES["inter" if dims["G"] == fused.WINDOW else "inner"]


def _launches() -> list[dict]:
    """Every (kernel, problem, config) compile of the per-query kernels, as trained: bf16, int32
    indices, warp over kept keys, scores saved for the backward; each with the list read and
    with the candidates derived."""
    kernels = (
        (fused.FORWARD, candidate_fwd_kernel, {"SAVE_SCORES": True}),
        (fused.BACKWARD, candidate_bwd_kernel, {}),
    )
    launches = []
    for dims, derive in _problems():
        for kernel, fn, flags in kernels:
            flags = {"WARP_MODE": WARP_MODE_IDS["kept"], **flags, "DERIVE": derive}
            for config in kernel.space(dims):
                constexprs = {**fused.block_sizes(dims, config), **flags}
                launches.append(dict(kernel=kernel, fn=fn, dims=dims, derive=derive,
                                     config=config, constexprs=constexprs))  # fmt: skip
    return launches


def _tile_launches() -> list[dict]:
    """The query-tile forward's compiles: derived candidates only, as trained (bf16, whose
    `tl.dot` precision flag is the dense kernels' `precision`)."""
    flags = {"WARP_MODE": WARP_MODE_IDS["kept"], "SAVE_SCORES": True}
    flags["PRECISION"] = precision(torch.bfloat16)
    launches = []
    for dims in tuning_dims():
        derive = _derive_code(dims)
        for config in fused.FORWARD_TILE.space(dims):
            constexprs = {**fused.tile_block_sizes(dims, config), **flags, "DERIVE": derive}
            launches.append(dict(kernel=fused.FORWARD_TILE, fn=candidate_fwd_tile_kernel,
                                 dims=dims, derive=derive, config=config,
                                 constexprs=constexprs))  # fmt: skip
    return launches


def _label(entry: dict) -> str:
    config, constexprs = entry["config"], entry["constexprs"]
    source = ("list", "inner", "inter")[constexprs["DERIVE"]]
    sizes = ",".join(entry["sizes"])
    if entry["kernel"] is fused.FORWARD_TILE:
        tile = f"T{config['TILE_Y']}x{config['TILE_X']} U{config['BLOCK_U']}"
        return (
            f"{entry['kernel'].name} {source} M={entry['M']} {tile} C{config['BLOCK_C']} "
            f"Cqk/Cp/Cv={sizes}"
        )
    return (
        f"{entry['kernel'].name} {source} M={entry['M']} G={constexprs['GROUP']} "
        f"Q{config['BLOCK_Q']} C{config['BLOCK_C']} Cqk/Cp/Cv={sizes}"
    )


def _cases(launches: list[dict]) -> list[AotCase]:
    """One case per distinct compile: sizes whose block sizes come out the same compile to the
    same kernel, so each is listed once, labelled with the sizes it stands for."""
    merged: dict[tuple, dict] = {}
    for launch in launches:
        dims, config, kernel, fn = launch["dims"], launch["config"], launch["kernel"], launch["fn"]
        constexprs = launch["constexprs"]
        aligned = aligned_arguments(fn, _argument_values(dims, launch["derive"]))
        key = (kernel.name, tuple(sorted(constexprs.items())), config["num_warps"], aligned)
        entry = merged.setdefault(
            key, {"fn": fn, "kernel": kernel, "config": config, "constexprs": constexprs}
        )
        entry.setdefault("sizes", []).append(f"{dims['Cqk']}/{dims['Cp']}/{dims['Cv']}")
        entry["default"] = entry.get("default", False) or config == kernel.default(dims)
        entry.setdefault("aligned", aligned)
        entry.setdefault("M", dims["M"])
    cases = []
    for entry in merged.values():
        config = entry["config"]
        cases.append(
            AotCase(
                label=_label(entry),
                module=entry["fn"].fn.__module__,
                function=entry["fn"].fn.__name__,
                signature=kernel_signature(entry["fn"], "bf16", _POINTER_TYPES),
                constexprs=entry["constexprs"],
                num_warps=config["num_warps"],
                num_stages=config["num_stages"],
                is_default=entry["default"],
                divisible_by_16=entry["aligned"],
            )
        )
    return cases


def aot_cases() -> list[AotCase]:
    """Every per-query kernel x every config of its space x the model's sizes, as trained: bf16,
    int32 indices, warp over kept keys, scores saved for the backward; each with the list read
    (DERIVE 0) and with the candidates derived in the kernel from the previous top-k (DERIVE 1
    inner, M = 20; 2 inter, M = 16, window-shared)."""
    return _cases(_launches())


def tile_aot_cases() -> list[AotCase]:
    """The query-tile forward (`candidate_fwd_tile_kernel`, behind `$DYNAST_CANDIDATE_FORWARD`)
    x every config of its space x the model's sizes, derived candidates as trained."""
    return _cases(_tile_launches())
