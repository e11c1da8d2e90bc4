"""The PyTorch reference operators (`kernels.dense.reference`, `kernels.candidates.reference`)
against a brute-force per-query loop, and the API's errors (`kernels.call` and the operators).

The brute force follows docs/method.md section 4 literally, one query at a time, in float64; every
output and every input gradient of the reference must match it.
"""

from __future__ import annotations

import pytest
import torch
from _assert import assert_close

import kernels
from kernels.dense.reference import straight_through_mask

B, H, W = 2, 6, 10
N = H * W
WARP_MODES = ("kept", "pruned", "all")


def _step_with_sigmoid_grad(s: torch.Tensor) -> torch.Tensor:
    # Written differently from the reference's autograd.Function on purpose.
    sig = torch.sigmoid(s)
    return (s > 0).to(s.dtype) + (sig - sig.detach())


def brute_force(q, k, v, qp, kp, wv, candidates, *, scale, prune_scale, topk, warp_over):
    outs, confs, tops, warps = [], [], [], []
    for b in range(q.shape[0]):
        for i in range(q.shape[1]):
            keys = list(range(k.shape[1])) if candidates is None else candidates[b, i].tolist()
            idx = torch.tensor(keys)
            z = scale * (k[b, idx] @ q[b, i])
            s = prune_scale * (kp[b, idx] @ qp[b, i])
            p = torch.softmax(z, dim=0)
            m = _step_with_sigmoid_grad(s)
            outs.append((p * m) @ v[b, idx])
            confs.append((p * m).sum())
            order = sorted(range(len(keys)), key=lambda t: (-float(z[t].detach()), t))[:topk]
            tops.append([keys[t] for t in order])
            kept = s.detach() > 0
            if warp_over == "pruned":  # the release, transcribed: kept scores filled, then softmax
                w = torch.softmax(torch.where(kept, torch.full_like(z, -1e4), z), dim=0)
                warps.append(w @ wv[b, idx])
                continue
            sel = {"kept": kept, "all": torch.ones_like(kept)}[warp_over]
            if not sel.any():
                sel = torch.ones_like(kept)
            w = torch.softmax(z[sel], dim=0)
            warps.append(w @ wv[b, idx][sel])
    shape = q.shape[:2]
    return (
        torch.stack(outs).reshape(*shape, -1),
        torch.stack(confs).reshape(shape),
        torch.tensor(tops).reshape(*shape, topk),
        torch.stack(warps).reshape(*shape, -1),
    )


def _inputs(seed, cqk, cp, cv, candidates=None, margin=1e-3, dtype=torch.float64):
    """Random inputs whose prune logits keep a margin from 0, so the mask is the same whichever
    order the sums are taken in."""
    g = torch.Generator().manual_seed(seed)
    while True:
        q, k = (torch.randn(B, N, cqk, generator=g, dtype=dtype) for _ in range(2))
        qp, kp = (torch.randn(B, N, cp, generator=g, dtype=dtype) for _ in range(2))
        s = qp @ kp.transpose(1, 2)
        if candidates is not None:
            s = torch.gather(s, 2, candidates)
        if s.abs().min() > margin:
            break
    v = torch.randn(B, N, cv, generator=g, dtype=dtype)
    wv = torch.randn(B, N, 3, generator=g, dtype=dtype)
    return [x.requires_grad_() for x in (q, k, v, qp, kp, wv)]


