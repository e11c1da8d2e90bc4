"""What the autotuner times for the candidate kernels (`kernels.candidates.fused`): one runner per
kernel, building a fresh problem of the model's kind and launching the kernel once.

`TUNABLE` pairs each kernel's launch space (declared beside the kernel) with its runner;
`python -m kernels.autotune` sweeps them. `TILE_TUNABLE` is the query-tile forward, which runs only
behind `$DYNAST_CANDIDATE_FORWARD=tile`: the autotuner sweeps it when `--kernel` names it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..call import WARP_MODE_IDS
from ..shapes import AttentionShape, make_problem
from ..tuning.table import LaunchConfig, TunableKernel
from . import fused
from .lists import PER_MATCH, candidate_indices, window_shared_grid


def random_problem(dims: dict[str, int], device: torch.device, dtype: torch.dtype):
    """Fresh inputs of the given dims, one sample, as the model would feed them
    (`kernels.shapes`): unit-norm rows at scale 100 and spatially coherent candidates, since the
    cache hit rate of the gathers depends on it. G = 4 gives window-shared inter-scale lists
    (M = 4k), G = 1 inner-scale ones (M = 5k)."""
    nq, m = dims["Nq"], dims["M"]
    block = "inter" if dims["G"] == fused.WINDOW else "inner"
    per_match = PER_MATCH[block]
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
    """The launch the operator would make: candidates derived in the kernel from the top-k the
    problem's CandidateList holds, or its list read (`$DYNAST_CANDIDATES=list`)."""
    candidates = problem.candidates
    if fused.candidate_mode() == "list":
        candidates = candidate_indices(candidates)
    return {
        "inputs": problem.inputs(),
        "candidates": candidates,
        "window": window_shared_grid(problem.candidates),  # a CandidateList's own fact
        "scale": problem.shape.scale,
        "prune_scale": problem.shape.prune_scale,
        "warp_mode": WARP_MODE_IDS["kept"] if problem.warp_values is not None else 0,
    }


def _forward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    problem = random_problem(dims, device, dtype)
    x = _launch_args(problem)

    def run() -> object:
        return fused.launch_forward(
            x["inputs"],
            x["candidates"],
            window=x["window"],
            scale=x["scale"],
            prune_scale=x["prune_scale"],
            topk=problem.shape.k,
            warp_mode=x["warp_mode"],
            save_scores=True,
            config=config,
        )

    return run


def _backward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    problem = random_problem(dims, device, dtype)
    x = _launch_args(problem)
    common = {k: x[k] for k in ("window", "scale", "prune_scale", "warp_mode")}
    head = (x["inputs"], x["candidates"])
    out, conf, _, warp, z, s = fused.launch_forward(
        *head, topk=0, save_scores=True, config=fused.FORWARD.default(dims), **common
    )
    dout, dconf = torch.randn_like(out), torch.randn_like(conf)
    dwarp = torch.randn_like(warp) if warp is not None else None

    def run() -> object:
        # The fp32 buffers are allocated and zeroed inside: that cost belongs to every backward.
        return fused.launch_backward(*head, z, s, dout, dconf, dwarp, config=config, **common)

    return run


def _tile_forward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    problem = random_problem(dims, device, dtype)
    x = _launch_args(problem)

    def run() -> object:
        return fused.launch_forward_tile(
            x["inputs"],
            problem.candidates,  # derived in the kernel, whatever $DYNAST_CANDIDATES says
            scale=x["scale"],
            prune_scale=x["prune_scale"],
            topk=problem.shape.k,
            warp_mode=x["warp_mode"],
            save_scores=True,
            config=config,
        )

    return run


TUNABLE: list[TunableKernel] = [
    TunableKernel.of(fused.FORWARD, _forward_runner),
    TunableKernel.of(fused.BACKWARD, _backward_runner),
]
TILE_TUNABLE: list[TunableKernel] = [TunableKernel.of(fused.FORWARD_TILE, _tile_forward_runner)]
