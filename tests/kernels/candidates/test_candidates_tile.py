"""The query-tile candidate forward (`kernels.candidates.tile`, `$DYNAST_CANDIDATE_FORWARD=tile`)
against the reference and against the per-query gather forward.

The tile kernel scores by `tl.dot` over the tile's union of keys, so its sums run in another order
than the gather kernel's: outputs agree within rounding, top-k exactly wherever scores are apart
(each problem checks that premise). Its backward is the per-query backward, run on the z and s it
saves. On machines without a GPU the kernels run on Triton's CPU interpreter (about 0.3 s per tile
program): the grids are the smallest that still hold partial tiles.
"""

from __future__ import annotations

import pytest
import torch
from _assert import assert_close, assert_error_within
from test_candidates_fused import (
    DEVICE,
    NAMES,
    check_margins,
    compare,
    derived_problem,
    make_candidates,
    make_inputs,
)

from kernels import candidate_attention, inner_scale_candidates, inter_scale_candidates
from kernels.call import WARP_MODE_IDS, AttentionInputs
from kernels.candidates import aot as aot_candidates
from kernels.candidates import fused
from kernels.candidates import tuning as tuning_candidates
from kernels.candidates.lists import candidate_indices
from kernels.candidates.reference import reference_candidate_attention

pytestmark = pytest.mark.usefixtures("nan_filled_outputs")
KEPT = WARP_MODE_IDS["kept"]