def _random_candidates(seed: int, m: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cand = torch.randint(0, N, (B, N, m), generator=g)
    cand[:, :, -1] = cand[:, :, 0]  # a duplicate in every row
    return cand


CANDIDATE_SETS = {
    "random-dup": lambda: _random_candidates(5, 9),
    "inter": lambda: kernels.inter_scale_candidates(
        torch.randint(0, N // 4, (B, N // 4, 3), generator=torch.Generator().manual_seed(6)), H, W
    ),
    "inner": lambda: kernels.inner_scale_candidates(
        torch.randint(0, N, (B, N, 3), generator=torch.Generator().manual_seed(7)), H, W
    ),
}


def _check_against_brute_force(inputs, candidates, *, scale, prune_scale, warp_over):
    q, k, v, qp, kp, wv = inputs
    kwargs = dict(scale=scale, prune_scale=prune_scale, topk=3, warp_over=warp_over)
    if candidates is None:
        res = kernels.dynamic_attention(q, k, v, qp, kp, warp_values=wv, backend="torch", **kwargs)
    else:
        res = kernels.candidate_attention(
            q, k, v, qp, kp, candidates, warp_values=wv, backend="torch", **kwargs
        )
    out, conf, top, warp = brute_force(q, k, v, qp, kp, wv, candidates, **kwargs)
    assert_close(res.out, out, name="out")
    assert_close(res.conf, conf, name="conf")
    assert_close(res.warp, warp, name="warp")
    assert res.topk.dtype == torch.int64
    assert torch.equal(res.topk, top), "topk differs from the brute force"

    g = torch.Generator().manual_seed(11)
    ups = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in (out, conf, warp)]

    def loss(o, c, w):
        return (o * ups[0]).sum() + (c * ups[1]).sum() + (w * ups[2]).sum()

    got = torch.autograd.grad(loss(res.out, res.conf, res.warp), inputs)
    want = torch.autograd.grad(loss(out, conf, warp), inputs)
    for name, a, e in zip(
        ("q", "k", "v", "q_prune", "k_prune", "warp_values"), got, want, strict=True
    ):
        assert_close(a, e, name=f"d{name}")


@pytest.mark.parametrize("warp_over", WARP_MODES)
@pytest.mark.parametrize(
    "cqk,cp,cv",
    [
        pytest.param(48, 16, 80, id="Cqk48-Cp16-Cv80"),
        pytest.param(80, 24, 48, id="Cqk80-Cp24-Cv48"),
    ],
)
def test_dense_matches_brute_force(cqk, cp, cv, warp_over):
    inputs = _inputs(1, cqk, cp, cv)
    _check_against_brute_force(
        inputs, None, scale=cqk**-0.5, prune_scale=1 / cp, warp_over=warp_over
    )


@pytest.mark.parametrize("warp_over", WARP_MODES)
@pytest.mark.parametrize("kind", list(CANDIDATE_SETS))
@pytest.mark.parametrize(
    "cqk,cp,cv",
    [
        pytest.param(48, 16, 80, id="Cqk48-Cp16-Cv80"),
        pytest.param(80, 24, 48, id="Cqk80-Cp24-Cv48"),
    ],
)
def test_candidates_match_brute_force(cqk, cp, cv, kind, warp_over):
    candidates = CANDIDATE_SETS[kind]()
    inputs = _inputs(2, cqk, cp, cv, candidates=candidates)
    # Scale 1 rather than the model's 100: at 100 the float64 softmax is one-hot and the
    # gradients would compare little but zeros.
    _check_against_brute_force(inputs, candidates, scale=0.3, prune_scale=1.0, warp_over=warp_over)


def test_all_kept_and_none_kept_rows():
    """Rows whose prune logits are all positive or all negative: conf is 1 or 0, the "kept" warp
    falls back to all keys when nothing is kept, the "pruned" one averages W when all is."""
    q, k, v, qp, kp, wv = _inputs(3, 16, 8, 8)
    with torch.no_grad():
        qp[:, :5] = 0.0
        qp[:, :3, 0] = 1.0  # rows 0-2: all kept
        qp[:, 3:5, 0] = -1.0  # rows 3-4: none kept
        kp[..., 0] = kp[..., 0].abs() + 0.5
    for mode in WARP_MODES:
        res = kernels.dynamic_attention(
            q,
            k,
            v,
            qp,
            kp,
            scale=0.25,
            prune_scale=1.0,
            warp_values=wv,
            warp_over=mode,
            backend="torch",
        )
        assert torch.allclose(res.conf[:, :3], torch.ones(B, 3, dtype=q.dtype))
        assert torch.equal(res.conf[:, 3:5], torch.zeros(B, 2, dtype=q.dtype))
        assert torch.equal(res.out[:, 3:5], torch.zeros_like(res.out[:, 3:5]))
        full = torch.softmax(0.25 * q @ k.transpose(1, 2), dim=-1) @ wv
        # none-kept rows under "kept" and "pruned" use every key; all-kept rows under "pruned"
        # (the release's -1e4 fill of every score) the plain mean of the warp values
        fallback = {"kept": slice(3, 5), "pruned": slice(3, 5), "all": slice(0, 5)}[mode]
        assert_close(res.warp[:, fallback], full[:, fallback], name=f"warp fallback ({mode})")
        if mode == "pruned":
            mean = wv.mean(dim=1, keepdim=True).expand(-1, 3, -1)
            assert_close(res.warp[:, :3], mean, name="all kept under pruned: the mean of W")


def test_topk_ranks_by_score_where_probabilities_underflow():
    """At scale 100 the probabilities of all but the best key underflow to 0 in fp32; the top-k
    must still follow the scores."""
    k = torch.eye(8).unsqueeze(0)  # key j is the unit vector e_j
    q = torch.tensor([[[3.0, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9]]])
    qp, kp = torch.ones(1, 1, 4), torch.ones(1, 8, 4)
    res = kernels.dynamic_attention(
        q, k, torch.randn(1, 8, 4), qp, kp, scale=100.0, prune_scale=1.0, topk=4, backend="torch"
    )
    p = torch.softmax(100.0 * q @ k.transpose(1, 2), dim=-1)
    assert (p[0, 0, 1:] == 0).all()  # the premise: these tie on probability
    assert res.topk.tolist() == [[[0, 1, 2, 3]]]


def test_topk_ties_go_to_the_lower_position():
    k = torch.ones(1, 6, 4)  # every key scores the same
    q, qp, kp = torch.randn(1, 2, 4), torch.ones(1, 2, 2), torch.ones(1, 6, 2)
    dense = kernels.dynamic_attention(
        q, k, torch.randn(1, 6, 3), qp, kp, scale=1.0, prune_scale=1.0, topk=3, backend="torch"
    )
    assert dense.topk.tolist() == [[[0, 1, 2], [0, 1, 2]]]
    cand = torch.tensor([[[5, 2, 2, 0], [4, 4, 1, 3]]])
    sparse = kernels.candidate_attention(
        q,
        k,
        torch.randn(1, 6, 3),
        qp,
        kp,
        cand,
        scale=1.0,
        prune_scale=1.0,
        topk=3,
        backend="torch",
    )
    assert sparse.topk.tolist() == [[[5, 2, 2], [4, 4, 1]]]


def test_straight_through_mask_gradient_is_the_sigmoid_derivative():
    """float64 check of the surrogate: the backward equals the finite-difference derivative of
    sigmoid; the forward is the exact step."""
    s = torch.linspace(-6, 6, 101, dtype=torch.float64)[torch.arange(101) != 50]  # skip s = 0
    s.requires_grad_()
    up = torch.randn(s.shape, dtype=torch.float64)
    m = straight_through_mask(s)
    assert torch.equal(m, (s > 0).double())
    (grad,) = torch.autograd.grad(m, s, up)
    h = 1e-6
    fd = (torch.sigmoid(s.detach() + h) - torch.sigmoid(s.detach() - h)) / (2 * h)
    assert_close(grad, up * fd, name="mask gradient", atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "candidates"])
