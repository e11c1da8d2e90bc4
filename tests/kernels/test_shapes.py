"""The model's attention sizes (docs/method.md section 2 table), the shape syntax, and the
realistic inputs."""

import math

import pytest
import torch

from kernels.shapes import (
    AttentionShape,
    make_problem,
    parse_shape,
    plausible_topk,
    preset_shapes,
    realistic_candidates,
)


def test_deepfashion_256_matches_the_sizes_table() -> None:
    got = [
        (s.block, s.tokens, s.candidates, s.cqk, s.cp, s.cv, s.cw, s.k)
        for s in preset_shapes("deepfashion-256")
    ]
    assert got == [
        ("dense", 1024, 1024, 640, 128, 512, 3, 4),
        ("inter", 4096, 16, 320, 64, 256, 3, 4),
        ("inner", 4096, 20, 320, 64, 256, 3, 4),
        ("inter", 16384, 16, 160, 32, 128, 3, 4),
        ("inner", 16384, 20, 160, 32, 128, 3, 4),
        ("inter", 65536, 16, 80, 16, 64, 3, 4),
        ("inner", 65536, 20, 80, 16, 64, 3, 4),
    ]
    dense, sparse = preset_shapes("deepfashion-256")[:2]
    assert dense.scale == pytest.approx(1 / math.sqrt(640)) and dense.prune_scale == 1 / 128
    assert sparse.scale == 100 and sparse.prune_scale == 1


def test_512_pixels_doubles_every_side_and_keeps_the_channels() -> None:
    small, large = preset_shapes("deepfashion-256"), preset_shapes("deepfashion-512")
    assert len(small) == len(large)
    for a, b in zip(small, large, strict=True):
        assert (b.height, b.width) == (2 * a.height, 2 * a.width)
        assert (a.block, a.cqk, a.cp, a.cv, a.candidates if a.block != "dense" else 0) == (
            b.block,
            b.cqk,
            b.cp,
            b.cv,
            b.candidates if b.block != "dense" else 0,
        )
    assert large[0].tokens == 4096


def test_dims_name_what_the_kernels_key_on() -> None:
    dense, inter, inner = preset_shapes("deepfashion-256")[:3]
    assert dense.dims(8) == {
        "B": 8, "Nq": 1024, "Nk": 1024, "Cqk": 640, "Cp": 128, "Cv": 512, "Cw": 3, "k": 4,
    }  # fmt: skip
    assert inter.dims(8) == {"Nq": 4096, "Cqk": 320, "Cp": 64, "Cv": 256, "Cw": 3, "M": 16, "G": 4}
    assert inner.dims(8)["M"] == 20 and inner.dims(8)["G"] == 1
    # A backward computes no top-k; only the dense kernels key on k.
    assert dense.dims(8, backward=True) == {**dense.dims(8), "k": 0}
    assert inner.dims(8, backward=True) == inner.dims(8)


def test_shape_syntax_round_trips_and_fills_release_scales() -> None:
    s = parse_shape("inner:H=6,W=10,Cqk=48,Cp=12,Cv=40,k=3")
    assert s == AttentionShape("inner", 6, 10, cqk=48, cp=12, cv=40, k=3)
    assert (s.scale, s.prune_scale, s.cw, s.candidates) == (100.0, 1.0, 3, 15)
    d = parse_shape("dense:H=4,W=4,Cqk=16,Cp=4,Cv=8,Cw=0,scale=0.5,prune_scale=2")
    assert (d.scale, d.prune_scale, d.cw) == (0.5, 2.0, 0)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param("sparse:H=4,W=4,Cqk=8,Cp=4,Cv=8", "BLOCK one of", id="unknown-block"),
        pytest.param("dense H=4", "BLOCK:key=value", id="no-colon"),
        pytest.param("dense:H=4,W=4,Cqk=8,Cp=4", "lacks Cv", id="missing-key"),
        pytest.param("dense:H=4,W=4,Cqk=8,Cp=4,Cv=x", "Cv must be int", id="bad-value"),
        pytest.param("dense:H=4,W=4,Cqk=8,Cp=4,Cv=8,N=3", "not key=value", id="unknown-key"),
        pytest.param("inter:H=5,W=4,Cqk=8,Cp=4,Cv=8", "even grid", id="odd-inter"),
        pytest.param("inner:H=4,W=4,Cqk=8,Cp=4,Cv=8,k=0", "k must be", id="k0"),
        pytest.param("dense:H=2,W=2,Cqk=8,Cp=4,Cv=8,k=5", "must not exceed", id="k-too-big"),
    ],
)
def test_bad_shapes_are_named(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_shape(spec)


def test_plausible_topk_is_local_valid_and_seeded() -> None:
    gen = lambda: torch.Generator().manual_seed(5)
    top = plausible_topk(2, 32, 24, 4, generator=gen())
    assert top.shape == (2, 32 * 24, 4) and top.dtype == torch.int64
    assert int(top.min()) >= 0 and int(top.max()) < 32 * 24
    assert torch.equal(top, plausible_topk(2, 32, 24, 4, generator=gen()))
    # An 8x8 tile of queries touches far fewer distinct keys than 256 uniform draws would (~220).
    tile = top[0].reshape(32, 24, 4)[8:16, 8:16].reshape(-1)
    assert tile.unique().numel() < 120


def test_realistic_candidates_follow_the_model_builders() -> None:
    inter = AttentionShape("inter", 12, 20, cqk=24, cp=8, cv=20, k=3)
    inner = AttentionShape("inner", 12, 20, cqk=24, cp=8, cv=20, k=3)
    ci = realistic_candidates(inter, 2, generator=torch.Generator().manual_seed(0))
    cn = realistic_candidates(inner, 2, generator=torch.Generator().manual_seed(0))
    assert ci.shape == (2, 240, 12) and cn.shape == (2, 240, 15)
    for c in (ci, cn):
        assert int(c.min()) >= 0 and int(c.max()) < 240
    grid = ci.reshape(2, 6, 2, 10, 2, 12)  # the 4 queries of a 2x2 window share their list
    assert torch.equal(grid[:, :, 0, :, 0], grid[:, :, 1, :, 1])
    assert torch.equal(grid[:, :, 0, :, 1], grid[:, :, 1, :, 0])
    with pytest.raises(ValueError, match="no candidates"):
        realistic_candidates(AttentionShape("dense", 4, 4, cqk=8, cp=4, cv=8), 1)


def test_make_problem_builds_the_operator_inputs() -> None:
    shape = AttentionShape("inner", 6, 10, cqk=24, cp=8, cv=20, k=3)
    p = make_problem(shape, 2, dtype=torch.float64, seed=3, requires_grad=True)
    assert p.q.shape == (2, 60, 24) and p.v.shape == (2, 60, 20) and p.warp_values.shape[-1] == 3
    assert p.candidates.shape == (2, 60, 15)
    assert all(x.requires_grad and x.dtype == torch.float64 for x in p.float_inputs().values())
    assert torch.allclose(p.q.norm(dim=-1), torch.ones(2, 60, dtype=torch.float64))
    assert len(p.positional()) == 6 and p.keywords()["topk"] == 3
    again = make_problem(shape, 2, dtype=torch.float64, seed=3)
    assert torch.equal(again.k, p.k.detach()) and torch.equal(again.candidates, p.candidates)
    dense = make_problem(AttentionShape("dense", 3, 5, cqk=8, cp=4, cv=8, cw=0), 1)
    assert dense.candidates is None and dense.warp_values is None and len(dense.positional()) == 5
    with pytest.raises(ValueError, match="batch must be"):
        make_problem(shape, 0)