@pytest.mark.parametrize(
    ("kind", "dtype", "warp_over"),
    [
        pytest.param("inner", torch.float32, "kept", id="inner-float32-kept"),
        pytest.param("inter", torch.float16, "pruned", id="inter-float16-pruned"),
    ],
)
def test_matches_reference(
    kind: str, dtype: torch.dtype, warp_over: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator under the switch: B2-H6-W10 (4x4 tiles, the last row and column of tiles
    partial), Cqk 80 / Cp 20 / Cv 48, k 3: forward, top-k and all six input gradients (the
    per-query backward after the tile forward), held to the tolerances of the gather kernel's
    own test."""
    monkeypatch.setenv(fused.FORWARD_ENV, "tile")
    seen = []
    launch = fused.launch_forward_tile

    def spy(*args, **kwargs):
        seen.append(args[1])
        return launch(*args, **kwargs)

    monkeypatch.setattr(fused, "launch_forward_tile", spy)
    seed = sum(map(ord, kind + warp_over))
    x = make_inputs(80, 20, 48, dtype, seed)
    cand = make_candidates(kind, seed)
    check_margins(x, cand, 0.3)
    compare(x, cand, scale=0.3, warp_over=warp_over, seed=seed)
    assert seen and seen[0] is cand  # the tile forward ran, on the CandidateList itself


def score_gaps(x: dict[str, torch.Tensor], cand, scale: float, k: int) -> float:
    """The smallest float64 gap between the k + 1 best distinct keys of any query, relative to
    the scores' size: the tile and gather forwards sum in different orders, so their top-k may
    differ only where this is at rounding level."""
    idx = candidate_indices(cand).long()
    b = torch.arange(idx.shape[0])[:, None, None]
    queries, keys = x["q"].detach().double(), x["k"].detach().double()
    z = scale * torch.einsum("bqc,bqmc->bqm", queries, keys[b, idx])
    same = idx[..., :, None] == idx[..., None, :]
    repeat = (same & torch.ones_like(same).tril(-1)).any(-1)
    top = z.masked_fill(repeat, float("-inf")).sort(-1, descending=True).values[..., : k + 1]
    gaps = top[..., :-1] - top[..., 1:]
    gaps = gaps[torch.isfinite(gaps)]
    return float(gaps.min() / z.abs().max()) if gaps.numel() else float("inf")


def both_forwards(x: dict[str, torch.Tensor], cand, topk: int, config=None):
    """(tile, gather) forward results (out, conf, topk, warp, z, s) on detached inputs."""
    inputs = AttentionInputs(*(x[n].detach() for n in NAMES))
    common = dict(scale=0.3, prune_scale=0.7, topk=topk, warp_mode=KEPT, save_scores=True)
    tile = fused.launch_forward_tile(inputs, cand, **common, config=config)
    gather = fused.launch_forward(inputs, cand, window=cand.window, **common)
    return tile, gather


def check_against_gather(tile, gather, x, cand, topk: int) -> None:
    """Tile against gather forward: z, s, out, conf, warp within fp32 rounding of their sums,
    top-k exact (scores apart: `score_gaps`), and out, conf, warp against the reference."""
    assert score_gaps(x, cand, 0.3, topk) > 1e-5, "near-tie in the top-k: pick another seed"
    for name, got, want in zip(("out", "conf", "warp", "z", "s"), tile[:2] + tile[3:],
                               gather[:2] + gather[3:], strict=True):  # fmt: skip
        assert_close(got, want, name=name)
    assert torch.equal(tile[2], gather[2]), "top-k differs from the gather forward"
    ref = reference_candidate_attention(
        *(x[n].detach() for n in NAMES[:5]), cand, scale=0.3, prune_scale=0.7, topk=topk,
        warp_values=x["warp_values"].detach(),
    )  # fmt: skip
    for name, got, want in zip(("out", "conf", "warp"), tile[:2] + tile[3:4],
                               ref[:2] + ref[3:], strict=True):  # fmt: skip
        assert_close(got, want, name=f"{name} vs reference")
    assert torch.equal(tile[2], ref[2])


@pytest.mark.parametrize(
    ("kind", "height", "width", "batch", "k"),
    [
        pytest.param("inner", 5, 7, 2, 3, id="inner-B2-5x7-k3"),  # odd sides: partial tiles
        pytest.param("inner", 1, 5, 2, 2, id="inner-B2-1x5-k2"),  # one row: no upper, no lower
        pytest.param("inter", 2, 6, 2, 3, id="inter-B2-2x6-k3"),  # coarse grid 1x3
    ],
)
def test_awkward_grids_match_the_gather_forward(
    kind: str, height: int, width: int, batch: int, k: int
) -> None:
    """Borders that clamp and replicate, matches on the corners, repeated matches (duplicated
    candidates), channels 24 / 8 / 20 and Cw 3 (`derived_problem`): the tile forward computes what
    the gather forward computes."""
    x, cand = derived_problem(kind, height, width, batch, k, seed=height * 100 + width * 10 + k)
    topk = k + 1
    tile, gather = both_forwards(x, cand, topk)
    assert not cand.is_built, "the tile forward built the list"
    check_against_gather(tile, gather, x, cand, topk)


def union_sizes(cand, tile_y: int, tile_x: int) -> torch.Tensor:
    """Distinct candidate keys of every tile_y x tile_x tile of queries, [B, tiles]."""
    idx = candidate_indices(cand).long()
    height, width = cand.grid
    b = idx.shape[0]
    sizes = []
    for y0 in range(0, height, tile_y):
        for x0 in range(0, width, tile_x):
            ys = torch.arange(y0, min(y0 + tile_y, height))
            xs = torch.arange(x0, min(x0 + tile_x, width))
            tokens = (ys[:, None] * width + xs[None, :]).flatten()
            sizes.append([idx[i, tokens].unique().numel() for i in range(b)])
    return torch.tensor(sizes).T


def test_unions_larger_than_a_page_and_lists_without_overlap() -> None:
    """Inter-scale tiles whose four windows match disjoint coarse cells (no candidate shared
    between lists: 48 distinct keys per tile), staged in pages of 16 keys: three pages a tile,
    each key loaded once, the same results."""
    gen = torch.Generator().manual_seed(21)
    height = width = 8
    coarse = torch.randperm(16, generator=gen)[:12].reshape(4, 3)  # 4 windows x 3 distinct
    # Window (u, v) of a tile's 2x2 windows takes one row of `coarse`, shifted per tile.
    top = torch.stack([coarse.roll(t, 0) for t in range(4)])  # [tiles, windows, k]
    order = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    grid = torch.empty(4, 4, 3, dtype=torch.long)
    for t, (ty, tx) in enumerate(order.tolist()):
        for w, (wy, wx) in enumerate(order.tolist()):
            grid[2 * ty + wy, 2 * tx + wx] = top[t, w]
    top = grid.reshape(1, 16, 3).to(DEVICE)
    cand = inter_scale_candidates(top, height, width)
    sizes = union_sizes(cand, 4, 4)
    assert (sizes == 48).all(), f"lists overlap: {sizes.tolist()}"
    gen = torch.Generator().manual_seed(22)
    channels = {"q": 24, "k": 24, "v": 20, "q_prune": 8, "k_prune": 8, "warp_values": 3}
    x = {n: torch.randn(1, 64, c, generator=gen).to(DEVICE) for n, c in channels.items()}
    config = {"TILE_Y": 4, "TILE_X": 4, "BLOCK_U": 16, "BLOCK_C": 16, "num_warps": 4,
              "num_stages": 1}  # fmt: skip
    tile, gather = both_forwards(x, cand, 3, config)
    check_against_gather(tile, gather, x, cand, 3)


def test_heavy_overlap_and_duplicates() -> None:
    """Every query of an inner-scale grid matching the same three cells: a tile's 320 slots hold
    at most 15 distinct keys, most of them many times over (duplicates count in the softmax and
    tie in the top-k, which picks the lowest positions)."""
    gen = torch.Generator().manual_seed(31)
    height, width, k = 5, 7, 3
    top = torch.tensor([17, 3, 31]).expand(2, height * width, k).contiguous()
    cand = inner_scale_candidates(top.to(DEVICE), height, width)
    assert union_sizes(cand, 4, 4).max() <= 15
    channels = {"q": 24, "k": 24, "v": 20, "q_prune": 8, "k_prune": 8, "warp_values": 3}
    x = {n: torch.randn(2, 35, c, generator=gen).to(DEVICE) for n, c in channels.items()}
    tile, gather = both_forwards(x, cand, 4)
    check_against_gather(tile, gather, x, cand, 4)


def test_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """`$DYNAST_CANDIDATE_FORWARD` picks the forward for derived candidates ("gather" when unset);
    a plain index tensor, a list read under `$DYNAST_CANDIDATES=list` and bf16 on the interpreter
    run the gather forward whatever it says; a value it does not know is an error naming it."""
    x, cand = derived_problem("inner", 2, 3, 1, 2, seed=41)
    args = [x[n].detach() for n in NAMES[:5]]
    calls = []
    for name in ("launch_forward", "launch_forward_tile"):
        original = getattr(fused, name)

        def spy(*a, _original=original, _name=name, **kw):
            calls.append(_name)
            return _original(*a, **kw)

        monkeypatch.setattr(fused, name, spy)

    def forward(candidates, dtype=torch.float32) -> str:
        calls.clear()
        candidate_attention(*(t.to(dtype) for t in args), candidates, scale=0.3, prune_scale=0.7,
                            backend="triton")  # fmt: skip
        return calls[-1]

    monkeypatch.delenv(fused.FORWARD_ENV, raising=False)
    assert forward(cand) == "launch_forward"
    monkeypatch.setenv(fused.FORWARD_ENV, "tile")
    assert forward(cand) == "launch_forward_tile"
    assert forward(cand.indices) == "launch_forward"
    if DEVICE.type == "cpu":
        assert forward(cand, torch.bfloat16) == "launch_forward"
    monkeypatch.setenv(fused.CANDIDATES_ENV, "list")
    assert forward(cand) == "launch_forward"
    monkeypatch.setenv(fused.FORWARD_ENV, "fastest")
    with pytest.raises(ValueError, match=r"DYNAST_CANDIDATE_FORWARD='fastest'.*gather, tile"):
        forward(cand)
    inputs = AttentionInputs(*args)
    with pytest.raises(ValueError, match="query-tile forward takes a CandidateList"):
        fused.launch_forward_tile(inputs, cand.indices, scale=0.3, prune_scale=0.7, topk=0,
                                  warp_mode=0, save_scores=False)  # fmt: skip


def test_launch_configs() -> None:
    """The default lies in the space at every model size, which `tile_fits` prunes; the AOT cases
    cover the tile forward's defaults for inner (DERIVE 1) and inter (DERIVE 2) candidates."""
    for dims in aot_candidates.tuning_dims():
        space = fused.FORWARD_TILE.space(dims)
        assert space and fused.FORWARD_TILE.default(dims) in space, dims
        assert all(fused.tile_fits(dims, c) for c in space)
    cases = aot_candidates.tile_aot_cases()
    assert all(c.function == "candidate_fwd_tile_kernel" for c in cases)
    assert {c.constexprs["DERIVE"] for c in cases if c.is_default} == {1, 2}
    assert all(c.signature["SRC"] == "*i32" for c in cases)


def test_tuning_runner_launches() -> None:
    """The autotuner's runner of the tile forward (the model's unit-norm rows at scale 100, a
    realistic inter-scale list) computes what the gather forward computes."""
    (kernel,) = tuning_candidates.TILE_TUNABLE
    dims = {"Nq": 64, "Cqk": 24, "Cp": 8, "Cv": 20, "Cw": 3, "M": 16, "G": 4}
    problem = tuning_candidates.random_problem(dims, DEVICE, torch.float32)  # seeded: the same
    out, conf, _, warp, _, _ = kernel.make_runner(dims, kernel.default(dims), DEVICE,
                                                  torch.float32)()  # fmt: skip
    want = fused.launch_forward(
        problem.inputs(), problem.candidates, window=problem.candidates.window,
        scale=problem.shape.scale, prune_scale=problem.shape.prune_scale, topk=problem.shape.k,
        warp_mode=KEPT, save_scores=True,
    )  # fmt: skip
    ref64 = reference_candidate_attention(
        *(t.double() for t in problem.inputs()[:5]), problem.candidates, topk=problem.shape.k,
        warp_values=problem.warp_values.double(), scale=problem.shape.scale,
        prune_scale=problem.shape.prune_scale,
    )  # fmt: skip
    # Scale 100: rounding of the scores is amplified; both forwards are held to the float64 run.
    for name, got, base, exact in zip(("out", "conf", "warp"), (out, conf, warp),
                                      want[:2] + want[3:4], ref64[:2] + ref64[3:],
                                      strict=True):  # fmt: skip
        assert_error_within(got, base, exact, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize("block", ["inter", "inner"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_matches_reference(
    block: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real sizes (64x64, Cqk 160) at scale 100 in half precision through the tile forward, held
    to what `test_gpu_matches_reference` of the gather kernel holds it to: twice the reference's
    own error against its fp32 run plus 1e-3, top-k exact wherever rounding cannot swap."""
    from test_candidates_fused import check_topk_exact, gpu_grads, gpu_problem

    monkeypatch.setenv(fused.FORWARD_ENV, "tile")
    problem = gpu_problem(block, dtype)
    torch.manual_seed(0)
    n, cv = problem.q.shape[1], problem.v.shape[2]
    grads = {
        "out": torch.randn(2, n, cv, device="cuda"),
        "conf": torch.randn(2, n, device="cuda"),
        "warp": torch.randn(2, n, 3, device="cuda"),
    }
    got, got_grads = gpu_grads(problem, "triton", grads)
    ref, ref_grads = gpu_grads(problem, "torch", grads)
    exact, exact_grads = gpu_grads(gpu_problem(block, torch.float32), "torch", grads)
    pairs = [(name, getattr(got, name), getattr(ref, name), getattr(exact, name))
             for name in ("out", "conf", "warp")]  # fmt: skip
    names = list(problem.float_inputs())
    pairs += [(f"d{name}", g, r, e) for name, g, r, e in zip(names, got_grads, ref_grads,
                                                            exact_grads, strict=True)]  # fmt: skip
    for name, g, r, e in pairs:
        ref_err = (r.float() - e).abs().max().item()
        assert_close(g.float(), e, name=name, atol=2 * ref_err + 1e-3, rtol=0)
    check_topk_exact(got.topk, ref.topk, problem.q, problem.k, problem.candidates, 100.0)
