"""The public dense operator `dynamic_attention`: validation, dtype policy and backend dispatch.

`backend="torch"` runs the reference (`kernels.dense.reference`), `"triton"` the fused kernels
(`kernels.dense.fused`), `"auto"` Triton for CUDA tensors and the reference elsewhere. The fused
backend is imported at its first call, so that CPU-only users never load Triton and
`TRITON_INTERPRET` is read when the kernels are first needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..call import AttentionInputs, AttentionOutput, check_call, to_common_dtype, use_triton
from .reference import reference_dynamic_attention


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
    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    settings = {"scale": scale, "prune_scale": prune_scale, "topk": topk, "warp_over": warp_over}
    check_call(inputs, **settings, backend=backend)
    if topk > k.shape[1]:
        raise ValueError(f"topk ({topk}) must not exceed the key count Nk ({k.shape[1]})")
    inputs = to_common_dtype(inputs)
    settings |= {"scale": float(scale), "prune_scale": float(prune_scale)}
    if use_triton(backend, q):
        from .fused import attention
    else:
        attention = reference_dynamic_attention
    # Scores must stay fp32 in the reference: keep autocast from recasting its matmuls.
    with torch.autocast(q.device.type, enabled=False):
        out, conf, top, warp = attention(*inputs[:5], warp_values=inputs.warp_values, **settings)
    return AttentionOutput(out=out, conf=conf, topk=top, warp=warp)
