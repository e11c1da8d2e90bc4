"""The fused candidate-attention kernels against the reference (`backend="triton"` vs `"torch"`).

On machines without a GPU the kernels run on Triton's CPU interpreter (tests/conftest.py sets
TRITON_INTERPRET before the kernels are imported). Inputs are built so that the discontinuous parts
are decided with a margin: prune logits stay away from 0 (some queries keep every candidate, some
none) and distinct keys never tie in score (duplicated candidates tie exactly, which both sides
break by position). Every output the kernels allocate is NaN-poisoned first
(`nan_filled_outputs`, tests/kernels/conftest.py), so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch
from _assert import assert_close, assert_error_within, sum_tolerance
from torch import Tensor

from kernels import candidate_attention, inner_scale_candidates, inter_scale_candidates
from kernels.call import WARP_MODE_IDS, AttentionInputs, AttentionSettings
from kernels.candidates import aot as aot_candidates
from kernels.candidates import fused
from kernels.candidates import tuning as tuning_candidates
from kernels.candidates.lists import (
    PER_MATCH,
    CandidateList,
    candidate_indices,
    candidate_source,
    window_shared_grid,
)
from kernels.candidates.reference import reference_candidate_attention

B, H, W, K = 2, 6, 10, 3
N = H * W
NAMES = ("q", "k", "v", "q_prune", "k_prune", "warp_values")
# The interpreter runs the kernels on CPU tensors; with a GPU the same tests run on it.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.usefixtures("nan_filled_outputs")


def make_inputs(
    cqk: int, cp: int, cv: int, dtype: torch.dtype, seed: int, peaky: bool = False
) -> dict[str, Tensor]:
    """Random features. Prune features are built so that `<q_p, k_p>` is at least ~1 away from 0:
    channel 0 of every key is +1.5 and channel 1 a random sign times 1.5; a query picks mixed
    (channel 1), keep-all (+channel 0) or keep-none (-channel 0), the rest is small noise.
    `peaky`: unit-norm q and k rows, as the model feeds the sparse scales (scale 100)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen)

    q, k = randn(B, N, cqk), randn(B, N, cqk)
    if peaky:
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    k_prune = 0.05 * randn(B, N, cp)
    k_prune[..., 0] = 1.5
    k_prune[..., 1] = 1.5 * torch.randint(0, 2, (B, N), generator=gen).mul(2).sub(1)
    q_prune = 0.05 * randn(B, N, cp)
    mode = torch.randint(0, 4, (B, N), generator=gen)  # 0, 1 mixed; 2 keep all; 3 keep none
    q_prune[..., 0] = torch.where(mode == 2, 2.0, torch.where(mode == 3, -2.0, 0.0))
    q_prune[..., 1] = torch.where(mode < 2, 1.0, 0.0) * mode.mul(2).sub(1).clamp(-1, 1)
    x = {
        "q": q,
        "k": k,
        "v": randn(B, N, cv),
        "q_prune": q_prune,
        "k_prune": k_prune,
        "warp_values": randn(B, N, 3),
    }
    return {name: t.to(DEVICE, dtype).requires_grad_() for name, t in x.items()}


