"""What the autotuner times for the dense kernels (`kernels.dense.fused`): one runner per kernel,
building fresh inputs of the problem's sizes and launching the kernel once.

`TUNABLE` pairs each kernel's launch space (declared beside the kernel) with its runner;
`python -m kernels.autotune` sweeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..call import WARP_MODE_IDS, AttentionInputs
from ..tuning.table import LaunchConfig, TunableKernel
from . import fused


def random_inputs(
    dims: dict[str, int], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> AttentionInputs:
    """q, k, v, q_prune, k_prune, warp_values (None when Cw = 0) with normal entries."""
    gen = torch.Generator().manual_seed(seed)

    def draw(tokens: int, channels: int) -> Tensor:
        x = torch.randn(dims["B"], tokens, channels, generator=gen)
        return x.to(device=device, dtype=dtype)

    nq, nk = dims["Nq"], dims["Nk"]
    warp_values = draw(nk, dims["Cw"]) if dims["Cw"] else None
    qk = draw(nq, dims["Cqk"]), draw(nk, dims["Cqk"])
    v, q_prune, k_prune = draw(nk, dims["Cv"]), draw(nq, dims["Cp"]), draw(nk, dims["Cp"])
    return AttentionInputs(*qk, v, q_prune, k_prune, warp_values)


def release_scales(dims: dict[str, int]) -> tuple[float, float]:
    """The release's dense scales (docs/method.md section 4): 1/sqrt(Cqk) and 1/Cp."""
    return 1.0 / math.sqrt(dims["Cqk"]), 1.0 / dims["Cp"]


def _forward_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], dict[str, Tensor | None]]:
    """Fresh inputs for `dims`, and a callable launching the forward once with `config`."""
    inputs = random_inputs(dims, device, dtype)
    scale, prune_scale = release_scales(dims)
    warp_mode = WARP_MODE_IDS["kept"] if dims["Cw"] else 0
    return lambda: fused.launch_forward(inputs, scale, prune_scale, dims["k"], warp_mode, config)


def random_upstream(
    dims: dict[str, int], device: torch.device, dtype: torch.dtype, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Upstream gradients of out, conf and warp (None when Cw = 0) with normal entries."""
    gen = torch.Generator().manual_seed(seed)
    b, nq = dims["B"], dims["Nq"]
    shapes = [(b, nq, dims["Cv"]), (b, nq), (b, nq, dims["Cw"]) if dims["Cw"] else None]
    return tuple(
        None if shape is None else torch.randn(shape, generator=gen).to(device, dtype)
        for shape in shapes
    )


def _backward_problem(
    dims: dict[str, int], device: torch.device, dtype: torch.dtype
) -> fused.BackwardProblem:
    """What a backward runner needs: fresh inputs and upstream gradients, the release's scales,
    the forward's statistics (default config) and every gradient wanted."""
    inputs = random_inputs(dims, device, dtype)
    scale, prune_scale = release_scales(dims)
    warp_mode = WARP_MODE_IDS["kept"] if dims["Cw"] else 0
    config = fused.FORWARD.default(dims)
    fwd = fused.launch_forward(inputs, scale, prune_scale, 0, warp_mode, config)
    upstream = random_upstream(dims, device, dtype)
    return fused.BackwardProblem(
        inputs=inputs,
        stats=fwd,
        grads=fused.backward_grads(fwd["out"], fwd["conf"], fwd["warp"], *upstream),
        wanted=dict.fromkeys(fused.GRADIENT_NAMES, True),
        scale=scale,
        prune_scale=prune_scale,
        warp_mode=warp_mode,
    )


def _backward_runner(side: str):
    """make_runner of one streamed backward kernel: the callable launches that side's kernel once,
    for every gradient it writes."""

    def make(
        dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
    ) -> Callable[[], dict[str, Tensor | None]]:
        problem = _backward_problem(dims, device, dtype)
        return lambda: fused.launch_backward(side, problem, config)

    return make


def _tile_runner(
    dims: dict[str, int], config: LaunchConfig, device: torch.device, dtype: torch.dtype
) -> Callable[[], dict[str, Tensor | None]]:
    """make_runner of the tiled backward: the callable computes every gradient (the kernel and
    the matrix products after it, which the config does not change)."""
    problem = _backward_problem(dims, device, dtype)
    return lambda: fused.tiled_backward(problem, config)


TUNABLE: list[TunableKernel] = [
    TunableKernel.of(fused.FORWARD, _forward_runner),
    TunableKernel.of(fused.BACKWARD_TILE, _tile_runner),
    TunableKernel.of(fused.BACKWARD_QUERY, _backward_runner("query")),
    TunableKernel.of(fused.BACKWARD_KEY, _backward_runner("key")),
]
