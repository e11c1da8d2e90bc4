"""The byte model's accountings of the candidate indices: the list the builders write,
read as int64 (old) or int32 (the builders' lists now), against candidates derived in the kernel
from the previous int32 top-k (new)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import attention_cost as model
from benchmarks.attention_cost import attention_cost, shape_cost
from kernels.shapes import AttentionShape, preset_shapes

SIZES = dict(batch=2, nq=16, nk=16, cqk=4, cp=2, cv=6, cw=1, k=2, element_bytes=2)


@pytest.mark.parametrize(("block", "rows"), [("inner", 16), ("inter", 4)])
def test_derived_candidates_read_the_previous_topk_instead_of_the_list(
    block: str, rows: int
) -> None:
    per_match = model.PER_MATCH[block]
    m = per_match * 3  # three previous matches per query
    listed = attention_cost(m=m, pass_="fwd", index_bytes=4, **SIZES)
    derived = attention_cost(m=m, pass_="fwd", index_bytes=4, derived_from=block, **SIZES)
    # The list is B*Nq*M indices; the top-k it derives from B*rows*(M/per_match).
    assert listed.bytes - derived.bytes == 2 * 16 * m * 4 - 2 * rows * 3 * 4
    assert listed.flops == derived.flops
    for pass_ in ("bwd", "both"):
        a = attention_cost(m=m, pass_=pass_, index_bytes=4, **SIZES)
        b = attention_cost(m=m, pass_=pass_, index_bytes=4, derived_from=block, **SIZES)
        reads = 1 if pass_ == "bwd" else 2  # the indices are read once per pass
        assert a.bytes - b.bytes == reads * (2 * 16 * m * 4 - 2 * rows * 3 * 4)


def test_int32_indices_halve_the_index_bytes_and_the_topk_bytes_apart() -> None:
    wide = attention_cost(m=10, pass_="fwd", index_bytes=8, **SIZES)
    narrow = attention_cost(m=10, pass_="fwd", index_bytes=4, **SIZES)
    assert wide.bytes - narrow.bytes == 2 * 16 * 10 * 4  # the list read; the top-k stays int64
    narrow_topk = attention_cost(m=10, pass_="fwd", index_bytes=4, topk_bytes=4, **SIZES)
    assert narrow.bytes - narrow_topk.bytes == 2 * 16 * 2 * 4


def test_the_inner_256_forward_under_every_accounting() -> None:
    """docs/benchmarks.md: 443.5 MB of old (84 MB of int64 candidates, 17 MB of int64 top-k);
    the builders' int32 list halves the 84 MB; derived, the list gives way to the previous top-k
    (int32); the written top-k stays int64 in all."""
    inner = next(s for s in preset_shapes("deepfashion-256") if s.label == "inner-256x256")
    listed, narrow, derived = (
        shape_cost(inner, 8, 2, "fwd", accounting).bytes for accounting in model.ACCOUNTINGS
    )
    n, k = 8 * 256 * 256, inner.k
    assert listed / 1e6 == pytest.approx(443.5, abs=0.05)
    assert derived / 1e6 == pytest.approx(368.1, abs=0.05)
    assert listed - narrow == n * 5 * k * 4
    assert listed - derived == n * 5 * k * 8 - n * k * 4
    dense = next(s for s in preset_shapes("deepfashion-256") if s.block == "dense")
    # Dense blocks read no indices, and write the same int64 top-k under every accounting.
    assert len({shape_cost(dense, 8, 2, "fwd", a).bytes for a in model.ACCOUNTINGS}) == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="derived_from must be one of"):
        attention_cost(m=None, pass_="fwd", derived_from="inner", **SIZES)
    with pytest.raises(ValueError, match="derived_from must be one of"):
        attention_cost(m=10, pass_="fwd", derived_from="outer", **SIZES)
    with pytest.raises(ValueError, match="must be a multiple of 4"):
        attention_cost(m=10, pass_="fwd", derived_from="inter", **SIZES)
    shape = AttentionShape(block="inner", height=4, width=4, cqk=4, cp=2, cv=2, k=1)
    with pytest.raises(ValueError, match="accounting must be one of"):
        shape_cost(shape, 1, 2, "fwd", "guessed")


def test_cli_prints_both_accountings_and_remeasures_a_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shape = AttentionShape(block="inner", height=8, width=8, cqk=16, cp=4, cv=8, cw=3, k=2)
    path = tmp_path / "attention.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(
            f, ["shape", "block", "batch", "dtype", "pass", "impl", "status", "median_ms",
                "copy_gbps"],
        )  # fmt: skip
        writer.writeheader()
        writer.writerow(
            {"shape": shape.describe(), "block": "inner", "batch": 2, "dtype": "bfloat16",
             "pass": "fwd", "impl": "fused", "status": "ok", "median_ms": 1.0, "copy_gbps": 1.0},
        )  # fmt: skip
    assert model.main(["--preset", "deepfashion-256", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "inner-256x256    fwd       443.5      401.6       368.1   17.0%" in out
    listed = shape_cost(shape, 2, 2, "fwd", "list").bytes / 1e-3 / 1e9
    derived = shape_cost(shape, 2, 2, "fwd", "derived").bytes / 1e-3 / 1e9
    row = next(line for line in out.splitlines() if line.startswith("inner-8x8"))
    assert row.split()[4:] == [f"{listed:.1f}", f"{listed:.1%}", f"{derived:.1f}", f"{derived:.1%}"]
    path.write_text("shape,block,batch,dtype,pass,impl,status,median_ms,copy_gbps\nbad,inner,1,"
                    "bfloat16,fwd,fused,ok,1.0,1.0\n")  # fmt: skip
    assert model.main(["--csv", str(path)]) == 2
    assert "cannot read the shape" in capsys.readouterr().err


def test_distinct_keys_per_tile_counts_each_tiles_union() -> None:
    """Against a count with Python sets over the same plausible lists (a partial tile at the
    right and bottom edges); a tile can hold no more keys than its lists' slots."""
    import torch

    from kernels.candidates.lists import candidate_indices
    from kernels.shapes import realistic_candidates

    shape = AttentionShape(block="inner", height=6, width=10, cqk=4, cp=2, cv=2, k=2)
    lists = candidate_indices(
        realistic_candidates(shape, 1, generator=torch.Generator().manual_seed(0))
    )[0].view(6, 10, -1)
    counts = [
        len(set(lists[y : y + 4, x : x + 4].flatten().tolist()))
        for y in range(0, 6, 4)
        for x in range(0, 10, 4)
    ]
    assert model.distinct_keys_per_tile(shape) == pytest.approx(sum(counts) / len(counts))
    assert max(counts) <= 16 * shape.candidates


def test_forward_reads_of_the_gather_and_tile_kernels() -> None:
    """Both replace the compulsory key rows by what they load: every query's candidates
    (gather), every tile's distinct keys (tile); a tile whose lists share no key loads as much
    as the gather kernel."""
    shape = AttentionShape(block="inter", height=8, width=8, cqk=16, cp=4, cv=8, cw=3, k=2)
    row = (16 + 4 + 8 + 3) * 2
    compulsory = shape_cost(shape, 2, 2, "fwd", "derived").bytes
    gather = model.forward_reads(shape, 2, 2, "gather")
    assert gather == compulsory - 2 * 64 * row + 2 * 64 * shape.candidates * row
    tiles = 2 * 4  # 4x4 tiles of an 8x8 grid
    assert (
        model.forward_reads(shape, 2, 2, "tile", 5.0) == compulsory - 2 * 64 * row + tiles * 5 * row
    )
    assert model.forward_reads(shape, 2, 2, "tile", 16.0 * shape.candidates) == gather
    with pytest.raises(ValueError, match="kernel must be 'gather' or 'tile'"):
        model.forward_reads(shape, 2, 2, "query")
