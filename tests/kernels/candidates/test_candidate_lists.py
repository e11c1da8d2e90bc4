"""The candidate-list builders (`kernels.candidates.lists`) against brute-force transcriptions of
docs/method.md section 4, their errors, the narrowed index dtype and the deferred range checks."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.candidates import lists
from kernels.candidates.lists import index_dtype


def brute_inter(coarse: torch.Tensor, height: int, width: int) -> torch.Tensor:
    cw = width // 2
    rows = []
    for b in range(coarse.shape[0]):
        for y in range(height):
            for x in range(width):
                row = []
                for c in coarse[b, (y // 2) * cw + x // 2].tolist():
                    u, v = divmod(c, cw)
                    row += [
                        2 * u * width + 2 * v,
                        2 * u * width + 2 * v + 1,
                        (2 * u + 1) * width + 2 * v,
                        (2 * u + 1) * width + 2 * v + 1,
                    ]
                rows.append(row)
    return torch.tensor(rows).reshape(coarse.shape[0], height * width, -1)


def brute_inner(top: torch.Tensor, height: int, width: int) -> torch.Tensor:
    def clamp(y, x):
        return min(max(y, 0), height - 1) * width + min(max(x, 0), width - 1)

    rows = []
    for b in range(top.shape[0]):
        for y in range(height):
            for x in range(width):
                row = list(top[b, y * width + x].tolist())
                # (neighbour offset, shift applied to its matches); a missing neighbour -> self
                for (ny, nx), (sy, sx) in (
                    ((-1, 0), (1, 0)),
                    ((1, 0), (-1, 0)),
                    ((0, -1), (0, 1)),
                    ((0, 1), (0, -1)),
                ):
                    yy, xx = y + ny, x + nx
                    if not (0 <= yy < height and 0 <= xx < width):
                        yy, xx = y, x
                    for t in top[b, yy * width + xx].tolist():
                        ty, tx = divmod(t, width)
                        row.append(clamp(ty + sy, tx + sx))
                rows.append(row)
    return torch.tensor(rows).reshape(top.shape[0], height * width, -1)


@pytest.mark.parametrize("hw", [(6, 10), (2, 2), (4, 14)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_inter_scale_candidates_match_brute_force(hw):
    h, w = hw
    coarse = torch.randint(0, h * w // 4, (2, h * w // 4, 3))
    coarse[:, :, 2] = coarse[:, :, 0]  # duplicates survive
    got = kernels.inter_scale_candidates(coarse, h, w)
    # int32 wherever B * Nk fits (kernels.candidates.lists.index_dtype), whatever the top-k's dtype
    assert got.dtype == torch.int32 and got.shape == (2, h * w, 12)
    assert torch.equal(got, brute_inter(coarse, h, w))
    assert torch.equal(kernels.inter_scale_candidates(coarse.int(), h, w), got)
    assert got.kind == "inter" and got.grid == (h, w) and torch.equal(got.topk, coarse.int())


@pytest.mark.parametrize("hw", [(6, 10), (1, 5), (7, 3)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_inner_scale_candidates_match_brute_force(hw):
    h, w = hw
    top = torch.randint(0, h * w, (2, h * w, 3))
    # matches on the grid's border, so the shifts must clamp
    top[:, 0] = torch.tensor([0, w - 1, h * w - 1])
    got = kernels.inner_scale_candidates(top, h, w)
    assert got.dtype == torch.int32 and got.shape == (2, h * w, 15)
    assert torch.equal(got, brute_inner(top, h, w))
    assert torch.equal(kernels.inner_scale_candidates(top.int(), h, w), got)
    assert got.kind == "inner" and got.grid == (h, w) and got.window is None


def test_index_dtype_narrows_only_where_every_key_row_fits():
    assert index_dtype(8, 65536) == torch.int32  # deepfashion-256's finest scale at batch 8
    assert index_dtype(1, 2**31 - 1) == torch.int32
    assert index_dtype(2, 2**30) == torch.int64  # b * Nk + index would overflow int32
    assert index_dtype(2**16, 2**15) == torch.int64


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda: kernels.inter_scale_candidates(torch.zeros(1, 6, 2, dtype=torch.long), 3, 8),
            "even",
        ),
        (
            lambda: kernels.inter_scale_candidates(torch.zeros(1, 5, 2, dtype=torch.long), 4, 6),
            "tokens",
        ),
        (lambda: kernels.inter_scale_candidates(torch.full((1, 6, 2), 6), 4, 6), "values"),
        (lambda: kernels.inter_scale_candidates(torch.zeros(1, 6, 2), 4, 6), "int32 or int64"),
        (
            lambda: kernels.inner_scale_candidates(torch.zeros(1, 12, 2, dtype=torch.long), 4, 0),
            "width",
        ),
        (lambda: kernels.inner_scale_candidates(torch.full((1, 12, 2), 12), 3, 4), "values"),
        (
            lambda: kernels.inner_scale_candidates(torch.zeros(12, 2, dtype=torch.long), 3, 4),
            "topk must be",
        ),
    ],
)
def test_candidate_builders_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_deferred_range_checks_raise_once_flagged(monkeypatch):
    """On a GPU the check only launches a flag (no synchronisation per call): a bad list runs on
    clamped indices, and the error is raised by `check_index_errors()` (once per step) or by a
    later check that finds the flag computed. Forced here on the CPU."""
    monkeypatch.setattr(lists, "defers", lambda index: True)
    monkeypatch.setattr(lists, "pending", [])
    bad = torch.zeros(2, 12, 3, dtype=torch.long)
    bad[0, 5, 1] = 12
    kernels.check_index_errors()  # nothing pending: free
    cand = kernels.inner_scale_candidates(bad, 3, 4)  # deferred: no error yet
    assert int(lists.candidate_indices(cand).max()) < 12  # built from clamped indices
    with pytest.raises(ValueError, match=r"topk values must lie in \[0, 12\) \(a deferred"):
        kernels.check_index_errors()
    kernels.check_index_errors()  # reported once
    kernels.inner_scale_candidates(bad, 3, 4)
    with pytest.raises(ValueError, match="deferred range check"):
        kernels.inner_scale_candidates(torch.zeros_like(bad), 3, 4)  # finds the earlier flag


def test_candidate_list_runs_the_builder_of_its_kind():
    gen = torch.Generator().manual_seed(3)
    top = torch.randint(0, 24, (2, 24, 2), generator=gen)
    coarse = torch.randint(0, 6, (2, 6, 2), generator=gen)
    inner = lists.candidate_list("inner", top, 4, 6)
    inter = lists.candidate_list("inter", coarse, 4, 6)
    assert inner.kind == "inner" and torch.equal(inner, kernels.inner_scale_candidates(top, 4, 6))
    assert inter.kind == "inter" and torch.equal(
        inter, kernels.inter_scale_candidates(coarse, 4, 6)
    )
    with pytest.raises(ValueError, match=r"kind must be one of \('inner', 'inter'\)"):
        lists.candidate_list("outer", top, 4, 6)


def test_a_list_described_while_compiling_is_checked_where_it_is_read(monkeypatch):
    """While torch.compile traces, a builder reads no values (shapes are still checked): the list
    holds the top-k as given, and its range check and private copy run where it is first read."""
    bad = torch.zeros(2, 12, 3, dtype=torch.long)
    bad[1, 4, 2] = 12
    good = bad.clamp(max=11)
    with monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        described = kernels.inner_scale_candidates(bad, 3, 4)  # no error: no value read
        kept = kernels.inner_scale_candidates(good, 3, 4)
        with pytest.raises(ValueError, match="12 tokens on dim 1"):
            kernels.inner_scale_candidates(bad[:, :5], 3, 4)
    assert lists.builder_arguments(described) == ("inner", bad, 3, 4)
    assert not described.is_built and described.shape == (2, 12, 15)
    with pytest.raises(ValueError, match=r"topk values must lie in \[0, 12\)"):
        lists.candidate_indices(described)
    want = kernels.inner_scale_candidates(good, 3, 4)
    assert torch.equal(lists.candidate_indices(kept), want) and kept.dtype == want.dtype
    good[0, 0, 0] = 7  # after the private copy the first read made
    assert torch.equal(kept, want) and torch.equal(kept.topk, want.topk)
