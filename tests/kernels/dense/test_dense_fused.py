"""The fused dense kernels (`kernels.dense.fused`, `kernels.dense.triton`) against the PyTorch
reference.

Forward outputs and every input gradient, through the public operator (`backend="triton"` against
`backend="torch"`), on awkward sizes: batch 2, a 6x10 query map against a 5x9 key map, channels
that are no powers of two, k = 3. On CPU the kernels run on Triton's interpreter (conftest sets
TRITON_INTERPRET); bf16 needs a GPU there (the interpreter's bf16 `tl.dot` is wrong).

Every buffer the kernels write is allocated NaN-filled (int buffers -1; `nan_filled_outputs`,
tests/kernels/conftest.py), so an element no program writes fails the comparison. Prune logits
keep a margin from 0 (the mask is a step) and the queries include rows that keep every key and
rows that keep none.
"""

from __future__ import annotations

import math

import pytest
import torch
from _assert import assert_close, assert_error_within, sum_magnitude, sum_tolerance
from _live_bytes import LiveBytes

import kernels
from kernels import runtime
from kernels.call import WARP_MODES
from kernels.dense import fused as fused_dense
from kernels.dense import tuning as tuning_dense
from kernels.runtime import interpreting

B = 2
NQ = 6 * 10  # a 6x10 query map
NK = 5 * 9  # a 5x9 key map
CW = 3
GRAD_NAMES = ("q", "k", "v", "q_prune", "k_prune", "warp_values")


