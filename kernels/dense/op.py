"""The public dense operator `dynamic_attention`: validation, dtype policy and backend dispatch.

`backend="torch"` runs the reference (`kernels.dense.reference`), `"triton"` the fused kernels
(`kernels.dense.fused`), `"auto"` Triton for CUDA tensors and the reference elsewhere. The fused
backend is imported at its first call, so that CPU-only users never load Triton and
`TRITON_INTERPRET` is read when the kernels are first needed. While `torch.compile` traces, the
operator runs as one op registered with torch.library (`kernels.custom_ops`), whose
implementation is `eager_dynamic_attention`: Dynamo cannot trace the checks.
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
    settings = AttentionSettings(scale, prune_scale, topk, warp_over)
    if torch.compiler.is_compiling():
        from ..custom_ops import traced_dynamic_attention

        return traced_dynamic_attention(inputs, settings, backend)
    return eager_dynamic_attention(inputs, settings, backend)


def eager_dynamic_attention(
    inputs: AttentionInputs, settings: AttentionSettings, backend: str
) -> AttentionOutput:
    """`dynamic_attention` on the call type, run eagerly."""
    check_call(inputs, settings, backend)
    nk = inputs.k.shape[1]
    if settings.topk > nk:
        raise ValueError(f"topk ({settings.topk}) must not exceed the key count Nk ({nk})")
    q = inputs.q
    inputs, settings = to_common_dtype(inputs), settings.as_floats()
    fused = use_triton(backend, q)
    # Scores must stay fp32 in the reference: keep autocast from recasting its matmuls.
    with torch.autocast(q.device.type, enabled=False):
        if fused:
            from .fused import attention

            out, conf, top, warp = attention(inputs, settings)
        else:
            out, conf, top, warp = reference_dynamic_attention(
                *inputs[:5], warp_values=inputs.warp_values, **settings.keywords()
            )
    return AttentionOutput(out=out, conf=conf, topk=top, warp=warp)
