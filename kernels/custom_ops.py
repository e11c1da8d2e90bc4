"""The dynamic attention operators as `torch.library` custom ops, so `torch.compile` traces the
generator in one graph: while Dynamo traces, `kernels.dynamic_attention` and
`kernels.candidate_attention` call `traced_dynamic_attention` / `traced_candidate_attention`
here, which run the registered ops.

The public operators validate inputs, read the provenance of a `CandidateList` (a Python object
around the tensors) and check index ranges with a host synchronisation: all things Dynamo cannot
trace.
The ops registered here wrap the operators' eager implementations whole (`eager_dynamic_attention`,
`eager_candidate_attention`), so the compiler sees one opaque node per attention block, with

- a fake-tensor implementation (output shapes and dtypes only) for tracing;
- a registered autograd formula whose backward is itself a custom op. That backward recomputes
  the eager forward on detached inputs and differentiates it, so every backend
  (reference or fused) keeps its own gradient and nothing is saved between the passes but the
  inputs (activation checkpointing of the attention, by construction);
- `dynast::candidate_attention` takes either a candidate list or the previous top-k with the kind
  of list to derive from it ("inner" or "inter"): a `CandidateList` travels as its builder's
  arguments (while `torch.compile` traces, the builders only describe a list,
  `kernels.candidates.lists`), and the builder runs again inside the op, where its range check
  and copy can read the values. The fused kernels derive the candidates from that top-k in
  registers, so no list is built (`kernels.candidates.fused`, `$DYNAST_CANDIDATES`); the
  reference builds the list.

Outputs an op cannot leave out are returned empty: top-k as [B, Nq, 0] when `topk` is 0, the warp
as [B, Nq, 0] without `warp_values`. The `traced_*` functions at the bottom turn them back into
None.

Autocast: the `traced_*` functions cast the float inputs to autocast's dtype (as the eager
operators do) before the op, and the op runs with autocast off, so a traced graph and eager mode
see the same dtypes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .call import AttentionInputs, AttentionOutput, AttentionSettings, autocast_dtype, check_topk
from .candidates.lists import PER_MATCH, CandidateList, builder_arguments, candidate_list
from .candidates.op import candidate_attention, eager_candidate_attention
from .dense.op import dynamic_attention, eager_dynamic_attention

INDEX_KINDS = ("candidates", *PER_MATCH)  # a list, or a top-k with the kind of list it derives
# The public operators, by the names `kernels` gives them: they run the registered ops below
# while torch.compile traces (their module docstrings), so this module serves as a namespace of
# the traceable operators too.
__all__ = [
    "INDEX_KINDS",
    "candidate_attention",
    "candidate_attention_backward_op",
    "candidate_attention_op",
    "dense_attention_backward_op",
    "dense_attention_op",
    "dynamic_attention",
    "traced_candidate_attention",
    "traced_dynamic_attention",
]


def _check_index_kind(index_kind: str) -> None:
    if index_kind not in INDEX_KINDS:
        raise ValueError(f"index_kind must be one of {INDEX_KINDS}, got {index_kind!r}")


def _candidates(index: Tensor, index_kind: str, height: int, width: int) -> Tensor | CandidateList:
    _check_index_kind(index_kind)
    if index_kind == "candidates":
        return index
    return candidate_list(index_kind, index, height, width)


def _pack(result: AttentionOutput, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    b, nq = q.shape[:2]
    top = result.topk
    if top is None:
        top = torch.empty(b, nq, 0, dtype=torch.int64, device=q.device)
    warp = result.warp
    if warp is None:
        warp = torch.empty(b, nq, 0, dtype=q.dtype, device=q.device)
    # Contiguous, as the fake implementation promises (the reference's top-k is a slice).
    return result.out.contiguous(), result.conf.contiguous(), top.contiguous(), warp.contiguous()


def _fake_outputs(inputs: AttentionInputs, topk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, _, v, _, _, warp_values = inputs
    b, nq = q.shape[:2]
    cw = 0 if warp_values is None else warp_values.shape[2]
    return (
        q.new_empty(b, nq, v.shape[2]),
        q.new_empty(b, nq),
        q.new_empty(b, nq, topk, dtype=torch.int64),
        q.new_empty(b, nq, cw),
    )


# --------------------------------------------------------------------------------------------------
# Forward ops
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("dynast::dense_attention", mutates_args=())
def dense_attention_op(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`kernels.dynamic_attention` as (out, conf, topk or [B, Nq, 0], warp or [B, Nq, 0])."""
    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    settings = AttentionSettings(scale, prune_scale, topk, warp_over)
    result = eager_dynamic_attention(inputs, settings, backend)
    return _pack(result, q)


@dense_attention_op.register_fake
def _dense_fake(q, k, v, q_prune, k_prune, warp_values, scale, prune_scale, topk, *_):
    return _fake_outputs(AttentionInputs(q, k, v, q_prune, k_prune, warp_values), topk)