pytestmark = pytest.mark.usefixtures("nan_filled_outputs")  # tests/kernels/conftest.py


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_inputs(
    dtype: torch.dtype,
    *,
    cqk: int = 80,
    cp: int = 48,
    cv: int = 40,
    nq: int = NQ,
    nk: int = NK,
    warp: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random inputs whose prune logits are +-2 (times prune_scale) up to noise of about 0.02.

    Channel 0 of k_prune holds a random sign per key and channel 1 a constant 1; a query with
    +-2 on channel 0 keeps the keys of one sign ("mixed"), one with +2 on channel 1 keeps all of
    them and one with -2 keeps none. The other channels carry small noise."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    k_prune = 0.05 * randn(B, nk, cp)
    k_prune[..., 0] = torch.randint(0, 2, (B, nk), generator=gen) * 2.0 - 1.0
    k_prune[:, :2, 0] = torch.tensor([1.0, -1.0])  # both signs: a mixed row keeps some keys
    k_prune[..., 1] = 1.0
    q_prune = 0.05 * randn(B, nq, cp)
    kind = torch.randint(0, 5, (B, nq), generator=gen)  # 0-2 mixed, 3 all kept, 4 none kept
    kind[:, :3] = torch.tensor([3, 4, 0])  # every kind of row present
    sign = torch.randint(0, 2, (B, nq), generator=gen) * 2.0 - 1.0
    q_prune[..., 0] = torch.where(kind < 3, 2.0 * sign, 0.0)
    q_prune[..., 1] = torch.where(kind == 3, 2.0, torch.where(kind == 4, -2.0, 0.0))
    inputs = {
        "q": randn(B, nq, cqk),
        "k": randn(B, nk, cqk),
        "v": randn(B, nk, cv),
        "q_prune": q_prune,
        "k_prune": k_prune,
        "warp_values": randn(B, nk, CW) if warp else None,
    }
    inputs = {
        name: None if x is None else x.to(_device(), dtype).requires_grad_()
        for name, x in inputs.items()
    }
    logits = inputs["q_prune"].double() @ inputs["k_prune"].double().transpose(1, 2)
    assert logits.abs().min() > 1.5, "prune logits too close to 0 for a stable mask"
    kept = (logits > 0).sum(-1)
    assert (kept == nk).any() and (kept == 0).any() and ((kept > 0) & (kept < nk)).any()
    return inputs


def _scales(inputs: dict[str, torch.Tensor | None]) -> dict[str, float]:
    return {
        "scale": 1.0 / math.sqrt(inputs["q"].shape[-1]),
        "prune_scale": 1.0 / inputs["q_prune"].shape[-1],
    }


def run_op(inputs, backend: str, upstream, **options):
    """Forward and the gradients of sum(out*dout + conf*dconf + warp*dwarp) for every input."""
    args = [inputs[name] for name in GRAD_NAMES[:5]]
    res = kernels.dynamic_attention(
        *args, warp_values=inputs["warp_values"], backend=backend, **options
    )
    outputs = [res.out, res.conf] + ([res.warp] if res.warp is not None else [])
    leaves = [x for x in inputs.values() if x is not None]
    grads = torch.autograd.grad(outputs, leaves, upstream[: len(outputs)])
    names = [name for name in GRAD_NAMES if inputs[name] is not None]
    return res, dict(zip(names, grads, strict=True))


def fp16_atol(expected: torch.Tensor, exact: torch.Tensor) -> float:
    """Twice the error the reference itself makes in fp16 (its fp16 result against the same
    computation in fp64), plus a small atol relative to the tensor's magnitude."""
    torch_error = (expected.double() - exact.double()).abs().max().item()
    return 2 * torch_error + 1e-3 * exact.abs().max().item() + 1e-6


def _against(got: torch.Tensor, want: torch.Tensor, exact: torch.Tensor, name: str) -> None:
    """fp32: within 8x the fp32 reference's own error against float64 (`assert_error_within`:
    the tolerance follows the rounding of the sums behind each tensor, cancellation included).
    fp16: twice the reference's fp16 error plus 1e-3 of the largest value."""
    if got.dtype == torch.float16:
        assert_close(got, want, name=name, atol=fp16_atol(want, exact), rtol=0)
    else:
        assert_error_within(got, want, exact, name=name)


def check_against_reference(inputs, upstream_scale: float = 1.0, **options) -> None:
    """Every output and input gradient of the fused op against the reference's."""
    dtype = inputs["q"].dtype
    upstream = [u * upstream_scale for u in _upstream_for(inputs)]
    ref, ref_grads = run_op(inputs, "torch", upstream, **options)
    res, grads = run_op(inputs, "triton", upstream, **options)
    if dtype in (torch.float16, torch.float32):
        exact_inputs = {
            n: None if x is None else x.detach().double().requires_grad_()
            for n, x in inputs.items()
        }
        upstream64 = [u.double() for u in upstream]
        exact, exact_grads = run_op(exact_inputs, "torch", upstream64, **options)
    for name in ("out", "conf", "warp"):
        got, want = getattr(res, name), getattr(ref, name)
        if want is None:
            assert got is None, f"{name} returned without being asked for"
            continue
        assert got.dtype == want.dtype, name
        _against(got, want, getattr(exact, name), name)
    for name, want in ref_grads.items():
        got = grads[name]
        assert got.dtype == want.dtype, f"d{name}"
        _against(got, want, exact_grads[name], f"d{name}")
    check_topk(res.topk, ref.topk, inputs, options)


def _upstream_for(inputs) -> list[torch.Tensor]:
    """Random upstream gradients shaped like the op's outputs (the same for both backends)."""
    q, v, wv = inputs["q"], inputs["v"], inputs["warp_values"]
    gen = torch.Generator().manual_seed(1)
    shapes = [(q.shape[0], q.shape[1], v.shape[2]), (q.shape[0], q.shape[1])]
    if wv is not None:
        shapes.append((q.shape[0], q.shape[1], wv.shape[2]))
    return [torch.randn(s, generator=gen).to(q.device, q.dtype) for s in shapes]


def check_topk(got, want, inputs, options) -> None:
    """Top-k against the reference, exactly wherever rounding cannot decide it.

    Both sides form the scores in fp32 from the same input values, in different orders, so two
    scores can swap only when their float64 values lie within the accumulation bound
    (`sum_tolerance` of |q| . |k|, twice: one error on each side). Every slot whose float64
    score is farther than that from its neighbours (the slot before and after, including the
    (k+1)-th key) must hold the reference's index; in a near-tie the two sides may order the
    tied keys either way, so those slots are compared by their float64 scores within the bound."""
    k = options.get("topk", 0)
    if k == 0:
        assert got is None and want is None
        return
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert bool((got >= 0).all() and (got < inputs["k"].shape[1]).all()), "index out of range"
    sorted_got = got.sort(-1).values
    assert bool((sorted_got[..., 1:] != sorted_got[..., :-1]).all()), "repeated index in a row"
    q64, k64 = inputs["q"].double(), inputs["k"].double()
    z = options["scale"] * (q64 @ k64.transpose(1, 2))
    magnitude = abs(options["scale"]) * sum_magnitude(q64, k64.transpose(1, 2))
    bound = 2 * sum_tolerance(magnitude, torch.float32, inputs["q"].shape[-1])
    ranked, order = z.sort(dim=-1, descending=True, stable=True)
    ranked_bound = torch.gather(bound, 2, order)
    top = min(k + 1, z.shape[-1])
    gaps = ranked[..., : top - 1] - ranked[..., 1:top]  # [B, Nq, top-1]
    near = gaps <= ranked_bound[..., : top - 1] + ranked_bound[..., 1:top]
    pad = torch.zeros_like(near[..., :1])
    slot_near = torch.cat([pad, near], -1)[..., :k] | torch.cat([near, pad], -1)[..., :k]
    decided = ~slot_near
    assert torch.equal(got[decided], want[decided]), "top-k differs where no rounding can swap"
    picked, best = torch.gather(z, 2, got), torch.gather(z, 2, want)
    allowed = 2 * k * bound.amax(-1, keepdim=True)  # a tie group spans at most k bounds
    assert bool(((picked - best).abs() <= allowed).all()), "near-tie resolved beyond rounding"


@pytest.mark.parametrize("warp_over", WARP_MODES)
@pytest.mark.parametrize(
    "dtype",
    [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")],
)
def test_matches_reference(dtype: torch.dtype, warp_over: str) -> None:
    """B2, 6x10 queries against 5x9 keys, Cqk 80, Cp 48, Cv 40, k 3, with the default configs
    (two or three tiles a side in the forward and the key-side backward, the last one partial;
    one partial 64-query tile for dq; two chunks of Cqk)."""
    inputs = make_inputs(dtype)
    check_against_reference(inputs, **_scales(inputs), topk=3, warp_over=warp_over)


SMALL_BLOCKS = {
    "dense_fwd": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 32, "BLOCK_V": 16},
    "dense_bwd_query": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 32, "BLOCK_C": 32},
    "dense_bwd_key": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 32, "BLOCK_C": 32},
    "dense_bwd_tile": {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_D": 32},
}