def test_gradcheck_smooth_inputs(dense):
    """torch.autograd.gradcheck in float64 over q, k, v and warp_values. With the prune logits held
    away from 0 the mask is locally constant, so finite differences see the true derivative."""
    g = torch.Generator().manual_seed(4)
    b, n, c = 2, 6, 5
    q, k = (torch.randn(b, n, c, generator=g, dtype=torch.float64) for _ in range(2))
    v, wv = (torch.randn(b, n, d, generator=g, dtype=torch.float64) for d in (4, 3))
    qp = torch.ones(b, n, 2, dtype=torch.float64)
    kp = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()[None, :, None].expand(b, n, 2)
    cand = torch.randint(0, n, (b, n, 4), generator=g)

    def fn(q, k, v, wv):
        kw = dict(scale=0.7, prune_scale=1.0, warp_values=wv, backend="torch")
        if dense:
            res = kernels.dynamic_attention(q, k, v, qp, kp, **kw)
        else:
            res = kernels.candidate_attention(q, k, v, qp, kp, cand, **kw)
        return res.out, res.conf, res.warp

    args = tuple(x.requires_grad_() for x in (q, k, v, wv))
    assert torch.autograd.gradcheck(fn, args)


def test_autocast_runs_in_autocast_dtype_with_fp32_scores():
    q, k, v, qp, kp, wv = (x.detach().float() for x in _inputs(8, 16, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = kernels.dynamic_attention(
            q, k, v, qp, kp, scale=0.25, prune_scale=1.0, topk=2, warp_values=wv, backend="torch"
        )
    assert res.out.dtype == res.conf.dtype == res.warp.dtype == torch.bfloat16
    bf = [x.bfloat16() for x in (q, k, v, qp, kp, wv)]
    want = kernels.dynamic_attention(
        *bf[:5], scale=0.25, prune_scale=1.0, topk=2, warp_values=bf[5], backend="torch"
    )
    assert torch.equal(res.out, want.out) and torch.equal(res.topk, want.topk)


# ---------------------------------------------------------------------------------------------
# Errors


def _good(n=12, c=8, cp=4):
    g = torch.Generator().manual_seed(0)
    return dict(
        q=torch.randn(2, n, c, generator=g),
        k=torch.randn(2, n, c, generator=g),
        v=torch.randn(2, n, 5, generator=g),
        q_prune=torch.randn(2, n, cp, generator=g),
        k_prune=torch.randn(2, n, cp, generator=g),
    )


def _call_dense(t, **kw):
    kw = {"scale": 1.0, "prune_scale": 1.0, **kw}
    return kernels.dynamic_attention(t["q"], t["k"], t["v"], t["q_prune"], t["k_prune"], **kw)


@pytest.mark.parametrize(
    "edit,kw,match",
    [
        (lambda t: t.update(k=t["k"][:1]), {}, "k batch size"),
        (lambda t: t.update(v=t["v"][:, :5]), {}, "v token count"),
        (lambda t: t.update(k_prune=t["k_prune"][:, :3]), {}, "k_prune token count"),
        (lambda t: t.update(q_prune=t["q_prune"][:, :3]), {}, "q_prune token count"),
        (lambda t: t.update(k=t["k"][..., :5]), {}, "k channel count"),
        (lambda t: t.update(k_prune=t["k_prune"][..., :1]), {}, "k_prune channel count"),
        (lambda t: t.update(q=t["q"].long()), {}, "q must be a floating-point"),
        (lambda t: t.update(v=t["v"].int()), {}, "v must be a floating-point"),
        (lambda t: t.update(q=t["q"][0]), {}, "q must be 3-D"),
        (lambda t: t.update(v=t["v"].double()), {}, "share one dtype"),
        (lambda t: None, {"warp_over": "some"}, "warp_over"),
        (lambda t: None, {"backend": "cuda"}, "backend"),
        (lambda t: None, {"topk": 13}, "topk"),
        (lambda t: None, {"topk": -1}, "topk"),
        (lambda t: None, {"scale": float("nan")}, "scale"),
        (lambda t: None, {"warp_values": torch.randn(2, 11, 3)}, "warp_values token count"),
        (lambda t: None, {"warp_values": torch.ones(2, 12, 3, dtype=torch.int64)}, "warp_values"),
    ],
)
def test_dense_rejects_bad_input(edit, kw, match):
    t = _good()
    edit(t)
    with pytest.raises(ValueError, match=match):
        _call_dense(t, **kw)


@pytest.mark.parametrize(
    "cand,kw,match",
    [
        (torch.full((2, 12, 4), 12), {}, "candidates values must lie in"),
        (torch.full((2, 12, 4), -1), {}, "candidates values must lie in"),
        (torch.zeros(2, 12, 4), {}, "int32 or int64"),
        (torch.zeros(2, 11, 4, dtype=torch.int64), {}, "candidates must be"),
        (torch.zeros(2, 12, 0, dtype=torch.int64), {}, "at least one key"),
        (torch.zeros(2, 12, 4, dtype=torch.int64), {"topk": 5}, "candidate count"),
    ],
)
def test_candidates_rejects_bad_input(cand, kw, match):
    t = _good()
    with pytest.raises(ValueError, match=match):
        kernels.candidate_attention(
            t["q"],
            t["k"],
            t["v"],
            t["q_prune"],
            t["k_prune"],
            cand,
            scale=1.0,
            prune_scale=1.0,
            **kw,
        )


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        _call_dense(_good(), backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "candidates"])
def test_pruned_warp_is_the_release_formula(backend, dense):
    """warp_over="pruned" is the release's `softmax(z.masked_fill(kept, -1e4)) @ W`: a query that
    keeps every key gets the plain mean of the warp values (not a softmax of z), one that keeps
    some gets the softmax over the pruned keys, one that keeps none the softmax over all."""
    g = torch.Generator().manual_seed(5)
    n, c = 8, 4
    q, k = torch.randn(2, n, c, generator=g), torch.randn(2, n, c, generator=g)
    wv = torch.randn(2, n, 3, generator=g)
    kp = torch.ones(2, n, 2)
    kp[:, ::2, 1] = -1.0  # even keys: the sign of a mixed query's second channel
    qp = torch.zeros(2, n, 2)
    qp[:, 0::3, 0] = 2.0  # keeps every key
    qp[:, 1::3, 0] = -2.0  # keeps none
    qp[:, 2::3, 1] = 1.0  # keeps the odd keys
    z = q @ k.transpose(1, 2)
    kept = qp @ kp.transpose(1, 2) > 0
    release = torch.softmax(z.masked_fill(kept, -1e4), dim=-1) @ wv
    args = (q, k, torch.randn(2, n, 5, generator=g), qp, kp)
    common = dict(scale=1.0, prune_scale=1.0, warp_values=wv, warp_over="pruned", backend=backend)
    if dense:
        res = kernels.dynamic_attention(*args, **common)
    else:
        every_key = torch.arange(n).expand(2, n, n).contiguous()
        res = kernels.candidate_attention(*args, every_key, **common)
    assert_close(res.warp, release, name="warp", magnitude=wv.abs().max().expand_as(release))
    assert_close(res.warp[:, 0], wv.mean(dim=1), name="all-kept row: the mean of W")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "candidates"])