@torch.library.custom_op("dynast::candidate_attention", mutates_args=())
def candidate_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    index: Tensor,
    warp_values: Tensor | None,
    index_kind: str,
    height: int,
    width: int,
    scale: float,
    prune_scale: float,
    topk: int,
    warp_over: str,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`kernels.candidate_attention` over `index` (index_kind "candidates": the [B, Nq, M] list;
    "inner" / "inter": the previous top-k, the list derived on the height x width query grid)."""
    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    settings = AttentionSettings(scale, prune_scale, topk, warp_over)
    listed = _candidates(index, index_kind, height, width)
    result = eager_candidate_attention(inputs, listed, settings, backend)
    return _pack(result, q)


@candidate_attention_op.register_fake
def _candidate_fake(
    q, k, v, q_prune, k_prune, index, warp_values, index_kind, height, width, *params
):
    _check_index_kind(index_kind)
    return _fake_outputs(AttentionInputs(q, k, v, q_prune, k_prune, warp_values), params[2])


# --------------------------------------------------------------------------------------------------
# Backward ops: recompute the forward with autograd on, differentiate it
# --------------------------------------------------------------------------------------------------


@contextmanager
def _autograd_recording() -> Iterator[None]:
    """Autograd on inside an op's implementation.

    The custom-op machinery runs implementations with the autograd dispatch keys excluded
    (they sit below the op's own autograd formula), so `enable_grad` alone records nothing. Lift
    that exclusion, and only it: autocast stays excluded as the caller left it."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, name))
    include = torch._C._dispatch_tls_local_include_set()
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


_Grads = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _recompute_grads(
    forward: Callable[[AttentionInputs], AttentionOutput],
    inputs: AttentionInputs,
    grad_out: Tensor,
    grad_conf: Tensor,
    grad_warp: Tensor,
) -> _Grads:
    """Gradients of (out, conf, warp) of `forward(inputs)` with respect to the five attention
    inputs and warp_values; zeros where an input does not reach the outputs, and an empty warp
    gradient without warp_values."""
    with _autograd_recording():
        leaves = inputs.map(lambda x: x.detach().requires_grad_())
        result = forward(leaves)
        pairs = [(result.out, grad_out), (result.conf, grad_conf)]
        if result.warp is not None:
            pairs.append((result.warp, grad_warp))
        pairs = [(o, g) for o, g in pairs if o.requires_grad]
        wrt = [x for x in leaves if x is not None]
        grads = torch.autograd.grad(
            [o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True
        )
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, grads, strict=True)]
    if inputs.warp_values is None:
        q = inputs.q
        grads.append(q.new_empty(q.shape[0], q.shape[1], 0))
    # Contiguous, as the fake implementation promises (autograd may hand back transposes).
    return tuple(g.detach().contiguous() for g in grads)


def _fake_grads(inputs: AttentionInputs) -> _Grads:
    q = inputs.q
    if inputs.warp_values is None:
        inputs = inputs._replace(warp_values=q.new_empty(q.shape[0], q.shape[1], 0))
    return tuple(x.new_empty(x.shape) for x in inputs)


@torch.library.custom_op("dynast::dense_attention_backward", mutates_args=())
def dense_attention_backward_op(
    grad_out: Tensor,
    grad_conf: Tensor,
    grad_warp: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    warp_values: Tensor | None,
    scale: float,
    prune_scale: float,
    warp_over: str,
    backend: str,
) -> _Grads:
    """(dq, dk, dv, dq_prune, dk_prune, dwarp_values or [B, Nq, 0]) of `dynast::dense_attention`."""

    # The top-k carries no gradient: leave it out of the recomputation.
    settings = AttentionSettings(scale, prune_scale, 0, warp_over)

    def forward(inputs: AttentionInputs) -> AttentionOutput:
        return eager_dynamic_attention(inputs, settings, backend)

    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    return _recompute_grads(forward, inputs, grad_out, grad_conf, grad_warp)


@dense_attention_backward_op.register_fake
def _dense_backward_fake(_go, _gc, _gw, q, k, v, q_prune, k_prune, warp_values, *_):
    return _fake_grads(AttentionInputs(q, k, v, q_prune, k_prune, warp_values))


@torch.library.custom_op("dynast::candidate_attention_backward", mutates_args=())
def candidate_attention_backward_op(
    grad_out: Tensor,
    grad_conf: Tensor,
    grad_warp: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    index: Tensor,
    warp_values: Tensor | None,
    index_kind: str,
    height: int,
    width: int,
    scale: float,
    prune_scale: float,
    warp_over: str,
    backend: str,
) -> _Grads:
    """(dq, dk, dv, dq_prune, dk_prune, dwarp_values or [B, Nq, 0]) of
    `dynast::candidate_attention`; the candidate list is derived again from `index`."""
    listed = _candidates(index, index_kind, height, width)
    settings = AttentionSettings(scale, prune_scale, 0, warp_over)

    def forward(inputs: AttentionInputs) -> AttentionOutput:
        return eager_candidate_attention(inputs, listed, settings, backend)

    inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
    return _recompute_grads(forward, inputs, grad_out, grad_conf, grad_warp)


