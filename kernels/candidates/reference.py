"""Plain PyTorch reference of candidate (sparse) dynamic attention: the specification the fused
candidate kernels and the CPU path meet.

Method.md section 4: query i sees the keys `candidates[b, i, :]`, gathered into
(queries x M x channels), and the dense recipe (`kernels.dense.reference`) runs on those scores.
Inputs arrive validated and in one floating dtype (`kernels.candidates.op`); dtypes as the dense
reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dense.reference import attention_weights, topk_positions, upcast
from .lists import CandidateList, candidate_indices


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, C], index [B, Nq, M] -> [B, Nq, M, C].

    Indices are clamped to [0, N) first: `candidate_attention` has checked them already (or, on a
    GPU, deferred the check), and without the clamp an index equal to N would read the next
    sample's first row through the flattened view."""
    b, n, c = x.shape
    index = index.clamp(0, n - 1)
    # One row lookup per index on a flattened view: index_select copies whole rows, where a
    # gather over an expanded index reads an index per element (several times slower on CPU).
    rows = (index + torch.arange(b, device=index.device).view(b, 1, 1) * n).reshape(-1)
    return x.reshape(b * n, c).index_select(0, rows).reshape(*index.shape, c)


def reference_candidate_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    candidates: Tensor,
    *,
    scale: float,
    prune_scale: float,
    topk: int = 0,
    warp_values: Tensor | None = None,
    warp_over: str = "kept",
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidate attention: query i sees the keys `candidates[b, i, :]`, duplicates included.

    Returns (out, conf, topk, warp); topk holds key indices (not candidate positions)."""
    dtype = v.dtype
    idx = candidates.long()
    kg = gather_rows(upcast(k), idx)  # [B, Nq, M, Cqk]
    kpg = gather_rows(upcast(k_prune), idx)  # [B, Nq, M, Cp]
    z = scale * torch.einsum("bqc,bqmc->bqm", upcast(q), kg)
    s = prune_scale * torch.einsum("bqc,bqmc->bqm", upcast(q_prune), kpg)
    pm, w = attention_weights(z, s, warp_over, warp_values is not None)
    out = torch.einsum("bqm,bqmc->bqc", pm, gather_rows(upcast(v), idx))
    conf = pm.sum(dim=-1)
    top = torch.gather(idx, -1, topk_positions(z.detach(), topk)) if topk > 0 else None
    warp = None
    if w is not None:
        warp = torch.einsum("bqm,bqmc->bqc", w, gather_rows(upcast(warp_values), idx))
        warp = warp.to(warp_values.dtype)
    return out.to(dtype), conf.to(dtype), top, warp


def kept_counts(
    q_prune: Tensor,
    k_prune: Tensor,
    *,
    prune_scale: float,
    candidates: Tensor | CandidateList | None = None,
) -> Tensor:
    """Number of kept keys (`s > 0`) per query, [B, Nq] int64: the dynamic sparsity, for display.

    Dense when `candidates` is None. No gradient; duplicates among candidates count each time."""
    with torch.no_grad():
        if candidates is not None:
            candidates = candidate_indices(candidates)
        if candidates is None:
            s = torch.bmm(upcast(q_prune), upcast(k_prune).transpose(1, 2))
        else:
            kpg = gather_rows(upcast(k_prune), candidates.long())
            s = torch.einsum("bqc,bqmc->bqm", upcast(q_prune), kpg)
        return (prune_scale * s > 0).sum(dim=-1)