@pytest.mark.parametrize("prune_scale", [1.0, -1.0], ids=["plus0", "minus0"])
def test_zero_prune_logits_are_pruned(backend, dense, prune_scale):
    """m = 1[s > 0]: a logit of exactly +0 or -0 prunes its key (s >= 0 would keep it). Queries
    with a zero prune vector see only zero logits; keys with a zero prune vector give every
    query a zero logit; the others keep a margin."""
    g = torch.Generator().manual_seed(6)
    n, c = 8, 4
    q, k = torch.randn(2, n, c, generator=g), torch.randn(2, n, c, generator=g)
    v, wv = torch.randn(2, n, 5, generator=g), torch.randn(2, n, 3, generator=g)
    qp = torch.zeros(2, n, 2)
    qp[:, 2:, 0] = torch.where(torch.arange(2, n) % 2 == 0, 1.0, -1.0) * prune_scale
    kp = torch.zeros(2, n, 2)
    kp[:, 3:, 0] = 1.0  # keys 0-2: zero logits for every query
    s = prune_scale * (qp @ kp.transpose(1, 2))
    assert (s == 0).any() and (s > 0).any()
    kept = s > 0
    z = q @ k.transpose(1, 2)
    p = torch.softmax(z, dim=-1)
    common = dict(scale=1.0, prune_scale=prune_scale, warp_values=wv, backend=backend)
    if dense:
        res = kernels.dynamic_attention(q, k, v, qp, kp, **common)
    else:
        every_key = torch.arange(n).expand(2, n, n).contiguous()
        res = kernels.candidate_attention(q, k, v, qp, kp, every_key, **common)
    assert torch.equal(res.conf[:, :2], torch.zeros(2, 2)), "zero logits kept a key"
    assert_close(res.conf, (p * kept).sum(-1), name="conf", magnitude=torch.ones(1))
    assert_close(res.out, (p * kept) @ v, name="out", magnitude=p @ v.abs())
    sel = kept | ~kept.any(-1, keepdim=True)
    w = torch.softmax(z.masked_fill(~sel, float("-inf")), dim=-1)
    assert_close(res.warp, w @ wv, name="warp", magnitude=w @ wv.abs())


