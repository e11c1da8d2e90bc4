"""Plain PyTorch reference of the dynamic attention operators: the specification the kernels meet.

Method.md section 4, written for clarity rather than speed. Both operators share one recipe; they
differ only in which keys a query sees:

- dense: every key, `z = scale * Q K^T` is a (queries x keys) matrix;
- candidates: the keys listed in `candidates[b, i, :]`, gathered into (queries x M x channels).

Inputs arrive validated and in one floating dtype (see `kernels.ops`). Scores, softmax statistics
and accumulations are formed in fp32 (fp64 for fp64 inputs, so the reference can be gradchecked);
outputs return in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .candidate_lists import CandidateList, candidate_indices

WARP_MODES = ("kept", "pruned", "all")
# The fused kernels' `WARP_MODE` constexpr for each mode; 0 means no warp output.
WARP_MODE_IDS = {mode: i + 1 for i, mode in enumerate(WARP_MODES)}


class StraightThroughMask(torch.autograd.Function):
    """`m = 1[s > 0]` forward; `dm/ds = sigmoid(s) * (1 - sigmoid(s))` backward (the release's
    surrogate). The step itself has zero gradient almost everywhere, which would leave the prune
    projections untrained."""

    @staticmethod
    def forward(ctx, logits: Tensor) -> Tensor:
        ctx.save_for_backward(logits)
        return (logits > 0).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (logits,) = ctx.saved_tensors
        sig = torch.sigmoid(logits)
        return grad * sig * (1 - sig)


def straight_through_mask(logits: Tensor) -> Tensor:
    return StraightThroughMask.apply(logits)


def _acc(x: Tensor) -> Tensor:
    """x in the accumulation dtype: fp32, or fp64 when given fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# The release's warp over pruned keys fills the kept scores with this before its softmax.
RELEASE_FILL = -1e4


def _warp_weights(z: Tensor, mask: Tensor, warp_over: str) -> Tensor:
    """The warp weights w, a softmax of z restricted by the mask's value (no gradient flows
    through the selection, as in the release):

    - "kept": over the kept keys, all keys where none is kept;
    - "pruned": the release's formula exactly, softmax of z with the kept scores filled with
      -1e4: a query that keeps every key gets the uniform mean of the warp values;
    - "all": over all keys."""
    kept = mask.detach() > 0
    if warp_over == "pruned":
        return torch.softmax(z.masked_fill(kept, RELEASE_FILL), dim=-1)
    if warp_over == "kept":
        sel = kept | ~kept.any(dim=-1, keepdim=True)
        return torch.softmax(z.masked_fill(~sel, float("-inf")), dim=-1)
    return torch.softmax(z, dim=-1)


def _topk_positions(scores: Tensor, k: int) -> Tensor:
    """Positions of the k largest scores along the last axis; ties go to the lower position.

    Ranked by scores rather than probabilities: at scale 100 many probabilities underflow to 0 in
    fp32 and would tie. A stable descending sort keeps equal scores in their original order. A NaN
    score ranks as -inf: a row of NaN scores (a NaN query) selects positions 0..k-1, and every
    selected position is a real one, as in the kernels."""
    ranked = scores.masked_fill(torch.isnan(scores), float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def _attention_weights(
    z: Tensor, s: Tensor, warp_over: str, need_warp: bool
) -> tuple[Tensor, Tensor | None]:
    """Masked attention `p * m` and, when asked, the restricted warp weights `w`."""
    p = torch.softmax(z, dim=-1)
    m = straight_through_mask(s)
    w = _warp_weights(z, m, warp_over) if need_warp else None
    return p * m, w


def reference_dynamic_attention(
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
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Dense dynamic attention: every query sees every key. Returns (out, conf, topk, warp)."""
    dtype = v.dtype
    z = scale * torch.bmm(_acc(q), _acc(k).transpose(1, 2))  # [B, Nq, Nk]
    s = prune_scale * torch.bmm(_acc(q_prune), _acc(k_prune).transpose(1, 2))  # [B, Nq, Nk]
    pm, w = _attention_weights(z, s, warp_over, warp_values is not None)
    out = torch.bmm(pm, _acc(v))
    conf = pm.sum(dim=-1)
    top = _topk_positions(z.detach(), topk) if topk > 0 else None
    warp = torch.bmm(w, _acc(warp_values)).to(warp_values.dtype) if w is not None else None
    return out.to(dtype), conf.to(dtype), top, warp


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, N, C], index [B, Nq, M] -> [B, Nq, M, C].

    Indices are clamped to [0, N) first: `kernels.ops` has checked them already (or, on a GPU,
    deferred the check), and without the clamp an index equal to N would read the next sample's
    first row through the flattened view."""
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
    kg = _gather_rows(_acc(k), idx)  # [B, Nq, M, Cqk]
    kpg = _gather_rows(_acc(k_prune), idx)  # [B, Nq, M, Cp]
    z = scale * torch.einsum("bqc,bqmc->bqm", _acc(q), kg)
    s = prune_scale * torch.einsum("bqc,bqmc->bqm", _acc(q_prune), kpg)
    pm, w = _attention_weights(z, s, warp_over, warp_values is not None)
    out = torch.einsum("bqm,bqmc->bqc", pm, _gather_rows(_acc(v), idx))
    conf = pm.sum(dim=-1)
    top = torch.gather(idx, -1, _topk_positions(z.detach(), topk)) if topk > 0 else None
    warp = None
    if w is not None:
        warp = torch.einsum("bqm,bqmc->bqc", w, _gather_rows(_acc(warp_values), idx))
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
            s = torch.bmm(_acc(q_prune), _acc(k_prune).transpose(1, 2))
        else:
            kpg = _gather_rows(_acc(k_prune), candidates.long())
            s = torch.einsum("bqc,bqmc->bqm", _acc(q_prune), kpg)
        return (prune_scale * s > 0).sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Normalisation (the SPADE modulation and the attention block's positional normalisation)
# --------------------------------------------------------------------------------------------------


def reference_positional_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Normalise every pixel of x [B, C, H, W] over its channels: subtract the channel mean, divide
    by sqrt(unbiased channel variance + eps), as the release. Computed in x's dtype, the way the
    model always ran it."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def reference_spade_modulation(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-8) -> Tensor:
    """SPADE's denormalisation `(1 + gamma) * positional_norm(x) + beta`; gamma and beta have x's
    shape (the outputs of SPADE's two convolutions)."""
    return (1 + gamma) * reference_positional_norm(x, eps) + beta
