"""Candidate attention on the CPU without the (queries x candidates x channels) gathers.

The reference (`kernels.candidates.reference`) gathers the keys, prune keys and values of every
candidate into [B, Nq, M, C] tensors and contracts them with einsum (a batched 1 x C x M product
per query). At the synthetic-64 training size that is most of the attention time of the generator,
and autograd keeps the gathers alive until the backward pass. Here the M candidates are visited one
at a time: candidate slot `j` of every query is one `index_select` of [B * Nq, C] rows on the
flattened key tensor, reduced at once to a score column, so no more than one [B * Nq, C] gather
exists at a time. The backward pass is written out (docs/method.md section 4) and gathers again
instead of saving gathers; gradients of the keys and values are scattered back with `index_add_`.

Same arguments and results as the reference: scores, softmax statistics and sums in fp32 (fp64
for fp64 inputs), ties of the top-k to the lower candidate position, the straight-through mask,
the warp weights of `kernels.dense.reference.warp_weights` (kept with its empty-set fallback, the
release's pruned formula, all). Only the summation order differs, so outputs and gradients agree
with the reference within fp32 rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dense.reference import topk_positions, upcast, warp_weights


def _flat_rows(index: Tensor, keys: int) -> Tensor:
    """index [B, Nq, M] into a [B, Nk, C] tensor -> rows [B * Nq, M] of its [B * Nk, C] view."""
    b = index.shape[0]
    offsets = torch.arange(b, device=index.device).view(b, 1, 1) * keys
    # Clamped as the reference's gather is: an index equal to Nk must not reach the next sample.
    return (index.long().clamp(0, keys - 1) + offsets).flatten(0, 1)


def _scores(query: Tensor, keys: Tensor, rows: Tensor, factor: float) -> Tensor:
    """factor * <query_i, keys[rows[i, j]]> for every query i and slot j -> [B * Nq, M]."""
    columns = [(query * keys.index_select(0, rows[:, j])).sum(dim=-1) for j in range(rows.shape[1])]
    return factor * torch.stack(columns, dim=-1)


def _weighted_sum(weights: Tensor, values: Tensor, rows: Tensor) -> Tensor:
    """sum_j weights[i, j] * values[rows[i, j]] -> [B * Nq, C]."""
    total = weights[:, :1] * values.index_select(0, rows[:, 0])
    for j in range(1, rows.shape[1]):
        total = total.addcmul_(weights[:, j : j + 1], values.index_select(0, rows[:, j]))
    return total


def _slot_products(grad: Tensor, values: Tensor, rows: Tensor) -> Tensor:
    """<grad_i, values[rows[i, j]]> -> [B * Nq, M] (the gradient of a weighted sum's weights)."""
    return _scores(grad, values, rows, 1.0)


def _scatter_weighted(grad: Tensor, weights: Tensor, rows: Tensor, size: int) -> Tensor:
    """Gradient of `_weighted_sum` for the values: sum over (i, j) with rows[i, j] = r of
    weights[i, j] * grad_i -> [size, C]."""
    out = grad.new_zeros(size, grad.shape[-1])
    for j in range(rows.shape[1]):
        out.index_add_(0, rows[:, j], grad * weights[:, j : j + 1])
    return out


def _softmax_backward(probs: Tensor, grad: Tensor) -> Tensor:
    return probs * (grad - (probs * grad).sum(dim=-1, keepdim=True))


class _CandidateAttention(torch.autograd.Function):
    """Flattened, accumulation-dtype inputs: q [R, Cqk], k [Rk, Cqk], v [Rk, Cv], qp [R, Cp],
    kp [Rk, Cp], w [Rk, Cw] or None, rows [R, M]. Returns out [R, Cv], conf [R], z [R, M] (no
    gradient, for the top-k) and warp [R, Cw] (empty when w is None)."""

    @staticmethod
    def forward(ctx, q, k, v, qp, kp, w, rows, scale, prune_scale, warp_over):
        z = _scores(q, k, rows, scale)
        s = _scores(qp, kp, rows, prune_scale)
        p = torch.softmax(z, dim=-1)
        m = (s > 0).to(p.dtype)
        pm = p * m
        out = _weighted_sum(pm, v, rows)
        conf = pm.sum(dim=-1)
        w_weights = warp_free = None
        warp = q.new_empty(q.shape[0], 0)
        if w is not None:
            w_weights = warp_weights(z, m, warp_over)
            warp = _weighted_sum(w_weights, w, rows)
            if warp_over == "pruned":
                # The release fills the kept scores with a constant: no gradient reaches them.
                warp_free = m == 0
        ctx.save_for_backward(q, k, v, qp, kp, w, rows, s, p, m, w_weights, warp_free)
        ctx.scales = (scale, prune_scale)
        ctx.mark_non_differentiable(z)
        return out, conf, z, warp

    @staticmethod
    def backward(ctx, d_out, d_conf, _d_z, d_warp):
        q, k, v, qp, kp, w, rows, s, p, m, w_weights, warp_free = ctx.saved_tensors
        scale, prune_scale = ctx.scales
        need = ctx.needs_input_grad
        # d(p * m): through out = sum_j (p m)_j v_j and conf = sum_j (p m)_j.
        d_pm = d_conf.unsqueeze(-1).expand_as(p)
        if d_out is not None:
            d_pm = d_pm + _slot_products(d_out, v, rows)
        dv = _scatter_weighted(d_out, p * m, rows, v.shape[0]) if need[2] else None
        dz = _softmax_backward(p, d_pm * m)
        sig = torch.sigmoid(s)
        ds = d_pm * p * sig * (1 - sig)  # straight-through mask
        dw = None
        if w_weights is not None and d_warp is not None:
            dz_warp = _softmax_backward(w_weights, _slot_products(d_warp, w, rows))
            if warp_free is not None:
                dz_warp = dz_warp * warp_free
            dz = dz + dz_warp
            if need[5]:
                dw = _scatter_weighted(d_warp, w_weights, rows, w.shape[0])
        dz, ds = scale * dz, prune_scale * ds
        dq = _weighted_sum(dz, k, rows) if need[0] else None
        dk = _scatter_weighted(q, dz, rows, k.shape[0]) if need[1] else None
        dqp = _weighted_sum(ds, kp, rows) if need[3] else None
        dkp = _scatter_weighted(qp, ds, rows, kp.shape[0]) if need[4] else None
        return dq, dk, dv, dqp, dkp, dw, None, None, None, None


def cpu_candidate_attention(
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
    """`reference_candidate_attention` without the gathers (arguments and results identical).

    Inputs arrive validated by `kernels.candidates.op`. Returns (out, conf, topk, warp)."""
    b, nq, _ = q.shape
    nk = k.shape[1]
    rows = _flat_rows(candidates, nk)  # [B * Nq, M]

    def flat(x: Tensor) -> Tensor:
        return upcast(x).reshape(-1, x.shape[-1])

    w = flat(warp_values) if warp_values is not None else None
    out, conf, z, warp = _CandidateAttention.apply(
        flat(q), flat(k), flat(v), flat(q_prune), flat(k_prune), w, rows,
        scale, prune_scale, warp_over,
    )  # fmt: skip
    top = None
    if topk > 0:
        positions = topk_positions(z.view(b, nq, -1), topk)
        top = torch.gather(candidates.long(), -1, positions)
    out = out.view(b, nq, -1).to(v.dtype)
    conf = conf.view(b, nq).to(v.dtype)
    warp_out = None
    if warp_values is not None:
        warp_out = warp.view(b, nq, -1).to(warp_values.dtype)
    return out, conf, top, warp_out
