"""Plain PyTorch reference of dense dynamic attention: the specification the kernels meet.

Method.md section 4, written for clarity rather than speed. Every query sees every key:
`z = scale * Q K^T` is a (queries x keys) matrix. The recipe from the scores on (softmax, the
straight-through mask, the warp weights, the top-k) is shared with the candidate reference
(`kernels.candidates.reference`), which applies it to the keys a list names.

Inputs arrive validated and in one floating dtype (`kernels.call`). Scores, softmax statistics
and accumulations are formed in fp32 (fp64 for fp64 inputs, so the reference can be gradchecked);
outputs return in the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def upcast(x: Tensor) -> Tensor:
    """x in the accumulation dtype: fp32, or fp64 when given fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# The release's warp over pruned keys fills the kept scores with this before its softmax.
RELEASE_FILL = -1e4


def warp_weights(z: Tensor, mask: Tensor, warp_over: str) -> Tensor:
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


def topk_positions(scores: Tensor, k: int) -> Tensor:
    """Positions of the k largest scores along the last axis; ties go to the lower position.

    Ranked by scores rather than probabilities: at scale 100 many probabilities underflow to 0 in
    fp32 and would tie. A stable descending sort keeps equal scores in their original order. A NaN
    score ranks as -inf: a row of NaN scores (a NaN query) selects positions 0..k-1, and every
    selected position is a real one, as in the kernels."""
    ranked = scores.masked_fill(torch.isnan(scores), float("-inf"))
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices
    return order[..., :k]


def attention_weights(
    z: Tensor, s: Tensor, warp_over: str, need_warp: bool
) -> tuple[Tensor, Tensor | None]:
    """Masked attention `p * m` and, when asked, the restricted warp weights `w`."""
    p = torch.softmax(z, dim=-1)
    m = straight_through_mask(s)
    w = warp_weights(z, m, warp_over) if need_warp else None
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
    z = scale * torch.bmm(upcast(q), upcast(k).transpose(1, 2))  # [B, Nq, Nk]
    s = prune_scale * torch.bmm(upcast(q_prune), upcast(k_prune).transpose(1, 2))  # [B, Nq, Nk]
    pm, w = attention_weights(z, s, warp_over, warp_values is not None)
    out = torch.bmm(pm, upcast(v))
    conf = pm.sum(dim=-1)
    top = topk_positions(z.detach(), topk) if topk > 0 else None
    warp = torch.bmm(w, upcast(warp_values)).to(warp_values.dtype) if w is not None else None
    return out.to(dtype), conf.to(dtype), top, warp
