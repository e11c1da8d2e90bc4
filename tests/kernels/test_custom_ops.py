"""The attention operators registered with torch.library (kernels.custom_ops): `opcheck` (schema,
fake-tensor implementation, autograd registration, AOT dispatch), and the same outputs and
gradients as the public operators they wrap, through what the public operators run while
torch.compile traces (`traced_dynamic_attention`, `traced_candidate_attention`)."""

from __future__ import annotations

import pytest
import torch
from _assert import assert_close

import kernels
from kernels import custom_ops
from kernels.call import AttentionInputs, AttentionSettings
from kernels.candidates import candidate_list

B, H, W, C, CP, CV, CW, TOPK = 2, 4, 6, 6, 3, 5, 3, 2
N = H * W


def _floats(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    """q, k, v, q_prune, k_prune, warp_values on an H x W grid (queries and keys alike)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, N, C), (B, N, C), (B, N, CV), (B, N, CP), (B, N, CP), (B, N, CW)]
    # Prune logits kept away from 0 by the random scale: the mask's step is not differentiable.
    return [torch.randn(*s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _index(kind: str, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "candidates":
        return torch.randint(0, N, (B, N, 7), generator=gen)
    if kind == "inner":
        return torch.randint(0, N, (B, N, TOPK), generator=gen)
    coarse = (H // 2) * (W // 2)
    return torch.randint(0, coarse, (B, coarse, TOPK), generator=gen)


@pytest.mark.parametrize(
    ("topk", "with_warp"),
    [pytest.param(2, True, id="topk2-warp"), pytest.param(0, False, id="topk0-nowarp")],
)
def test_dense_op_passes_opcheck(topk: int, with_warp: bool) -> None:
    q, k, v, qp, kp, wv = _floats()
    args = (q, k, v, qp, kp, wv if with_warp else None, 0.5, 2.0, topk, "kept", "torch")
    torch.library.opcheck(custom_ops.dense_attention_op, args)


@pytest.mark.parametrize("kind", ["candidates", "inner", "inter"])
def test_candidate_op_passes_opcheck(kind: str) -> None:
    q, k, v, qp, kp, wv = _floats()
    grid = (0, 0) if kind == "candidates" else (H, W)
    args = (q, k, v, qp, kp, _index(kind), wv, kind, *grid, 3.0, 1.0, TOPK, "pruned", "torch")
    torch.library.opcheck(custom_ops.candidate_attention_op, args)


@pytest.mark.parametrize("with_warp", [True, False], ids=["warp", "nowarp"])
def test_backward_ops_pass_opcheck(with_warp: bool) -> None:
    q, k, v, qp, kp, wv = (x.detach() for x in _floats())
    wv = wv if with_warp else None
    gen = torch.Generator().manual_seed(2)
    grads = [
        torch.randn(B, N, c, generator=gen, dtype=q.dtype) for c in (CV, CW if with_warp else 0)
    ]
    g_out, g_warp = grads
    g_conf = torch.randn(B, N, generator=gen, dtype=q.dtype)
    common = (g_out, g_conf, g_warp, q, k, v, qp, kp)
    torch.library.opcheck(
        custom_ops.dense_attention_backward_op, (*common, wv, 0.5, 2.0, "kept", "torch")
    )
    args = (*common, _index("inner"), wv, "inner", H, W, 3.0, 1.0, "all", "torch")
    torch.library.opcheck(custom_ops.candidate_attention_backward_op, args)


def _traced(name: str):
    """`kernels.<name>`'s call through its registered op, with the public operator's signature."""
    traced = getattr(custom_ops, f"traced_{name}")

    def call(q, k, v, q_prune, k_prune, *candidates, warp_values=None, backend="auto", **kw):
        inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
        return traced(inputs, *candidates, AttentionSettings(**kw), backend)

    return call


traced_dynamic_attention = _traced("dynamic_attention")
traced_candidate_attention = _traced("candidate_attention")


def _outputs_and_grads(fn, floats, *extra, **kwargs):
    result = fn(*floats[:5], *extra, warp_values=floats[5], **kwargs)
    gen = torch.Generator().manual_seed(7)
    loss = sum(
        (torch.randn(x.shape, generator=gen, dtype=x.dtype) * x).sum()
        for x in (result.out, result.conf, result.warp)
    )
    grads = torch.autograd.grad(loss, floats)
    return result, grads


@pytest.mark.parametrize("kind", ["dense", "candidates", "inner", "inter"])
def test_wrappers_match_the_public_ops(kind: str) -> None:
    floats = _floats(seed=3)
    common = {"scale": 3.0, "prune_scale": 1.5, "topk": TOPK, "warp_over": "all"}
    if kind == "dense":
        got = _outputs_and_grads(traced_dynamic_attention, floats, **common)
        want = _outputs_and_grads(kernels.dynamic_attention, floats, **common)
    else:
        index = _index(kind, seed=4)
        listed = index if kind == "candidates" else candidate_list(kind, index, H, W)
        got = _outputs_and_grads(traced_candidate_attention, floats, listed, **common)
        want = _outputs_and_grads(kernels.candidate_attention, floats, listed, **common)
    (got_result, got_grads), (want_result, want_grads) = got, want
    for name in ("out", "conf", "warp"):
        assert_close(getattr(got_result, name), getattr(want_result, name), name=name)
    assert torch.equal(got_result.topk, want_result.topk)
    names = ("q", "k", "v", "q_prune", "k_prune", "warp_values")
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        assert_close(g, w, name=f"d{name}")


def test_absent_outputs_are_none_and_autocast_sets_the_dtype() -> None:
    q, k, v, qp, kp, _ = (x.detach().float() for x in _floats())
    result = traced_dynamic_attention(q, k, v, qp, kp, scale=1.0, prune_scale=1.0)
    assert result.topk is None and result.warp is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = traced_dynamic_attention(q, k, v, qp, kp, scale=1.0, prune_scale=1.0, topk=1)
        want = kernels.dynamic_attention(q, k, v, qp, kp, scale=1.0, prune_scale=1.0, topk=1)
    assert got.out.dtype == want.out.dtype == torch.bfloat16
    assert torch.equal(got.out, want.out) and torch.equal(got.topk, want.topk)


def test_the_fused_backend_runs_inside_the_op() -> None:
    """backend="triton" reaches the fused kernels (the CPU interpreter here) through the op."""
    floats = [x.detach().float().requires_grad_() for x in _floats(seed=5)]
    index = _index("inner", seed=6)
    common = {"scale": 3.0, "prune_scale": 1.0, "topk": TOPK, "backend": "triton"}
    listed = candidate_list("inner", index, H, W)
    got, got_grads = _outputs_and_grads(traced_candidate_attention, floats, listed, **common)
    want, want_grads = _outputs_and_grads(kernels.candidate_attention, floats, listed, **common)
    assert torch.equal(got.out, want.out) and torch.equal(got.topk, want.topk)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close(g, w, name="fused gradient")


def test_bad_arguments_are_named() -> None:
    q, k, v, qp, kp, _ = (x.detach() for x in _floats())
    with pytest.raises(ValueError, match="kind must be one of"):
        candidate_list("outer", torch.zeros(1, 4, 1, dtype=torch.int64), 2, 2)
    with pytest.raises(ValueError, match=r"candidates must be a torch\.Tensor or a CandidateList"):
        traced_candidate_attention(q, k, v, qp, kp, [1, 2], scale=1.0, prune_scale=1.0)
    with pytest.raises(ValueError, match="topk must be a non-negative int"):
        traced_dynamic_attention(q, k, v, qp, kp, scale=1.0, prune_scale=1.0, topk=-1)
    with pytest.raises(ValueError, match="index_kind must be one of"):
        custom_ops.candidate_attention_op(
            q, k, v, qp, kp, _index("inner"), None, "outer", H, W, 1.0, 1.0, 0, "kept", "torch"
        )