def make_candidates(kind: str, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)

    def randint(high: int, shape: tuple[int, ...], dtype: torch.dtype = torch.int64) -> Tensor:
        return torch.randint(0, high, shape, generator=gen, dtype=dtype).to(DEVICE)

    if kind == "inter":  # window-shared lists, M = 4k
        return inter_scale_candidates(randint(N // 4, (B, N // 4, K)), H, W)
    if kind == "inter-copy":  # the same lists without the window mark: one list per query
        return inter_scale_candidates(randint(N // 4, (B, N // 4, K)), H, W).clone()
    if kind == "inner":  # borders clamp and duplicate, M = 5k
        return inner_scale_candidates(randint(N, (B, N, K)), H, W)
    if kind == "random":  # any keys, an odd M, int32
        return randint(N, (B, N, 7), torch.int32)
    raise ValueError(kind)


def check_margins(x: dict[str, Tensor], cand: Tensor, scale: float, k: int = K) -> None:
    """The test's premises: no prune logit near 0, and the k + 1 best distinct keys of every query
    apart in score by far more than fp32 rounding (so the top-k is unambiguous)."""
    idx = cand.long()
    kp = torch.stack([x["k_prune"].double()[b][idx[b]] for b in range(B)])  # [B, N, M, Cp]
    s = torch.einsum("bqc,bqmc->bqm", x["q_prune"].double(), kp)
    assert s.abs().min() > 0.5, "prune logits too close to 0 for an exact mask comparison"
    kg = torch.stack([x["k"].double()[b][idx[b]] for b in range(B)])
    z = scale * torch.einsum("bqc,bqmc->bqm", x["q"].double(), kg)
    # Keep one occurrence per key (duplicates tie exactly in the kernels), best first.
    same = idx[..., :, None] == idx[..., None, :]
    repeat = (same & torch.ones_like(same).tril(-1)).any(-1)
    top = z.masked_fill(repeat, float("-inf")).sort(-1, descending=True).values[..., : k + 1]
    gaps = (top[..., :-1] - top[..., 1:]).min()
    assert gaps > 1e-5 * max(scale, 1.0), f"near-tie in the top-k (gap {float(gaps):.3g})"


def run(
    backend: str,
    x: dict[str, Tensor],
    cand: Tensor,
    grads: dict[str, Tensor],
    *,
    scale: float,
    topk: int,
    warp_over: str,
    with_warp: bool = True,
):
    res = candidate_attention(
        x["q"],
        x["k"],
        x["v"],
        x["q_prune"],
        x["k_prune"],
        cand,
        scale=scale,
        prune_scale=0.7,
        topk=topk,
        warp_values=x["warp_values"] if with_warp else None,
        warp_over=warp_over,
        backend=backend,
    )
    acc = grads["out"].dtype  # fp32, or fp64 for the exact run
    loss = (res.out.to(acc) * grads["out"]).sum() + (res.conf.to(acc) * grads["conf"]).sum()
    inputs = [x[n] for n in NAMES]
    if with_warp:
        loss = loss + (res.warp.to(acc) * grads["warp"]).sum()
    else:
        inputs = inputs[:-1]
    return res, torch.autograd.grad(loss, inputs)


def compare(
    x: dict[str, Tensor],
    cand: Tensor,
    *,
    scale: float,
    warp_over: str,
    topk: int = K,
    with_warp: bool = True,
    tol: dict | None = None,
    seed: int = 0,
) -> None:
    gen = torch.Generator().manual_seed(seed + 1)
    grads = {
        "out": torch.randn(B, N, x["v"].shape[2], generator=gen).to(DEVICE),
        "conf": torch.randn(B, N, generator=gen).to(DEVICE),
        "warp": torch.randn(B, N, 3, generator=gen).to(DEVICE),
    }
    kw = dict(scale=scale, topk=topk, warp_over=warp_over, with_warp=with_warp)
    ref, ref_grads = run("torch", x, cand, grads, **kw)
    got, got_grads = run("triton", x, cand, grads, **kw)
    x64 = {n: t.detach().double().requires_grad_() for n, t in x.items()}
    exact, exact_grads = run("torch", x64, cand, {n: g.double() for n, g in grads.items()}, **kw)
    dtype = x["q"].dtype

    def check(got: Tensor, want: Tensor, ex: Tensor, name: str) -> None:
        # fp32: within 8x the fp32 reference's own error against float64, which follows the
        # rounding of the sums behind each tensor (scale 100 and cancellation included); fp16:
        # twice the reference's fp16 error plus 1e-3 of the largest value; bf16: the bf16 default
        # (the interpreter truncates, see CASES).
        if dtype == torch.float32:
            assert_error_within(got, want, ex, name=name)
        elif dtype == torch.float16:
            ref_err = float((want.double() - ex).detach().abs().max())
            atol = 2 * ref_err + 1e-3 * float(ex.detach().abs().max())
            assert_close(got, want, name=name, atol=atol, rtol=0)
        else:
            assert_close(got, want, name=name, **(tol or {}))

    check(got.out, ref.out, exact.out, "out")
    check(got.conf, ref.conf, exact.conf, "conf")
    if with_warp:
        check(got.warp, ref.warp, exact.warp, "warp")
    else:
        assert got.warp is None
    if topk:
        assert got.topk.dtype == torch.int64
        assert torch.equal(got.topk, ref.topk), "top-k key indices differ"
    else:
        assert got.topk is None
    for name, g, r, e in zip(NAMES, got_grads, ref_grads, exact_grads, strict=False):
        assert g.dtype == x[name].dtype
        check(g, r, e, f"d{name}")


# Each candidate kind in fp32 and fp16; the warp modes rotate so that each meets both dtypes and
# both kernel paths (window-shared "inter", per-query lists otherwise). The interpreter runs
# about 0.2 s per program here, so the grid is kept to every pairing that matters.
CASES = [
    pytest.param(kind, dtype, mode, id=f"{kind}-{str(dtype)[6:]}-{mode}")
    for kind, dtype, mode in (
        ("inter", torch.float32, "kept"),
        ("inter", torch.float16, "pruned"),
        ("inter-copy", torch.float32, "all"),
        ("inter-copy", torch.float16, "kept"),
        ("inner", torch.float32, "pruned"),
        ("inner", torch.float16, "all"),
        ("random", torch.float32, "kept"),
        ("random", torch.float16, "pruned"),
        # No tl.dot in these kernels. The interpreter stores bf16 by truncation, not rounding,
        # which the reference's fp32-to-bf16 casts do not share: the default bf16 tolerance
        # (rtol 5e-2) covers one truncation (2^-7) and is what this case is held to.
        ("inner", torch.bfloat16, "kept"),
    )
]


@pytest.mark.parametrize(("kind", "dtype", "warp_over"), CASES)
def test_matches_reference(kind: str, dtype: torch.dtype, warp_over: str) -> None:
    """B2-H6-W10, Cqk 80 / Cp 20 / Cv 48, k 3: forward, top-k and all six input gradients."""
    seed = sum(map(ord, kind + warp_over))  # fixed per case (str hashes vary per process)
    x = make_inputs(80, 20, 48, dtype, seed)
    cand = make_candidates(kind, seed)
    check_margins(x, cand, 0.3)
    compare(x, cand, scale=0.3, warp_over=warp_over, seed=seed)


def test_sparse_scale_100() -> None:
    """The release's sparse regime: unit-norm rows and scale 100, so softmaxes are nearly one-hot
    and many probabilities underflow; scores must be formed in fp32 on both sides."""
    x = make_inputs(48, 16, 40, torch.float32, 7, peaky=True)
    cand = make_candidates("inner", 7)
    check_margins(x, cand, 100.0)
    # fp32 rounding of a score of size 100 moves p by ~1e-5 relative: the comparison against the
    # float64 run (`compare`) measures that on the reference itself.
    compare(x, cand, scale=100.0, warp_over="kept", seed=7)


def test_without_topk_and_warp() -> None:
    x = make_inputs(48, 16, 40, torch.float32, 3)
    cand = make_candidates("inter", 3)
    check_margins(x, cand, 0.3)
    compare(x, cand, scale=0.3, warp_over="kept", topk=0, with_warp=False, seed=3)


def test_window_mark() -> None:
    """Inter-scale lists carry their grid for good: the list cannot be changed from outside (the
    review's edit in inference mode lands on a copy). An edited plain copy runs as per-query
    lists and still matches the reference."""
    cand = make_candidates("inter", 5)
    assert window_shared_grid(cand) == (H, W)
    assert window_shared_grid(cand.clone()) is None  # a plain tensor
    assert window_shared_grid(make_candidates("inner", 5)) is None
    with torch.inference_mode():
        cand.indices[0, 7, 2] = (cand[0, 7, 2] + 1) % N
    assert window_shared_grid(cand) == (H, W)
    assert torch.equal(cand, make_candidates("inter", 5))
    edited = cand.indices
    edited[0, 7, 2] = (edited[0, 7, 2] + 1) % N  # breaks the sharing of query 7's window
    assert window_shared_grid(edited) is None
    x = make_inputs(48, 16, 40, torch.float32, 5)
    for lists in (cand, edited):
        check_margins(x, lists, 0.3)
        compare(x, lists, scale=0.3, warp_over="all", seed=5)


def test_window_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Marked lists launch one program per group of 4 queries, unmarked ones per query."""
    seen = []
    launch = fused.launch_forward

    def spy(*args, **kwargs):
        seen.append(kwargs["window"])
        return launch(*args, **kwargs)

    monkeypatch.setattr(fused, "launch_forward", spy)
    x = make_inputs(48, 16, 40, torch.float32, 2)
    with torch.no_grad():
        for kind in ("inter", "inter-copy"):
            cand = make_candidates(kind, 2)
            args = [x[n] for n in NAMES[:5]]
            candidate_attention(*args, cand, scale=1.0, prune_scale=1.0, backend="triton")
    assert seen == [(H, W), None]


# --------------------------------------------------------------------------------------------------
# Candidates derived in the kernel from the previous top-k, against the materialised list
# --------------------------------------------------------------------------------------------------


def derived_problem(kind: str, height: int, width: int, batch: int, k: int, seed: int):
    """Features of a height x width grid and a CandidateList of that kind, whose top-k puts
    matches on the grid's corners and edges (the shifts clamp there) and repeats one (the
    duplicates count)."""
    gen = torch.Generator().manual_seed(seed)
    n = height * width
    tokens = n if kind == "inner" else n // 4
    top = torch.randint(0, tokens, (batch, tokens, k), generator=gen)
    corners = torch.tensor([0, width - 1, n - 1, n - width])
    if kind == "inner":
        top[:, : min(4, tokens), 0] = corners[: min(4, tokens)]
    if k > 1:
        top[:, ::2, 1] = top[:, ::2, 0]
    builder = inner_scale_candidates if kind == "inner" else inter_scale_candidates
    cand = builder(top.to(DEVICE), height, width)
    sizes = {"q": 24, "k": 24, "v": 20, "q_prune": 8, "k_prune": 8, "warp_values": 3}
    x = {
        name: torch.randn(batch, n, c, generator=gen).to(DEVICE).requires_grad_()
        for name, c in sizes.items()
    }
    return x, cand


def fused_run(x: dict[str, Tensor], cand, derive: bool, upstream: dict[str, Tensor], topk: int):
    settings = AttentionSettings(scale=0.3, prune_scale=0.7, topk=topk, warp_over="kept")
    res = fused.attention(AttentionInputs(*(x[n] for n in NAMES)), cand, settings, derive=derive)
    loss = sum((t * upstream[name]).sum() for name, t in zip(("out", "conf"), res[:2], strict=True))
    loss = loss + (res[3] * upstream["warp"]).sum()
    return res, torch.autograd.grad(loss, [x[n] for n in NAMES])


@pytest.mark.parametrize(
    ("kind", "height", "width", "batch", "k"),
    [
        pytest.param("inner", 5, 7, 2, 3, id="inner-B2-5x7-k3"),  # odd sides; borders clamp
        pytest.param("inner", 1, 5, 2, 2, id="inner-B2-1x5-k2"),  # one row: no upper, no lower
        pytest.param("inner", 7, 3, 3, 1, id="inner-B3-7x3-k1"),  # k = 1 (Triton specialises 1)
        pytest.param("inter", 6, 10, 2, 3, id="inter-B2-6x10-k3"),  # coarse grid 3x5
        pytest.param("inter", 2, 2, 3, 2, id="inter-B3-2x2-k2"),  # one window, one coarse cell
        pytest.param("inter", 4, 14, 2, 4, id="inter-B2-4x14-k4"),  # coarse width 7
    ],
)
def test_derived_candidates_match_the_list(kind: str, height: int, width: int, batch: int, k: int):
    """The kernels deriving each query's candidates from the top-k compute exactly what they
    compute from the builder's materialised list: forward outputs, top-k and every gradient
    (bit for bit on the interpreter; the key-side gradients of a GPU run differ by the order of
    their atomics), and match the reference on that list."""
    seed = height * 100 + width * 10 + k
    x, cand = derived_problem(kind, height, width, batch, k, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    n = height * width
    upstream = {
        "out": torch.randn(batch, n, 20, generator=gen).to(DEVICE),
        "conf": torch.randn(batch, n, generator=gen).to(DEVICE),
        "warp": torch.randn(batch, n, 3, generator=gen).to(DEVICE),
    }
    topk = min(k + 1, PER_MATCH[kind] * k)
    derived, derived_grads = fused_run(x, cand, True, upstream, topk)
    assert not cand.is_built, "the derived path built the list"
    listed, listed_grads = fused_run(x, cand, False, upstream, topk)
    assert cand.is_built
    for name, got, want in zip(("out", "conf", "topk", "warp"), derived, listed, strict=True):
        assert torch.equal(got, want), f"{name}: derived and listed candidates differ"
    for name, got, want in zip(NAMES, derived_grads, listed_grads, strict=True):
        if DEVICE.type == "cpu" or name in ("q", "q_prune"):  # no atomics: bit for bit
            assert torch.equal(got, want), f"d{name}: derived and listed candidates differ"
        else:
            assert_close(got, want, name=f"d{name}")
    ref = reference_candidate_attention(
        *[x[n] for n in NAMES[:5]], cand, scale=0.3, prune_scale=0.7, topk=topk,
        warp_values=x["warp_values"],
    )  # fmt: skip
    for i, name in ((0, "out"), (1, "conf"), (3, "warp")):
        assert_close(derived[i], ref[i], name=name)
    assert torch.equal(derived[2], ref[2])


def test_the_operator_derives_by_default_and_the_switch_reads_the_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`candidate_attention(backend="triton")` on a builder's list derives its candidates (the
    list is never built, forward or backward); `$DYNAST_CANDIDATES=list` builds and reads it,
    with the same results; a plain tensor (no provenance) is read whatever the switch says."""
    x, cand = derived_problem("inner", 5, 7, 2, 2, 4)
    args = [x[n] for n in NAMES[:5]]
    common = dict(scale=0.3, prune_scale=0.7, topk=2, warp_values=x["warp_values"])
    seen = []
    launch = fused.launch_forward

    def spy(*a, **kw):
        seen.append(a[1])  # the candidates launched: a list read, or a CandidateList derived
        return launch(*a, **kw)

    monkeypatch.setattr(fused, "launch_forward", spy)
    derived = candidate_attention(*args, cand, **common, backend="triton")
    derived.out.sum().backward()
    assert not cand.is_built and seen[-1] is cand and (cand.kind, cand.grid) == ("inner", (5, 7))
    monkeypatch.setenv(fused.CANDIDATES_ENV, "list")
    listed = candidate_attention(*args, cand, **common, backend="triton")
    assert cand.is_built and not isinstance(seen[-1], CandidateList)
    for got, want in zip((derived.out, derived.conf, derived.topk), (listed.out, listed.conf,
                         listed.topk), strict=True):  # fmt: skip
        assert torch.equal(got, want)
    monkeypatch.setenv(fused.CANDIDATES_ENV, "derived")
    candidate_attention(*args, cand.indices, **common, backend="triton")
    assert not isinstance(seen[-1], CandidateList)
    monkeypatch.setenv(fused.CANDIDATES_ENV, "guessed")
    with pytest.raises(ValueError, match="DYNAST_CANDIDATES"):
        candidate_attention(*args, cand, **common, backend="triton")


@pytest.mark.parametrize("kind", ["inner", "inter", "random"])
def test_int32_and_int64_lists_give_identical_results(kind: str) -> None:
    """A list is read in the dtype it comes in: int32 (what the builders make wherever
    B * Nk < 2^31) and int64 give the same outputs, top-k and gradients, on the fused kernels
    (bit for bit on the interpreter) and on the reference."""
    x = make_inputs(24, 8, 20, torch.float32, 9)
    narrow = make_candidates(kind, 9)
    narrow = narrow.indices if not isinstance(narrow, Tensor) else narrow
    assert narrow.dtype == torch.int32
    gen = torch.Generator().manual_seed(10)
    grads = {
        "out": torch.randn(B, N, 20, generator=gen).to(DEVICE),
        "conf": torch.randn(B, N, generator=gen).to(DEVICE),
        "warp": torch.randn(B, N, 3, generator=gen).to(DEVICE),
    }
    for backend in ("triton", "torch"):
        kw = dict(scale=0.3, topk=K, warp_over="kept")
        res32, grads32 = run(backend, x, narrow, grads, **kw)
        res64, grads64 = run(backend, x, narrow.long(), grads, **kw)
        for name in ("out", "conf", "topk", "warp"):
            assert torch.equal(getattr(res32, name), getattr(res64, name)), f"{backend} {name}"
        assert res32.topk.dtype == torch.int64
        for name, a, b in zip(NAMES, grads32, grads64, strict=True):
            if DEVICE.type == "cpu" or backend == "torch" or name in ("q", "q_prune"):
                assert torch.equal(a, b), f"{backend} d{name}"
            else:
                assert_close(a, b, name=f"{backend} d{name}")


def test_derived_candidates_under_a_deferred_range_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A top-k out of range on a GPU is reported later (`kernels.check_index_errors()`); until
    then the derived kernels read the builder's clamped copy, exactly like the list built from
    it. Forced here on the CPU."""
    from kernels import check_index_errors
    from kernels.candidates import lists

    monkeypatch.setattr(lists, "defers", lambda index: True)
    monkeypatch.setattr(lists, "pending", [])
    x, _ = derived_problem("inner", 5, 7, 2, 2, 6)
    bad = torch.randint(0, 35, (2, 35, 2))
    bad[1, 7, 1], bad[0, 34, 0] = 35, -3
    clamped = inner_scale_candidates(bad.clamp(0, 34).to(DEVICE), 5, 7)
    cand = inner_scale_candidates(bad.to(DEVICE), 5, 7)  # no error yet
    inputs = AttentionInputs(*(x[n].detach() for n in NAMES))
    settings = AttentionSettings(scale=0.3, prune_scale=0.7, topk=2, warp_over="kept")
    got = fused.attention(inputs, cand, settings, derive=True)
    want = fused.attention(inputs, clamped, settings, derive=False)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"topk values must lie in \[0, 35\) \(a deferred"):
        check_index_errors()


def space_cases() -> list:
    cases = []
    for kind, m, group in (("inter", 16, 4), ("inner", 20, 1)):
        dims = {"Nq": N, "Cqk": 24, "Cp": 8, "Cv": 20, "Cw": 3, "M": m, "G": group}
        for config in fused.FORWARD.space(dims):
            cfg = "-".join(f"{key}{value}" for key, value in config.items())
            cases.append(pytest.param(kind, config, id=f"{kind}-{cfg}"))
    return cases


@pytest.mark.parametrize(("kind", "config"), space_cases())
def test_every_config_of_the_space(kind: str, config: dict) -> None:
    """Each launch config the autotuner may pick computes the same forward and backward."""
    x = {n: t.detach() for n, t in make_inputs(24, 8, 20, torch.float32, 11).items()}
    gen = torch.Generator().manual_seed(12)
    coarse = torch.randint(0, N // 4, (B, N // 4, 4), generator=gen).to(DEVICE)
    own = torch.randint(0, N, (B, N, 4), generator=gen).to(DEVICE)
    if kind == "inter":
        cand = inter_scale_candidates(coarse, H, W)
    else:
        cand = inner_scale_candidates(own, H, W)
    check_margins(x, cand, 0.3, k=4)
    window = window_shared_grid(cand)
    inputs = AttentionInputs(*(x[n] for n in NAMES))
    listed = candidate_indices(cand)
    kept = WARP_MODE_IDS["kept"]
    common = dict(window=window, scale=0.3, prune_scale=0.7, warp_mode=kept, config=config)
    launched = fused.launch_forward(inputs, listed, topk=4, save_scores=True, **common)
    out, conf, top, warp, z, s = launched
    ref = reference_candidate_attention(
        *inputs[:5], cand, scale=0.3, prune_scale=0.7, topk=4, warp_values=x["warp_values"]
    )
    for name, got, want in zip(
        ("out", "conf", "warp"), (out, conf, warp), ref[:2] + ref[3:], strict=True
    ):
        assert_close(got, want, name=name)
    assert torch.equal(top, ref[2])

    dout, dconf, dwarp = torch.randn_like(out), torch.randn_like(conf), torch.randn_like(warp)
    got = fused.launch_backward(inputs, listed, z, s, dout, dconf, dwarp, **common)
    xs = [t.clone().requires_grad_() for t in inputs]
    r = reference_candidate_attention(
        *xs[:5], cand, scale=0.3, prune_scale=0.7, warp_values=xs[5], warp_over="kept"
    )
    loss = (r[0] * dout).sum() + (r[1] * dconf).sum() + (r[3] * dwarp).sum()
    want = torch.autograd.grad(loss, xs)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert_close(g.float(), w, name=f"d{name}")


def test_launch_configs() -> None:
    """Defaults lie in the space, which the predicate prunes; AOT cases cover every kernel."""
    for dims in aot_candidates.tuning_dims():
        for kernel in tuning_candidates.TUNABLE:
            space = kernel.space(dims)
            assert space, f"{kernel.name}: empty space for {dims}"
            assert kernel.default(dims) in space
            assert all(fused.fits(dims, c) for c in space)
    cases = aot_candidates.aot_cases()
    assert all("candidate" in c.label for c in cases)
    defaults = {
        (c.function, c.constexprs["GROUP"], c.constexprs["DERIVE"]) for c in cases if c.is_default
    }
    kernels = {"candidate_fwd_kernel", "candidate_bwd_kernel"}
    # Lists read (DERIVE 0) and derived the model's way: inter (2) window-shared, inner (1) not.
    assert defaults == {(f, g, d) for f in kernels for g, d in ((1, 0), (4, 0), (1, 1), (4, 2))}
    assert all(c.signature["CAND"] == "*i32" for c in cases)
    # A problem of any length still gets a launchable config.
    long = {"Nq": 64, "Cqk": 8, "Cp": 4, "Cv": 4, "Cw": 0, "M": 300, "G": 1}
    assert fused.FORWARD.default(long)["BLOCK_Q"] >= 1


@pytest.mark.parametrize("kernel", tuning_candidates.TUNABLE, ids=lambda k: k.name)
def test_tuning_runners_launch(kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The autotuner's runners build their own inputs (the model's unit-norm rows at scale 100)
    and launch the kernel once; what they compute is the reference's forward or gradients."""
    calls = {}
    for name in ("launch_forward", "launch_backward"):
        original = getattr(fused, name)

        def spy(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            calls[_name] = (args, kwargs, result)
            return result

        monkeypatch.setattr(fused, name, spy)
    dims = {"Nq": 64, "Cqk": 24, "Cp": 8, "Cv": 20, "Cw": 3, "M": 16, "G": 4}
    torch.manual_seed(0)
    runner = kernel.make_runner(dims, kernel.default(dims), DEVICE, torch.float32)
    result = runner()
    forward = kernel.name == fused.FORWARD.name
    name = "launch_forward" if forward else "launch_backward"
    args, kwargs, _ = calls[name]
    options = dict(scale=kwargs["scale"], prune_scale=kwargs["prune_scale"], warp_over="kept")

    # The runners launch what the operator launches: candidates derived from the top-k.
    derived = args[1]
    assert isinstance(derived, CandidateList) and derived.kind == "inter"
    candidates = inter_scale_candidates(candidate_source(derived)[1], *derived.grid)

    def reference(dtype: torch.dtype, topk: int):
        x = [t.detach().to(dtype).requires_grad_() for t in args[0]]
        res = reference_candidate_attention(
            *x[:5], candidates, topk=topk, warp_values=x[5], **options
        )
        return x, res

    # Scale 100 amplifies rounding: the fused results are held to the error the fp32 reference
    # makes against the float64 one (`assert_error_within`), not to a fixed tolerance.
    if forward:
        (_, ref), (_, exact) = reference(torch.float32, 4), reference(torch.float64, 4)
        out, conf, top, warp = result[:4]
        for i, label, got in ((0, "out", out), (1, "conf", conf), (3, "warp", warp)):
            assert_error_within(got, ref[i], exact[i], name=label)
        assert torch.equal(top, ref[2])
        return
    grads = []
    for dtype in (torch.float32, torch.float64):
        x, res = reference(dtype, 0)
        dout, dconf, dwarp = (t.to(dtype) for t in args[4:7])
        loss = (res[0] * dout).sum() + (res[1] * dconf).sum() + (res[3] * dwarp).sum()
        grads.append(torch.autograd.grad(loss, x))
    for label, g, r, e in zip(NAMES, result, *grads, strict=True):
        assert_error_within(g, r, e, name=f"d{label}")


# --------------------------------------------------------------------------------------------------
# GPU only: bf16 (the interpreter's bf16 is unreliable), real sizes, races of the atomics
# --------------------------------------------------------------------------------------------------


def gpu_problem(block: str, dtype: torch.dtype, requires_grad: bool = True):
    from kernels.shapes import AttentionShape, make_problem

    shape = AttentionShape(block, 64, 64, cqk=160, cp=32, cv=128, k=4)
    return make_problem(shape, 2, device="cuda", dtype=dtype, seed=3, requires_grad=requires_grad)


def gpu_grads(problem, backend: str, grads: dict[str, Tensor]):
    res = candidate_attention(*problem.positional(), **problem.keywords(), backend=backend)
    loss = (res.out.float() * grads["out"]).sum() + (res.conf.float() * grads["conf"]).sum()
    loss = loss + (res.warp.float() * grads["warp"]).sum()
    return res, torch.autograd.grad(loss, list(problem.float_inputs().values()))


@pytest.mark.gpu
@pytest.mark.parametrize("source", fused.CANDIDATE_MODES)
@pytest.mark.parametrize("block", ["inter", "inner"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_matches_reference(
    block: str, dtype: torch.dtype, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real sizes (64x64, Cqk 160) at scale 100 in half precision, the candidates derived in the
    kernel or the list read (`$DYNAST_CANDIDATES`); tolerance: twice the error the reference
    itself makes in that dtype against its fp32 run, plus a small atol."""
    monkeypatch.setenv(fused.CANDIDATES_ENV, source)
    problem = gpu_problem(block, dtype)
    torch.manual_seed(0)
    n, cv = problem.q.shape[1], problem.v.shape[2]
    grads = {
        "out": torch.randn(2, n, cv, device="cuda"),
        "conf": torch.randn(2, n, device="cuda"),
        "warp": torch.randn(2, n, 3, device="cuda"),
    }
    ref, ref_grads = gpu_grads(problem, "torch", grads)
    got, got_grads = gpu_grads(problem, "triton", grads)
    fp32 = gpu_problem(block, torch.float32)
    exact, exact_grads = gpu_grads(fp32, "torch", grads)
    pairs = [("out", got.out, ref.out, exact.out), ("conf", got.conf, ref.conf, exact.conf)]
    pairs.append(("warp", got.warp, ref.warp, exact.warp))
    names = list(problem.float_inputs())
    pairs += [
        (f"d{n}", g, r, e)
        for n, g, r, e in zip(names, got_grads, ref_grads, exact_grads, strict=True)
    ]
    for name, g, r, e in pairs:
        ref_err = (r.float() - e).abs().max().item()
        assert_close(g.float(), e, name=name, atol=2 * ref_err + 1e-3, rtol=0)
    check_topk_exact(got.topk, ref.topk, problem.q, problem.k, problem.candidates, 100.0)


def check_topk_exact(got, want, q, k, candidates, scale: float) -> None:
    """Both sides form the scores in fp32 from the same half-precision inputs, in different
    orders: two candidates can swap only if their float64 scores lie within twice the
    accumulation bound of |q| . |k|. Every slot farther than that from its neighbours (including
    the (k+1)-th candidate) must hold the reference's key exactly; near-tied slots must select
    scores within the bound. Duplicated candidates tie exactly and name the same key."""
    idx = candidates.long() if isinstance(candidates, Tensor) else candidates.indices
    b = torch.arange(q.shape[0], device=q.device)[:, None, None]
    rows = k.double()[b, idx]  # [B, N, M, C]
    z = scale * torch.einsum("bqc,bqmc->bqm", q.double(), rows)
    mag = abs(scale) * torch.einsum("bqc,bqmc->bqm", q.double().abs(), rows.abs())
    bound = 2 * sum_tolerance(mag, torch.float32, q.shape[-1])
    n_top = got.shape[-1]
    ranked, order = z.sort(dim=-1, descending=True, stable=True)
    rb = torch.gather(bound, 2, order)
    top = min(n_top + 1, z.shape[-1])
    same_key = torch.gather(idx, 2, order)
    gaps = ranked[..., : top - 1] - ranked[..., 1:top]
    near = (gaps <= rb[..., : top - 1] + rb[..., 1:top]) & (
        same_key[..., : top - 1] != same_key[..., 1:top]
    )
    pad = torch.zeros_like(near[..., :1])
    slot_near = torch.cat([pad, near], -1)[..., :n_top] | torch.cat([near, pad], -1)[..., :n_top]
    decided = ~slot_near
    assert torch.equal(got[decided], want[decided]), "top-k differs where no rounding can swap"
    score_of = {}
    for name, keys in (("got", got), ("want", want)):
        score_of[name] = scale * torch.einsum("bqc,bqkc->bqk", q.double(), k.double()[b, keys])
    allowed = 2 * n_top * bound.amax(-1, keepdim=True)
    assert bool(((score_of["got"] - score_of["want"]).abs() <= allowed).all())


@pytest.mark.gpu
@pytest.mark.parametrize("block", ["inter", "inner"])
def test_gpu_atomics_repeatable(block: str) -> None:
    """Repeated backwards on the same inputs (fp32 atomics, many queries hitting the same keys).

    Two runs differ only in the order of their atomic additions, so each element of dv and
    dwarp_values may move by the accumulation bound of its sum of |terms| (computed by the
    reference with |dout| and |dwarp| upstream), far less than one dropped contribution. And
    sums a dropped update would change are exact by construction: sum_j dW_j = sum_i dwarp_i
    (each query's warp weights sum to 1) and sum_j dV_j = sum_i conf_i dout_i."""
    problem = gpu_problem(block, torch.float32)
    torch.manual_seed(1)
    n, cv = problem.q.shape[1], problem.v.shape[2]
    grads = {
        "out": torch.randn(2, n, cv, device="cuda"),
        "conf": torch.randn(2, n, device="cuda"),
        "warp": torch.randn(2, n, 3, device="cuda"),
    }
    names = list(problem.float_inputs())
    first, first_grads = gpu_grads(problem, "triton", grads)
    # Sums of |terms| behind each element of dv and dwarp_values.
    absolute = {"out": grads["out"].abs(), "conf": torch.zeros_like(grads["conf"])}
    absolute["warp"] = grads["warp"].abs()
    _, magnitude = gpu_grads(problem, "torch", absolute)
    magnitude = dict(zip(names, magnitude, strict=True))
    # The most (query, candidate) pairs adding to one key: the length of its longest sum.
    listed = problem.candidates.indices
    most = max(int(torch.bincount(listed[b].flatten()).max()) for b in range(listed.shape[0]))
    conf, dout, dwarp = first.conf.double(), grads["out"].double(), grads["warp"].double()
    sums = {
        "warp_values": (dwarp.sum(1), dwarp.abs().sum(1)),
        "v": (torch.einsum("bq,bqc->bc", conf, dout), torch.einsum("bq,bqc->bc", conf, dout.abs())),
    }
    for _ in range(20):
        _, again = gpu_grads(problem, "triton", grads)
        for name, g, g0 in zip(names, again, first_grads, strict=True):
            if name in ("q", "q_prune"):  # plain stores, one writer each: bit for bit
                assert torch.equal(g, g0), f"d{name} changed from run to run"
            elif name in ("v", "warp_values"):
                bound = sum_tolerance(magnitude[name], torch.float32, most)
                assert_close(g, g0, name=f"d{name} run to run", atol=bound, rtol=0)
            else:
                # dk, dk_prune: sums of scale-100 terms whose |terms| the test cannot form; their
                # order noise is ~1e-6 of the largest element, a dropped update far more.
                scale = g0.abs().max().item()
                assert_close(g, g0, name=f"d{name} run to run", atol=1e-4 * scale, rtol=0)
        for name, (want, mag) in sums.items():
            got = again[names.index(name)].double().sum(1)
            tol = sum_tolerance(mag, torch.float32, most)  # the float64 sum adds nothing
            assert_close(got, want, name=f"sum of d{name}", atol=tol, rtol=0)