@pytest.mark.parametrize(
    "dtype",
    [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")],
)
def test_matches_reference_with_small_tiles(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 16 so that every loop runs several times with a partial tail: query tiles (40
    queries: 16 + 16 + 8), key tiles (20 keys), channel chunks of the scores, value chunks of
    the forward's grid and gradient chunks of every backward role (Cqk 48 = 32 + 16,
    Cv 40 = 16 + 16 + 8 or 32 + 8, Cp 24)."""
    configs = {
        name: {**blocks, "num_warps": 4, "num_stages": 1} for name, blocks in SMALL_BLOCKS.items()
    }
    monkeypatch.setattr(fused_dense, "launch_config", lambda kernel, *_: configs[kernel.name])
    inputs = make_inputs(dtype, cqk=48, cp=24, cv=40, nq=40, nk=20)
    check_against_reference(inputs, **_scales(inputs), topk=3, warp_over="kept")


CHANNELS = {"Cqk": 80, "Cp": 48, "Cv": 40, "Cw": CW}  # make_inputs' defaults


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_tiled_backward_in_chunks_of_keys(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scratch budget that fits 48 keys: 130 keys in passes of 48, 48 and 34, each pass's
    key-side gradients written into their rows and the query side's summed in fp32; every buffer
    NaN-filled (the fixture), so a row of a key-side gradient that no pass writes shows."""
    budget = fused_dense.tiled_scratch_bytes(2, 40, 130, CHANNELS, dtype, 48, False)
    monkeypatch.setattr(fused_dense, "SCRATCH_BUDGET", budget)
    assert fused_dense.chunk_keys(2, 40, 130, CHANNELS, dtype, False) == 48
    inputs = make_inputs(dtype, nq=40, nk=130)
    check_against_reference(inputs, **_scales(inputs), topk=3, warp_over="pruned")


def test_key_chunks_are_balanced() -> None:
    """As few passes as the budget allows, each of the same multiple of 16 keys."""
    model = {"Cqk": 640, "Cp": 128, "Cv": 512, "Cw": 3}
    cols = fused_dense.chunk_keys(8, 4096, 4096, model, torch.bfloat16)
    most = fused_dense.tiled_scratch_bytes(8, 4096, 4096, model, torch.bfloat16, cols + 16)
    assert cols % 16 == 0 and 4096 % cols < cols
    passes = -(-4096 // cols)
    assert passes == -(-4096 // (cols + 16)) or most > fused_dense.SCRATCH_BUDGET


def test_scratch_budget_holds_at_every_size() -> None:
    """One budget in bytes for all the tiled backward's buffers together, at the model's dense
    channels and beyond B * Nk = 2^19: either a chunk that fits, or the streamed backward."""
    model = {"Cqk": 640, "Cp": 128, "Cv": 512, "Cw": 3}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for summed in (True, False):
            for b, n in ((8, 1024), (8, 4096), (1, 16384), (64, 16384), (8, 65536), (2, 1 << 20)):
                cols = fused_dense.chunk_keys(b, n, n, model, dtype, summed)
                assert 0 <= cols <= n
                if cols:
                    used = fused_dense.tiled_scratch_bytes(b, n, n, model, dtype, cols, summed)
                    assert used <= fused_dense.SCRATCH_BUDGET, (dtype, b, n, cols, used)
                else:  # not one key fits: the streamed backward needs no scratch
                    one = fused_dense.tiled_scratch_bytes(b, n, n, model, dtype, 1, summed)
                    assert one > fused_dense.SCRATCH_BUDGET
    assert fused_dense.chunk_keys(8, 1024, 1024, model, torch.bfloat16) == 1024  # one pass


def test_tiled_backward_allocates_what_the_budget_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffers the tiled backward takes from `runtime.empty` beyond the gradients (its tiles)
    are within the model `tiled_scratch_bytes` charges against the budget."""
    taken = []
    empty = runtime.empty  # NaN-filled (`nan_filled_outputs`)

    def spy(shape, dtype, device):
        taken.append(math.prod(shape) * dtype.itemsize)
        return empty(shape, dtype, device)

    monkeypatch.setattr(runtime, "empty", spy)
    budget = fused_dense.tiled_scratch_bytes(2, 20, 150, CHANNELS, torch.float32, 32, False)
    monkeypatch.setattr(fused_dense, "SCRATCH_BUDGET", budget)
    inputs = make_inputs(torch.float32, nq=20, nk=150)
    out = kernels.dynamic_attention(
        *(inputs[n] for n in GRAD_NAMES[:5]), warp_values=inputs["warp_values"],
        backend="triton", **_scales(inputs),
    )  # fmt: skip
    taken.clear()
    (out.out.sum() + out.conf.sum() + out.warp.sum()).backward()
    tiles = 4 * 2 * 20 * 32 * 4  # dz, ds, p m, w for 32 keys in fp32
    key_side = ("k", "k_prune", "v", "warp_values")  # dk, dk_prune, dv, dwarp_values
    gradients = sum(inputs[n].numel() * 4 for n in key_side)
    assert sum(taken) == tiles + gradients
    assert tiles <= budget


# fp16 is left out: its memory is bf16's byte for byte (two bytes an element, the same buffers).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_backward_live_memory_is_what_the_model_counts(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tensor the backward allocates, measured at each allocation (`LiveBytes`), in chunks
    of keys as on a GPU (where cuBLAS adds the bf16 products into the fp32 sums itself: here the
    CPU's product buffer is hidden from the count): the peak is at most the key-side gradients,
    the upstream gradients' contiguous copies and per-query sums, and the scratch
    `tiled_scratch_bytes` counts (plus the scalar seed of the backward). The query side's
    gradients take no room of their own: for fp32 they are the sums, otherwise their rounded
    copies are made once the tiles, which outweigh them, are freed. (bf16 values are wrong
    under the interpreter, its memory is not: only memory is checked here.)"""
    # Many queries and few keys per pass, as at 4,096 tokens: dq outweighs a pass's key-side
    # product, and (as there) the tiles outweigh dq's rounded copy.
    nq, nk, cols = 150, 72, 32
    budget = fused_dense.tiled_scratch_bytes(B, nq, nk, CHANNELS, dtype, cols)
    monkeypatch.setattr(fused_dense, "SCRATCH_BUDGET", budget)
    monkeypatch.setattr(fused_dense, "chunk_keys", lambda *args, **kw: cols)
    sum_product = fused_dense.sum_product

    def as_on_a_gpu(total, a, x):
        with torch.utils._python_dispatch._disable_current_modes():
            sum_product(total, a, x)

    monkeypatch.setattr(fused_dense, "sum_product", as_on_a_gpu)
    inputs = make_inputs(dtype, nq=nq, nk=nk)
    out = kernels.dynamic_attention(
        *(inputs[n] for n in GRAD_NAMES[:5]), warp_values=inputs["warp_values"],
        backend="triton", **_scales(inputs),
    )  # fmt: skip
    loss = out.out.sum() + out.conf.sum() + out.warp.sum()
    leaves = [inputs[n] for n in GRAD_NAMES if inputs[n] is not None]
    with LiveBytes() as live:
        torch.autograd.grad(loss, leaves)
    e = dtype.itemsize
    key_side = sum(inputs[n].numel() * e for n in ("k", "k_prune", "v", "warp_values"))
    query_side = sum(inputs[n].numel() * e for n in ("q", "q_prune")) if e == 4 else 0
    upstream = B * nq * (CHANNELS["Cv"] + 1 + CHANNELS["Cw"]) * e + 2 * B * nq * 4
    bound = key_side + query_side + upstream + budget + 8
    assert live.peak <= bound, "\n".join([f"peak {live.peak} > {bound}", *live.at_peak])


def test_streamed_backward_runs_where_not_one_row_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_dense, "SCRATCH_BUDGET", 1024)
    called = []
    monkeypatch.setattr(fused_dense, "tiled_backward", lambda *a, **k: called.append(1))
    inputs = make_inputs(torch.float32, nq=20, nk=20)
    check_against_reference(inputs, **_scales(inputs), topk=0, warp_over="kept")
    assert not called


def dense_peak_bytes(b: int, n: int, channels: dict[str, int], dtype, k: int = 4) -> int:
    """A model of the dense operator's peak memory over forward and backward at n tokens (queries
    = keys), from the allocations the code makes: inputs, forward outputs and saved statistics,
    upstream gradients, the per-query sums, the returned gradients (all live at the end of the
    backward), plus the tiled backward's scratch at its chunk (`tiled_scratch_bytes`), which is
    larger than anything the forward allocates beyond its outputs (nothing)."""
    e = dtype.itemsize
    c_in = 2 * channels["Cqk"] + channels["Cv"] + 2 * channels["Cp"] + channels["Cw"]
    inputs = b * n * c_in * e
    outputs = b * n * (channels["Cv"] + 1 + channels["Cw"]) * e + b * n * (k * 8 + 3 * 4)
    upstream = b * n * (channels["Cv"] + 1 + channels["Cw"]) * e + b * n * 2 * 4
    gradients = inputs
    cols = fused_dense.chunk_keys(b, n, n, channels, dtype)
    scratch = fused_dense.tiled_scratch_bytes(b, n, n, channels, dtype, cols) if cols else 0
    return inputs + outputs + upstream + gradients + scratch


def test_dense_memory_grows_about_linearly_from_1024_to_4096_tokens() -> None:
    """At the model's dense block (B 8, Cqk 640, Cp 128, Cv 512, Cw 3, k 4), the modelled peak
    at 4,096 tokens is at most 4.2 times that at 1,024 (docs/kernels-dense.md has the figures)."""
    model = {"Cqk": 640, "Cp": 128, "Cv": 512, "Cw": 3}
    for dtype in (torch.bfloat16, torch.float32):
        small, large = (dense_peak_bytes(8, n, model, dtype) for n in (1024, 4096))
        assert large <= 4.2 * small, (dtype, small / 2**20, large / 2**20)


@pytest.mark.parametrize("strategy", ["tiled", "streamed"])
@pytest.mark.parametrize("upstream_scale", [1.0, 512.0])
def test_fp16_backward_at_scale_100_stays_finite_and_accurate(
    strategy: str, upstream_scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unit-norm q and k at scale 100 (the sparse scales' setting) with upstream gradients x512:
    `scale dz` exceeds fp16's range while the fp32 reference's gradients stay finite. The fused
    backward keeps those tiles in fp32 and must match the reference within twice its own fp16
    error (and be finite wherever it is)."""
    monkeypatch.setenv(fused_dense.BACKWARD_ENV, strategy)
    inputs = make_inputs(torch.float16, cqk=32, nq=24, nk=20, seed=3)
    with torch.no_grad():
        for name in ("q", "k"):
            x = inputs[name].float()
            inputs[name].copy_(x / x.norm(dim=-1, keepdim=True))
    options = {"scale": 100.0, "prune_scale": 1.0 / 48, "topk": 0, "warp_over": "kept"}
    if upstream_scale > 1:
        upstream = [u * upstream_scale for u in _upstream_for(inputs)]
        _, ref_grads = run_op(inputs, "torch", upstream, **options)
        assert all(torch.isfinite(g).all() for g in ref_grads.values())
        dz_max = 100.0 * float(upstream[0].float().abs().max()) * 5  # |g| of several units
        assert dz_max > 65504, "the case must exceed fp16's range in scale * dz"
    check_against_reference(inputs, upstream_scale=upstream_scale, **options)


@pytest.mark.parametrize("warp_over", ["kept", "all"])
def test_streamed_backward_matches_reference(
    warp_over: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scratch-free backward that $DYNAST_DENSE_BACKWARD=streamed selects."""
    monkeypatch.setenv(fused_dense.BACKWARD_ENV, "streamed")
    inputs = make_inputs(torch.float32)
    check_against_reference(inputs, **_scales(inputs), topk=3, warp_over=warp_over)


def test_unknown_backward_strategy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fused_dense.BACKWARD_ENV, "fastest")
    with pytest.raises(ValueError, match=r"DYNAST_DENSE_BACKWARD='fastest'.*tiled, streamed"):
        fused_dense.backward_strategy()


def test_without_warp_or_topk() -> None:
    inputs = make_inputs(torch.float32, warp=False)
    check_against_reference(inputs, **_scales(inputs), topk=0)


@pytest.mark.parametrize("warp_over", ["kept", "pruned"])
def test_tiny_problem_with_every_key_in_the_top_k(warp_over: str) -> None:
    """Degenerate sizes: three queries (one of each kind), three keys, k = Nk, channels 8, 4
    and 5 (tiles far larger than the problem)."""
    inputs = make_inputs(torch.float32, cqk=8, cp=4, cv=5, nq=3, nk=3)
    check_against_reference(inputs, **_scales(inputs), topk=3, warp_over=warp_over)


def test_strided_inputs() -> None:
    """Inputs that are views: channels strided (a transposed [B, C, N] map, as a 1x1 conv output
    flattens) and tokens strided (every other row of a larger tensor)."""
    base = make_inputs(torch.float32)
    views = {}
    for name, x in base.items():
        x = x.detach()
        if name in ("q", "v"):
            x = x.transpose(1, 2).contiguous().transpose(1, 2)  # channel stride = tokens
        elif name in ("k", "k_prune"):
            wide = x.new_zeros(x.shape[0], 2 * x.shape[1], x.shape[2])
            wide[:, ::2] = x
            x = wide[:, ::2]  # token stride = 2 rows
        views[name] = x.requires_grad_()
    assert views["q"].stride(-1) != 1 and views["k"].stride(1) != views["k"].shape[2]
    check_against_reference(views, **_scales(views), topk=3, warp_over="pruned")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_topk_near_ties_between_distinct_keys(dtype: torch.dtype) -> None:
    """Distinct keys whose scores differ by a few times the accumulation bound (key 9 is key 4
    plus 2^-9 in one channel, key 20 likewise of key 11): both sides must rank them the same
    way, exactly, in fp32 and in fp16 (whose inputs are exact in fp32 products)."""
    gen = torch.Generator().manual_seed(8)
    q = torch.randint(-4, 5, (B, NQ, 16), generator=gen).float() / 4
    k = torch.randint(-4, 5, (B, NK, 16), generator=gen).float() / 4
    k[:, 9] = k[:, 4]
    k[:, 9, 0] += 2.0**-9
    k[:, 20] = k[:, 11]
    k[:, 20, 5] -= 2.0**-9
    inputs = make_inputs(dtype, cqk=16)
    inputs["q"], inputs["k"] = (x.to(_device(), dtype).requires_grad_() for x in (q, k))
    args = [inputs[name] for name in GRAD_NAMES[:5]]
    options = {"scale": 1.0, "prune_scale": 1.0, "topk": 4}
    ref = kernels.dynamic_attention(*args, backend="torch", **options)
    res = kernels.dynamic_attention(*args, backend="triton", **options)
    assert torch.equal(res.topk, ref.topk)
    check_topk(res.topk, ref.topk, inputs, options)


@pytest.mark.parametrize("k", [8, 16, 32])
def test_large_topk(k: int) -> None:
    """k up to TOPK_MAX: every slot a distinct real key, as the reference ranks them (a list
    wider than one key tile of 32 at k = 32)."""
    inputs = make_inputs(torch.float32, cqk=16, cp=8, cv=8, nq=12, nk=40, warp=False)
    args = [inputs[name] for name in GRAD_NAMES[:5]]
    options = {"scale": 0.5, "prune_scale": 1.0, "topk": k}
    with torch.no_grad():
        ref = kernels.dynamic_attention(*args, backend="torch", **options)
        res = kernels.dynamic_attention(*args, backend="triton", **options)
    check_topk(res.topk, ref.topk, inputs, options)


def test_topk_above_the_bound_is_refused() -> None:
    inputs = make_inputs(torch.float32, cqk=16, cp=8, cv=8, nq=12, nk=40, warp=False)
    args = [inputs[name] for name in GRAD_NAMES[:5]]
    k = fused_dense.TOPK_MAX + 1
    with pytest.raises(ValueError, match=f"topk \\({k}\\) must be at most 32"):
        kernels.dynamic_attention(*args, scale=1.0, prune_scale=1.0, topk=k, backend="triton")


def test_topk_ties_go_to_the_lower_key_index() -> None:
    """Scores that are small integers tie exactly; the kernel must pick the lowest key index
    among equals, as the reference's stable sort does (k = 5: a non-power-of-two list)."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-1, 2, (B, NQ, 16), generator=gen).float().to(_device())
    k = torch.randint(-1, 2, (B, NK, 16), generator=gen).float().to(_device())
    k[:, 7] = k[:, 3]  # duplicate keys: whole rows of ties
    inputs = make_inputs(torch.float32, cqk=16)
    inputs["q"], inputs["k"] = q.requires_grad_(), k.requires_grad_()
    args = [inputs[name] for name in GRAD_NAMES[:5]]
    options = {"scale": 0.5, "prune_scale": 1.0, "topk": 5}
    ref = kernels.dynamic_attention(*args, backend="torch", **options)
    res = kernels.dynamic_attention(*args, backend="triton", **options)
    assert torch.equal(res.topk, ref.topk)


@pytest.mark.parametrize("kernel", tuning_dense.TUNABLE, ids=lambda kernel: kernel.name)
def test_every_config_of_the_space_runs_and_agrees(kernel) -> None:
    """The autotuner's runners, for every config the space offers on a small problem, compute
    what the reference computes (forward outputs, or that kernel's gradients). The interpreter
    ignores num_warps and num_stages: there, configs that differ only in those run once."""
    dims = {"B": 2, "Nq": 45, "Nk": 60, "Cqk": 48, "Cp": 24, "Cv": 80, "Cw": 3, "k": 3}
    if "bwd" in kernel.name:
        dims["k"] = 0  # what the launchers key the backward on
    space = kernel.space(dims)
    assert kernel.default(dims) in space
    device = _device()
    raw = tuning_dense.random_inputs(dims, device, torch.float32)
    inputs = dict(zip(GRAD_NAMES, (x.clone().requires_grad_() for x in raw), strict=True))
    scale, prune_scale = tuning_dense.release_scales(dims)
    options = {"scale": scale, "prune_scale": prune_scale, "topk": dims["k"], "warp_over": "kept"}
    upstream = list(tuning_dense.random_upstream(dims, device, torch.float32))
    ref, ref_grads = run_op(inputs, "torch", upstream, **options)
    if interpreting():
        blocks = [{k: v for k, v in c.items() if k.startswith("BLOCK_")} for c in space]
        space = [c for i, c in enumerate(space) if blocks[i] not in blocks[:i]]
    for config in space:
        got = kernel.make_runner(dims, config, device, torch.float32)()
        label = f"{kernel.name} {config}"
        if kernel.name == fused_dense.FORWARD.name:
            assert_close(got["out"], ref.out, name=f"out, {label}")
            assert_close(got["conf"], ref.conf, name=f"conf, {label}")
            assert_close(got["warp"], ref.warp, name=f"warp, {label}")
            check_topk(got["topk"], ref.topk, inputs, options)
            continue
        for name, grad in got.items():
            assert grad is not None, f"{name} not written, {label}"
            assert_close(grad, ref_grads[name.removeprefix("d")], name=f"{name}, {label}")


# ---------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("warp_over", WARP_MODES)
def test_bf16_matches_reference_on_gpu(warp_over: str) -> None:
    """bf16 `tl.dot` is wrong under the interpreter: checked on a GPU only."""
    inputs = make_inputs(torch.bfloat16, cqk=160, cp=32, cv=128, nq=256, nk=192)
    ref, ref_grads = run_op(inputs, "torch", _upstream_for(inputs), topk=4,
                            warp_over=warp_over, **_scales(inputs))  # fmt: skip
    res, grads = run_op(inputs, "triton", _upstream_for(inputs), topk=4,
                        warp_over=warp_over, **_scales(inputs))  # fmt: skip
    for name in ("out", "conf", "warp"):
        assert_close(getattr(res, name), getattr(ref, name), name=name)
    for name, want in ref_grads.items():
        scale = want.abs().max().item()
        assert_close(grads[name], want, name=f"d{name}", atol=2e-2 * scale, rtol=0)


@pytest.mark.gpu
def test_bf16_backward_in_chunks_of_keys_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 in chunks of keys: cuBLAS adds the query side's products into the fp32 sums itself
    (`out_dtype`), which only runs on a GPU. The chunked gradients match the reference as closely
    as the one-pass test above requires."""
    inputs = make_inputs(torch.bfloat16, cqk=160, cp=32, cv=128, nq=256, nk=200)
    options = {**_scales(inputs), "topk": 4, "warp_over": "kept"}
    _, ref_grads = run_op(inputs, "torch", _upstream_for(inputs), **options)
    channels = {"Cqk": 160, "Cp": 32, "Cv": 128, "Cw": CW}
    budget = fused_dense.tiled_scratch_bytes(B, 256, 200, channels, torch.bfloat16, 64)
    monkeypatch.setattr(fused_dense, "SCRATCH_BUDGET", budget)
    assert fused_dense.chunk_keys(B, 256, 200, channels, torch.bfloat16) == 64
    _, chunked = run_op(inputs, "triton", _upstream_for(inputs), **options)
    for name, want in ref_grads.items():
        scale = want.abs().max().item()
        assert_close(chunked[name], want, name=f"d{name}", atol=2e-2 * scale, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype",
    [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")],
)
def test_model_sizes_on_gpu(dtype: torch.dtype) -> None:
    """The deepfashion-256 dense block (32x32 tokens, Cqk 640, Cp 128, Cv 512, k 4)."""
    inputs = make_inputs(dtype, cqk=640, cp=128, cv=512, nq=1024, nk=1024)
    check_against_reference(inputs, **_scales(inputs), topk=4, warp_over="kept")


@pytest.mark.gpu
def test_repeated_runs_are_identical_on_gpu() -> None:
    """No atomics: every element has one writer, so two runs agree bit for bit."""
    inputs = make_inputs(torch.bfloat16, cqk=640, cp=128, cv=512, nq=1024, nk=1024)
    options = {**_scales(inputs), "topk": 4, "warp_over": "kept"}
    first = run_op(inputs, "triton", _upstream_for(inputs), **options)
    for _ in range(3):
        again = run_op(inputs, "triton", _upstream_for(inputs), **options)
        for name in ("out", "conf", "warp", "topk"):
            assert torch.equal(getattr(again[0], name), getattr(first[0], name)), name
        for name, grad in again[1].items():
            assert torch.equal(grad, first[1][name]), f"d{name}"