def _candidate_call(t, cand, backend="torch", topk=0):
    return kernels.candidate_attention(
        t["q"], t["k"], t["v"], t["q_prune"], t["k_prune"], cand,
        scale=1.0, prune_scale=1.0, topk=topk, backend=backend,
    )  # fmt: skip


def test_candidate_lists_cannot_be_changed_from_outside():
    """A CandidateList's indices are private: every view of them is a copy, so no edit (in place,
    in inference mode, through .data or .numpy()) reaches the list the operators read, nor does
    an edit of the top-k it was built from (it keeps a copy, and builds its list from that copy
    on first use), and only the builders construct one."""
    from kernels.candidates.lists import CandidateList, candidate_indices

    t = _good()
    top = _call_dense(t, topk=2).topk
    cand = kernels.inner_scale_candidates(top, 3, 4)
    assert isinstance(cand, CandidateList) and cand.bound == 12 and cand.window is None
    before = kernels.inner_scale_candidates(top.clone(), 3, 4).indices
    source = cand.topk
    top[0, 0, 0] = (top[0, 0, 0] + 1) % 12  # before cand's list is built
    cand.topk[0, 0, 0] = 5
    assert torch.equal(cand.topk, source)
    assert torch.equal(candidate_indices(cand), before)
    cand.indices[0, 0, 0] = 99
    cand.data[0, 0, 0] = 99
    cand.numpy()[0, 0, 0] = 99
    cand[0][0, 0] = 99
    with torch.inference_mode():
        cand.indices.add_(1)
    assert torch.equal(candidate_indices(cand), before)
    assert torch.equal(cand, before) and cand.shape == before.shape and cand.dtype == torch.int32
    for name in ("indices", "topk", "_built", "_source", "_grid", "_kind"):
        with pytest.raises(AttributeError):
            setattr(cand, name, before)
    with pytest.raises(ValueError, match="built only by"):
        CandidateList(object(), "inner", source, 3, 4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_out_of_range_candidates_are_rejected_on_every_backend(backend):
    """A plain tensor is range-checked: Nk itself (which would read the next sample's first key
    through a flattened view) and negatives are errors on both backends."""
    t = _good()
    top = _call_dense(t, topk=2).topk
    plain = kernels.inner_scale_candidates(top, 3, 4).indices
    for value in (12, -1):
        bad = plain.clone()
        bad[1, 11, 3] = value
        with pytest.raises(ValueError, match=r"candidates values must lie in \[0, 12\)"):
            _candidate_call(t, bad, backend)


def test_reference_gather_never_reads_the_next_sample():
    """Called directly, without the operator's check, an index equal to N reads within its own
    sample (clamped), never the next sample's first row."""
    from kernels.candidates.reference import gather_rows

    x = torch.arange(2 * 3, dtype=torch.float32).view(2, 3, 1)
    rows = gather_rows(x, torch.tensor([[[3]], [[0]]]))
    assert rows.flatten().tolist() == [2.0, 3.0]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_nan_query_rows_give_defined_top_k(backend):
    """A NaN score ranks as -inf: a NaN query selects keys 0..k-1 (candidate positions 0..k-1),
    every index is a real key, and the builders accept the result."""
    t = _good()
    t["q"] = t["q"].detach().clone()
    t["q"][0, 4] = float("nan")
    res = kernels.dynamic_attention(
        t["q"], t["k"], t["v"], t["q_prune"], t["k_prune"],
        scale=1.0, prune_scale=1.0, topk=3, backend=backend,
    )  # fmt: skip
    assert res.topk[0, 4].tolist() == [0, 1, 2]
    assert int(res.topk.max()) < 12
    cand = kernels.inner_scale_candidates(res.topk, 3, 4)
    got = _candidate_call(t, cand, backend, topk=2).topk
    assert got[0, 4].tolist() == candidates_first(cand, 0, 4, 2)
    assert int(got.max()) < 12


def candidates_first(cand, b: int, i: int, k: int) -> list[int]:
    return cand.indices[b, i, :k].tolist()


def test_builders_and_operators_run_under_inference_mode():
    t = _good(n=16)
    with torch.inference_mode():
        top = _call_dense(t, topk=2).topk
        inter = kernels.inter_scale_candidates(top[:, :4] % 4, 4, 4)
        inner = kernels.inner_scale_candidates(top, 4, 4)
        for cand in (inter, inner):
            res = kernels.candidate_attention(
                t["q"],
                t["k"],
                t["v"],
                t["q_prune"],
                t["k_prune"],
                cand,
                scale=1.0,
                prune_scale=1.0,
                topk=2,
            )
            assert res.topk.shape == (2, 16, 2)


@pytest.mark.gpu
def test_deferred_range_check_on_gpu():
    """On CUDA a bad list runs on clamped indices without a synchronisation, and the error comes
    from `check_index_errors()` (or a later check once the device has computed the flag)."""
    t = {name: x.cuda() for name, x in _good().items()}
    top = _call_dense(t, topk=2).topk
    bad = kernels.inner_scale_candidates(top, 3, 4).indices
    bad[1, 11, 3] = 12
    kernels.check_index_errors()
    for backend in ("torch", "triton"):
        res = _candidate_call(t, bad, backend)  # no error yet, reads stay inside the keys
        assert torch.isfinite(res.out).all()
        with pytest.raises(ValueError, match=r"candidates values must lie in \[0, 12\)"):
            kernels.check_index_errors()
    coarse = torch.full((2, 3, 2), 3, device="cuda")
    kernels.inter_scale_candidates(coarse, 2, 6)  # coarse grid of 3 tokens: 3 is out of range
    torch.cuda.synchronize()
    with pytest.raises(ValueError, match="deferred range check"):
        kernels.inner_scale_candidates(top, 3, 4)  # finds the finished flag