@candidate_attention_backward_op.register_fake
def _candidate_backward_fake(
    grad_out, grad_conf, grad_warp, q, k, v, q_prune, k_prune, index, warp_values, *_
):
    return _fake_grads(AttentionInputs(q, k, v, q_prune, k_prune, warp_values))


# --------------------------------------------------------------------------------------------------
# Autograd formulas
# --------------------------------------------------------------------------------------------------


def _setup_dense(ctx, inputs, output) -> None:
    q, k, v, q_prune, k_prune, warp_values, scale, prune_scale, _, warp_over, backend = inputs
    ctx.save_for_backward(q, k, v, q_prune, k_prune, warp_values)
    ctx.params = (scale, prune_scale, warp_over, backend)


def _none_without(warp_values: Tensor | None, grad: Tensor) -> Tensor | None:
    return None if warp_values is None else grad


def _dense_backward(ctx, grad_out, grad_conf, _grad_topk, grad_warp):
    saved = ctx.saved_tensors
    grads = dense_attention_backward_op(grad_out, grad_conf, grad_warp, *saved, *ctx.params)
    return (*grads[:5], _none_without(saved[5], grads[5]), None, None, None, None, None)


dense_attention_op.register_autograd(_dense_backward, setup_context=_setup_dense)


def _setup_candidates(ctx, inputs, output) -> None:
    q, k, v, q_prune, k_prune, index, warp_values = inputs[:7]
    index_kind, height, width, scale, prune_scale, _, warp_over, backend = inputs[7:]
    ctx.save_for_backward(q, k, v, q_prune, k_prune, index, warp_values)
    ctx.params = (index_kind, height, width, scale, prune_scale, warp_over, backend)


def _candidate_backward(ctx, grad_out, grad_conf, _grad_topk, grad_warp):
    saved = ctx.saved_tensors
    grads = candidate_attention_backward_op(grad_out, grad_conf, grad_warp, *saved, *ctx.params)
    warp_grad = _none_without(saved[6], grads[5])
    return (*grads[:5], None, warp_grad, *([None] * 8))


candidate_attention_op.register_autograd(_candidate_backward, setup_context=_setup_candidates)


# --------------------------------------------------------------------------------------------------
# What the public operators run while torch.compile traces
# --------------------------------------------------------------------------------------------------


def _cast_to_common(inputs: AttentionInputs) -> AttentionInputs:
    """Inputs cast to autocast's dtype when autocast is on for their device (as the eager
    operators do inside the op); otherwise unchanged, and the op's own validation names any
    mismatch."""
    dtype = autocast_dtype(inputs.q.device.type)
    if dtype is None:
        return inputs
    return inputs.map(lambda x: x if x.dtype == dtype else x.to(dtype))


def _unpack(outputs, topk: int, warp_values: Tensor | None) -> AttentionOutput:
    out, conf, top, warp = outputs
    return AttentionOutput(
        out=out,
        conf=conf,
        topk=top if topk > 0 else None,
        warp=warp if warp_values is not None else None,
    )


def traced_dynamic_attention(
    inputs: AttentionInputs, settings: AttentionSettings, backend: str
) -> AttentionOutput:
    """`kernels.dynamic_attention` through the `dynast::dense_attention` op (traceable)."""
    check_topk(settings.topk)
    floats, settings = _cast_to_common(inputs), settings.as_floats()
    with torch.autocast(inputs.q.device.type, enabled=False):
        outputs = dense_attention_op(
            *floats,
            settings.scale,
            settings.prune_scale,
            settings.topk,
            settings.warp_over,
            backend,
        )
    return _unpack(outputs, settings.topk, inputs.warp_values)


def traced_candidate_attention(
    inputs: AttentionInputs,
    candidates: Tensor | CandidateList,
    settings: AttentionSettings,
    backend: str,
) -> AttentionOutput:
    """`kernels.candidate_attention` through the `dynast::candidate_attention` op (traceable).

    `candidates` is a [B, Nq, M] list, or a `CandidateList`, which the op builds again from its
    builder's arguments."""
    check_topk(settings.topk)
    if isinstance(candidates, CandidateList):
        kind, index, height, width = builder_arguments(candidates)
    elif isinstance(candidates, Tensor):
        index, kind, height, width = candidates, "candidates", 0, 0
    else:
        raise ValueError(
            f"candidates must be a torch.Tensor or a CandidateList, got {type(candidates).__name__}"
        )
    floats, settings = _cast_to_common(inputs), settings.as_floats()
    with torch.autocast(inputs.q.device.type, enabled=False):
        outputs = candidate_attention_op(
            *floats[:5],
            index,
            floats.warp_values,
            kind,
            height,
            width,
            settings.scale,
            settings.prune_scale,
            settings.topk,
            settings.warp_over,
            backend,
        )
    return _unpack(outputs, settings.topk, inputs.warp_values)
