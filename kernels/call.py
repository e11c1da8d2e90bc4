"""What a call of either attention operator carries, and the checks and choices every call makes.

`AttentionInputs` is the one call type: the six float inputs travel together through validation,
the dtype policy, the backends, the launchers and the autotuner's runners, with the scalar
settings beside them in an `AttentionSettings`. The public operators (`kernels.dynamic_attention`,
`kernels.candidate_attention`) keep their positional signatures and build both. `AttentionOutput`
is what both return.

Backends: `"torch"` runs the reference, `"triton"` the fused kernels, `"auto"` Triton for CUDA
tensors and the reference elsewhere (`use_triton`). Each operator's `op.py` dispatches.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .runtime import interpreting

BACKENDS = ("auto", "torch", "triton")
WARP_MODES = ("kept", "pruned", "all")
# The fused kernels' `WARP_MODE` constexpr for each mode; 0 means no warp output.
WARP_MODE_IDS = {mode: i + 1 for i, mode in enumerate(WARP_MODES)}


class AttentionInputs(NamedTuple):
    """The float inputs of one attention call, token-major: q [B, Nq, Cqk], k [B, Nk, Cqk],
    v [B, Nk, Cv], q_prune [B, Nq, Cp], k_prune [B, Nk, Cp], warp_values [B, Nk, Cw] or None."""

    q: Tensor
    k: Tensor
    v: Tensor
    q_prune: Tensor
    k_prune: Tensor
    warp_values: Tensor | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> AttentionInputs:
        """`fn` applied to every input that is there (warp_values stays None without a warp)."""
        return AttentionInputs(*(None if x is None else fn(x) for x in self))

    def named(self) -> dict[str, Tensor]:
        """The inputs that are there, by name."""
        return {name: x for name, x in self._asdict().items() if x is not None}


@dataclass(frozen=True)
class AttentionSettings:
    """The scalar settings of one attention call: z = scale <q, k>, s = prune_scale <q_p, k_p>,
    the `topk` best keys returned per query (0: none), the warp softmax over the kept, the
    pruned (the release's formula) or all keys (docs/method.md section 4)."""

    scale: float
    prune_scale: float
    topk: int = 0
    warp_over: str = "kept"

    def keywords(self) -> dict[str, object]:
        """The settings as the keyword arguments of the references."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def as_floats(self) -> AttentionSettings:
        """The scales as Python floats (what the kernels and custom ops take)."""
        return dataclasses.replace(
            self, scale=float(self.scale), prune_scale=float(self.prune_scale)
        )


@dataclass(frozen=True)
class AttentionOutput:
    """out [B, Nq, Cv]; conf [B, Nq]; topk [B, Nq, k] int64 key indices or None; warp [B, Nq, Cw]
    or None. Float outputs share the (possibly autocast) input dtype."""

    out: Tensor
    conf: Tensor
    topk: Tensor | None
    warp: Tensor | None


def check_float_tensor(name: str, x: object, dims: int, layout: str) -> Tensor:
    """ValueError naming `name` unless `x` is a floating-point tensor of `dims` dimensions
    (`layout` names them in the message)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(x.shape)}")
    return x


def _check_float(name: str, x: object, device: torch.device | None = None) -> Tensor:
    check_float_tensor(name, x, 3, "[B, N, C] (token-major)")
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}")
    return x


def _check_size(what: str, got: int, want: int, against: str) -> None:
    if got != want:
        raise ValueError(f"{what} is {got} but must equal {against} ({want})")


def _check_scalar(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_topk(topk: object) -> None:
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise ValueError(f"topk must be a non-negative int, got {topk!r}")


def check_backend(backend: object) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_call(inputs: AttentionInputs, settings: AttentionSettings, backend: str) -> None:
    """ValueError naming the first input or setting that does not fit the call."""
    q, k, _, q_prune, k_prune, _ = inputs
    _check_float("q", q)
    named = {name: x for name, x in inputs.named().items() if name != "q"}
    for name, x in named.items():
        _check_float(name, x, q.device)
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    for name, x in named.items():
        _check_size(f"{name} batch size", x.shape[0], b, "q's batch size")
    _check_size("q_prune token count", q_prune.shape[1], nq, "q's token count")
    for name in ("v", "k_prune", "warp_values"):
        x = named.get(name)
        if x is not None:
            _check_size(f"{name} token count", x.shape[1], nk, "k's token count")
    _check_size("k channel count", k.shape[2], q.shape[2], "q's channel count")
    _check_size("k_prune channel count", k_prune.shape[2], q_prune.shape[2], "q_prune's")
    if nq == 0 or nk == 0:
        raise ValueError(f"q and k must hold at least one token, got Nq={nq}, Nk={nk}")
    _check_scalar("scale", settings.scale)
    _check_scalar("prune_scale", settings.prune_scale)
    check_topk(settings.topk)
    if settings.warp_over not in WARP_MODES:
        raise ValueError(f"warp_over must be one of {WARP_MODES}, got {settings.warp_over!r}")
    check_backend(backend)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's dtype when autocast is on for this device type, else None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def to_common_dtype(inputs: AttentionInputs) -> AttentionInputs:
    """The inputs in autocast's dtype when autocast is on for their device, else in the one
    dtype they share (ValueError naming each dtype where they do not)."""
    dtype = autocast_dtype(inputs.q.device.type)
    if dtype is None:
        dtypes = {name: x.dtype for name, x in inputs.named().items()}
        if len(set(dtypes.values())) > 1:
            listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
            raise ValueError(f"float inputs must share one dtype outside autocast, got {listing}")
        dtype = inputs.q.dtype
    return inputs.map(lambda x: x if x.dtype == dtype else x.to(dtype))


def use_triton(backend: str, x: Tensor) -> bool:
    """Whether `backend` runs the fused kernels on tensors like `x`."""
    if backend == "torch":
        return False
    on_interpreter = interpreting()
    if backend == "triton":
        if not x.is_cuda and not on_interpreter:
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set in the environment "
                f"before `kernels` is imported to run the kernels on the CPU; q is on {x.device}"
            )
        return True
    return x.is_cuda and importlib.util.find_spec("triton") is not None
