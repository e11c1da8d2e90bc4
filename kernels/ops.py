"""Public dynamic attention operators: validation, dtype policy and backend dispatch.

`backend="torch"` runs the reference (`kernels.reference`); `"triton"` the fused kernels
(`kernels.fused_dense`, `kernels.fused_candidates`); `"auto"` picks Triton for CUDA tensors and the
reference elsewhere. The Triton modules are imported lazily so that CPU-only users never pay for
them and so that `TRITON_INTERPRET` is read at the moment they are first needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import candidates_cpu, reference
from .candidate_lists import CandidateList, candidate_indices, check_index_range, window_shared_grid
from .reference import WARP_MODES
from .runtime import interpreting

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class AttentionOutput:
    """out [B, Nq, Cv]; conf [B, Nq]; topk [B, Nq, k] int64 key indices or None; warp [B, Nq, Cw]
    or None. Float outputs share the (possibly autocast) input dtype."""

    out: Tensor
    conf: Tensor
    topk: Tensor | None
    warp: Tensor | None


def _check_float(name: str, x: object, device: torch.device | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be 3-D [B, N, C] (token-major), got shape {tuple(x.shape)}")
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


def _validate(
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
    backend: str,
) -> None:
    _check_float("q", q)
    dev = q.device
    for name, x in (("k", k), ("v", v), ("q_prune", q_prune), ("k_prune", k_prune)):
        _check_float(name, x, dev)
    if warp_values is not None:
        _check_float("warp_values", warp_values, dev)
    b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
    named = [("k", k), ("v", v), ("q_prune", q_prune), ("k_prune", k_prune)]
    if warp_values is not None:
        named.append(("warp_values", warp_values))
    for name, x in named:
        _check_size(f"{name} batch size", x.shape[0], b, "q's batch size")
    _check_size("q_prune token count", q_prune.shape[1], nq, "q's token count")
    for name in ("v", "k_prune", "warp_values"):
        x = dict(named).get(name)
        if x is not None:
            _check_size(f"{name} token count", x.shape[1], nk, "k's token count")
    _check_size("k channel count", k.shape[2], q.shape[2], "q's channel count")
    _check_size("k_prune channel count", k_prune.shape[2], q_prune.shape[2], "q_prune's")
    if nq == 0 or nk == 0:
        raise ValueError(f"q and k must hold at least one token, got Nq={nq}, Nk={nk}")
    _check_scalar("scale", scale)
    _check_scalar("prune_scale", prune_scale)
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
        raise ValueError(f"topk must be a non-negative int, got {topk!r}")
    if warp_over not in WARP_MODES:
        raise ValueError(f"warp_over must be one of {WARP_MODES}, got {warp_over!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _validate_candidates(
    candidates: object, q: Tensor, nk: int, topk: int
) -> Tensor | CandidateList:
    """Checks `candidates` and returns what the backends read: a CandidateList whole (in range by
    construction; the fused kernels may derive it rather than read it), or a plain tensor
    range-checked (at once on the CPU, deferred on a GPU; see `kernels.candidate_lists`) and,
    where the check is deferred, clamped so no read can leave the keys before the error is
    raised."""
    if not isinstance(candidates, (Tensor, CandidateList)):
        raise ValueError(
            f"candidates must be a torch.Tensor or a CandidateList, got {type(candidates).__name__}"
        )
    if candidates.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"candidates must be an int32 or int64 tensor, got {candidates.dtype}")
    if candidates.device != q.device:
        raise ValueError(f"candidates is on {candidates.device} but q is on {q.device}")
    if candidates.dim() != 3 or candidates.shape[:2] != q.shape[:2]:
        raise ValueError(
            f"candidates must be [B, Nq, M] = [{q.shape[0]}, {q.shape[1]}, M], "
            f"got shape {tuple(candidates.shape)}"
        )
    m = candidates.shape[2]
    if m < 1:
        raise ValueError("candidates must list at least one key per query (M >= 1)")
    if topk > m:
        raise ValueError(f"topk ({topk}) must not exceed the candidate count M ({m})")
    if isinstance(candidates, CandidateList):
        if candidates.bound > nk:
            raise ValueError(
                f"candidates were built for {candidates.bound} keys, but k holds Nk = {nk}"
            )
        return candidates
    check_index_range("candidates", candidates, nk)
    return candidates.clamp(0, nk - 1) if candidates.is_cuda else candidates


def _common_dtype(tensors: dict[str, Tensor | None]) -> torch.dtype:
    """Autocast's dtype when autocast is on for the inputs' device, else the one shared dtype."""
    first = next(iter(tensors.values()))
    device_type = first.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtypes = {name: x.dtype for name, x in tensors.items() if x is not None}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in dtypes.items())
        raise ValueError(f"float inputs must share one dtype outside autocast, got {listing}")
    return first.dtype


def _use_triton(backend: str, q: Tensor) -> bool:
    if backend == "torch":
        return False
    on_interpreter = interpreting()
    if backend == "triton":
        if not q.is_cuda and not on_interpreter:
            raise ValueError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set in the environment "
                f"before `kernels` is imported to run the kernels on the CPU; q is on {q.device}"
            )
        return True
    return q.is_cuda and importlib.util.find_spec("triton") is not None


def _run(
    fused_name: str,
    ref_fn,
    tensors: dict[str, Tensor | None],
    args: tuple,
    kwargs: dict,
    backend: str,
    fused_kwargs: dict | None = None,
) -> AttentionOutput:
    q = tensors["q"]
    dtype = _common_dtype(tensors)
    cast = [x.to(dtype) if x is not None and x.dtype != dtype else x for x in tensors.values()]
    if _use_triton(backend, q):
        fn = importlib.import_module(f".fused_{fused_name}", __package__).attention
        kwargs = {**kwargs, **(fused_kwargs or {})}
    else:
        fn = ref_fn
    # Scores must stay fp32 in the reference: keep autocast from recasting its matmuls.
    with torch.autocast(q.device.type, enabled=False):
        out, conf, top, warp = fn(*cast[:5], *args, warp_values=cast[5], **kwargs)
    return AttentionOutput(out=out, conf=conf, topk=top, warp=warp)


def dynamic_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    *,
    scale: float,
    prune_scale: float,
    topk: int = 0,
    warp_values: Tensor | None = None,
    warp_over: str = "kept",
    backend: str = "auto",
) -> AttentionOutput:
    """Dense dynamic attention (docs/method.md section 4): each query attends to every key.

    q [B, Nq, Cqk], k [B, Nk, Cqk], v [B, Nk, Cv], q_prune [B, Nq, Cp], k_prune [B, Nk, Cp],
    warp_values [B, Nk, Cw] or None. `topk` > 0 also returns the k best key indices per query.
    """
    _validate(q, k, v, q_prune, k_prune, warp_values, scale, prune_scale, topk, warp_over, backend)
    if topk > k.shape[1]:
        raise ValueError(f"topk ({topk}) must not exceed the key count Nk ({k.shape[1]})")
    tensors = {
        "q": q,
        "k": k,
        "v": v,
        "q_prune": q_prune,
        "k_prune": k_prune,
        "warp_values": warp_values,
    }
    kwargs = {
        "scale": float(scale),
        "prune_scale": float(prune_scale),
        "topk": topk,
        "warp_over": warp_over,
    }
    return _run("dense", reference.reference_dynamic_attention, tensors, (), kwargs, backend)


def candidate_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    candidates: Tensor | CandidateList,
    *,
    scale: float,
    prune_scale: float,
    topk: int = 0,
    warp_values: Tensor | None = None,
    warp_over: str = "kept",
    backend: str = "auto",
) -> AttentionOutput:
    """Sparse dynamic attention: query i attends to the keys `candidates[b, i, :]` (docs/method.md
    section 4), duplicates counted. Shapes as `dynamic_attention`, plus candidates [B, Nq, M] with
    values in [0, Nk): a CandidateList from the builders, or a plain int32 or int64 tensor, which
    is range-checked (on a GPU the error surfaces at `kernels.check_index_errors()` or a later
    call; see `kernels.candidate_lists`). On the fused backend a CandidateList's candidates are
    derived in the kernel from the top-k it holds (`$DYNAST_CANDIDATES=list` reads its list).
    `topk` returns int64 key indices, ties going to the lower candidate position; a NaN score
    ranks below every number (see `kernels.reference`).
    """
    _validate(q, k, v, q_prune, k_prune, warp_values, scale, prune_scale, topk, warp_over, backend)
    checked = _validate_candidates(candidates, q, k.shape[1], topk)
    tensors = {
        "q": q,
        "k": k,
        "v": v,
        "q_prune": q_prune,
        "k_prune": k_prune,
        "warp_values": warp_values,
    }
    kwargs = {
        "scale": float(scale),
        "prune_scale": float(prune_scale),
        "topk": topk,
        "warp_over": warp_over,
    }
    ref_fn = reference.reference_candidate_attention
    if backend == "auto" and q.device.type == "cpu":
        ref_fn = candidates_cpu.cpu_candidate_attention  # same results without the gathers
    # The fused kernels take a CandidateList whole (by default they derive its candidates from
    # the top-k it holds, and never build the list); the reference reads the list.
    fused = _use_triton(backend, q)
    return _run(
        "candidates",
        ref_fn,
        tensors,
        (checked if fused else candidate_indices(checked),),
        kwargs,
        "triton" if fused else "torch",
        fused_kwargs={"window": window_shared_grid(candidates)},
    )
