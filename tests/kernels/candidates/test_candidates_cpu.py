"""The gather-free CPU candidate attention against the reference: outputs, top-k and every input
gradient, for random (with duplicates), inter-scale and inner-scale candidate lists, each warp
mode, fp64 (tight) and fp32 (fp32 rounding); and the dispatch of `backend="auto"` on the CPU."""

from __future__ import annotations

import pytest
import torch
from _assert import assert_close

import kernels
from kernels.candidates import cpu as candidates_cpu
from kernels.candidates.cpu import cpu_candidate_attention
from kernels.candidates.reference import reference_candidate_attention

B, H, W = 2, 6, 10
N = H * W
NAMES = ("q", "k", "v", "q_prune", "k_prune", "warp_values")


def _candidates(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "inter":
        return kernels.inter_scale_candidates(
            torch.randint(0, N // 4, (B, N // 4, 3), generator=g), H, W
        )
    if kind == "inner":
        return kernels.inner_scale_candidates(torch.randint(0, N, (B, N, 3), generator=g), H, W)
    cand = torch.randint(0, N, (B, N, 9), generator=g)
    cand[:, :, -1] = cand[:, :, 0]  # a duplicate in every row
    return cand


def _inputs(candidates, cqk, cp, cv, dtype, seed=0, margin=1e-3):
    """Random inputs whose candidate prune logits keep a margin from 0 (the mask is a step: the
    two summation orders must agree on it)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        q, k = (torch.randn(B, N, cqk, generator=g, dtype=dtype) for _ in range(2))
        qp, kp = (torch.randn(B, N, cp, generator=g, dtype=dtype) for _ in range(2))
        s = torch.gather(qp @ kp.transpose(1, 2), 2, candidates)
        if s.abs().min() > margin:
            break
    v = torch.randn(B, N, cv, generator=g, dtype=dtype)
    wv = torch.randn(B, N, 3, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v, qp, kp, wv)]


def _compare(inputs, candidates, *, scale, warp_over, tol):
    kwargs = dict(scale=scale, prune_scale=0.7, topk=3, warp_over=warp_over)
    q, k, v, qp, kp, wv = inputs
    got = cpu_candidate_attention(q, k, v, qp, kp, candidates, warp_values=wv, **kwargs)
    want = reference_candidate_attention(q, k, v, qp, kp, candidates, warp_values=wv, **kwargs)
    for name, i in (("out", 0), ("conf", 1), ("warp", 3)):
        assert got[i].dtype == want[i].dtype
        assert_close(got[i], want[i], name=name, **tol)
    assert got[2].dtype == torch.int64
    assert torch.equal(got[2], want[2]), "topk differs from the reference"

    g = torch.Generator().manual_seed(11)
    ups = [torch.randn(want[i].shape, generator=g, dtype=want[i].dtype) for i in (0, 1, 3)]

    def loss(res):
        return sum((res[i] * u).sum() for i, u in zip((0, 1, 3), ups, strict=True))

    got_grads = torch.autograd.grad(loss(got), inputs)
    want_grads = torch.autograd.grad(loss(want), inputs)
    for name, a, e in zip(NAMES, got_grads, want_grads, strict=True):
        assert_close(a, e, name=f"d{name}", **tol)


@pytest.mark.parametrize("warp_over", ("kept", "pruned", "all"))
@pytest.mark.parametrize("kind", ("random-dup", "inter", "inner"))
def test_matches_reference_in_float64(kind, warp_over):
    candidates = _candidates(kind)
    inputs = _inputs(candidates, 48, 16, 80, torch.float64)
    _compare(inputs, candidates, scale=3.0, warp_over=warp_over, tol={})


@pytest.mark.parametrize(
    "cqk,cp,cv,scale",
    [
        pytest.param(20, 4, 16, 1.0, id="Cqk20-Cp4-Cv16-scale1"),
        pytest.param(80, 16, 48, 0.25, id="Cqk80-Cp16-Cv48-scale0.25"),
    ],
)
def test_matches_reference_within_fp32_rounding(cqk, cp, cv, scale):
    candidates = _candidates("inner")
    inputs = _inputs(candidates, cqk, cp, cv, torch.float32, seed=1, margin=1e-2)
    # Scores are sums of cqk products of unit-variance terms: their rounding grows with
    # sqrt(cqk) * scale, and the softmax passes it on to every output and gradient.
    rounding = 1e-6 * scale * cqk**0.5
    _compare(
        inputs, candidates, scale=scale, warp_over="kept", tol={"atol": 50 * rounding, "rtol": 1e-4}
    )


def test_rows_with_every_and_no_candidate_kept():
    candidates = _candidates("random-dup")
    q, k, v, qp, kp, wv = _inputs(candidates, 16, 4, 8, torch.float64)
    with torch.no_grad():
        qp[0, :5] = 0.0
        qp[0, :5, 0] = 1.0
        kp[0, :, 0] = 1.0  # query rows 0..4 of sample 0: every candidate kept
        qp[1, :5] = 0.0
        qp[1, :5, 0] = -1.0
        kp[1, :, 0] = 1.0  # query rows 0..4 of sample 1: none kept (warp falls back to all)
        kp[:, :, 1:] = 0.0
    for warp_over in ("kept", "pruned"):
        _compare([q, k, v, qp, kp, wv], candidates, scale=2.0, warp_over=warp_over, tol={})


def test_auto_backend_on_cpu_runs_the_gather_free_path(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(True)
        return cpu_candidate_attention(*args, **kwargs)

    monkeypatch.setattr(candidates_cpu, "cpu_candidate_attention", spy)
    candidates = _candidates("inter")
    q, k, v, qp, kp, wv = _inputs(candidates, 16, 4, 8, torch.float32)
    kwargs = dict(scale=1.0, prune_scale=1.0, topk=2, warp_values=wv)
    auto = kernels.candidate_attention(q, k, v, qp, kp, candidates, backend="auto", **kwargs)
    assert calls, "backend='auto' on CPU tensors did not use kernels.candidates.cpu"
    calls.clear()
    ref = kernels.candidate_attention(q, k, v, qp, kp, candidates, backend="torch", **kwargs)
    assert not calls, "backend='torch' must stay the plain reference"
    assert_close(auto.out, ref.out, name="out")
    assert torch.equal(auto.topk, ref.topk)
