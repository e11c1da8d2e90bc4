"""The public candidate operator `candidate_attention`: validation, dtype policy and backend
dispatch.

`backend="torch"` runs the reference (`kernels.candidates.reference`), `"triton"` the fused
kernels (`kernels.candidates.fused`, imported at their first call as the dense ones are),
`"auto"` Triton for CUDA tensors and, on the CPU, the gather-free path (`kernels.candidates.cpu`,
the reference's results without its gathers). While `torch.compile` traces, the operator runs as
one op registered with torch.library (`kernels.custom_ops`), whose implementation is
`eager_candidate_attention`: Dynamo cannot trace the checks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..call import (
    AttentionInputs,
    AttentionOutput,
    AttentionSettings,
    check_call,
    to_common_dtype,
    use_triton,
)
from . import cpu
from .lists import CandidateList, candidate_indices, check_index_range, window_shared_grid
from .reference import reference_candidate_attention


def _check_candidates(candidates: object, q: Tensor, nk: int, topk: int) -> Tensor | CandidateList:
    """Checks `candidates` and returns what the backends read: a CandidateList whole (in range by
    construction; the fused kernels may derive it rather than read it), or a plain tensor
    range-checked (at once on the CPU, deferred on a GPU; see `kernels.candidates.lists`) and,
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
    call; see `kernels.candidates.lists`). On the fused backend a CandidateList's candidates are
    derived in the kernel from the top-k it holds (`$DYNAST_CANDIDATES=list` reads its list), and
    `$DYNAST_CANDIDATE_FORWARD=tile` runs their forward through the query-tile kernel.
    `topk` returns int64 key indices, ties going to the lower candidate position; a NaN score
    ranks below every number (see `kernels.dense.reference.topk_positions`).
    """
    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    settings = AttentionSettings(scale, prune_scale, topk, warp_over)
    if torch.compiler.is_compiling():
        from ..custom_ops import traced_candidate_attention

        return traced_candidate_attention(inputs, candidates, settings, backend)
    return eager_candidate_attention(inputs, candidates, settings, backend)


def eager_candidate_attention(
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
    settings: AttentionSettings,
    backend: str,
) -> AttentionOutput:
    """`candidate_attention` on the call type, run eagerly."""
    check_call(inputs, settings, backend)
    q = inputs.q
    checked = _check_candidates(candidates, q, inputs.k.shape[1], settings.topk)
    fused = use_triton(backend, q)
    inputs, settings = to_common_dtype(inputs), settings.as_floats()
    if not fused and backend == "auto" and q.device.type == "cpu":
        reference = cpu.cpu_candidate_attention  # the reference's results without the gathers
    else:
        reference = reference_candidate_attention
    # Scores must stay fp32 in the reference: keep autocast from recasting its matmuls.
    with torch.autocast(q.device.type, enabled=False):
        if fused:
            from .fused import attention

            # The fused kernels take a CandidateList whole (by default they derive its candidates
            # from the top-k it holds, and never build the list), with its window-sharing fact.
            window = window_shared_grid(checked)
            out, conf, top, warp = attention(inputs, checked, settings, window=window)
        else:
            listed = candidate_indices(checked)
            out, conf, top, warp = reference(
                *inputs[:5], listed, warp_values=inputs.warp_values, **settings.keywords()
            )
    return AttentionOutput(out=out, conf=conf, topk=top, warp=warp)
