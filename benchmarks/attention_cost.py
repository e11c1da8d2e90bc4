"""FLOP and byte model of the dynamic attention operators, per pass: the one place it is written.

Both are properties of the problem, not of an implementation: every implementation of a shape is
divided by the same numbers, so TFLOP/s and GB/s compare like with like. docs/benchmarks.md
explains each term.

Notation: B batch, Nq queries, Nk keys, M keys per query (Nk when dense), Cqk, Cp, Cv, Cw channels,
k top-k, P = B * Nq * M query-key pairs, e bytes per float element, i bytes per index.

FLOPs (two per multiply-add; softmax, mask, exponentials and top-k selection are not counted):
- forward: scores 2P*Cqk, prune logits 2P*Cp, values 2P*Cv, warp 2P*Cw;
- backward (flash-style, scores recomputed): scores and prune logits again (2P*Cqk + 2P*Cp),
  dV and d(p*m) (2 * 2P*Cv), dQ and dK (2 * 2P*Cqk), dQp and dKp (2 * 2P*Cp), dW and dw (2 * 2P*Cw);
- both = forward + backward.

Bytes (compulsory traffic: each distinct tensor read or written once; what a perfect kernel moves):
- forward reads q, q_prune (B*Nq*(Cqk+Cp)*e), k, k_prune, v, warp values (B*Nk*(Cqk+Cp+Cv+Cw)*e)
  and the candidate indices (none when dense); writes out, conf, warp (B*Nq*(Cv+1+Cw)*e) and the
  top-k (B*Nq*k*t, t bytes per written index: 8, the operators return int64);
- backward reads the same inputs and indices and the output gradients (B*Nq*(Cv+1+Cw)*e), writes
  the input gradients (the inputs' float sizes again);
- both = forward + backward.

Three accountings of the candidate indices (docs/benchmarks.md reports them side by side):
- "list" (the old accounting, before the derived lists): the [B, Nq, M] list the builders of
  `kernels.candidates.lists` write is read as int64, B*Nq*M*8;
- "list32": the same list as the builders make it now, int32 wherever B*Nk < 2^31, B*Nq*M*4
  (the fused kernels' list path, `$DYNAST_CANDIDATES=list`);
- "derived" (the new accounting: the fused kernels' default for a builder's list): the kernel
  derives the list from the previous top-k it is a pure function of (inner: each match's
  neighbourhood on the same grid; inter: the 2x2 children of the coarse matches) and reads that
  top-k instead, as the builder's private int32 copy: B*Nq*(M/5)*4 inner, B*(Nq/4)*(M/4)*4 inter.
The written top-k is int64 (t = 8) in all three.

`python -m benchmarks.attention_cost` prints all three for the model's blocks; with `--csv` (a
bench_attention.py CSV) it recomputes the measured rows' GB/s and % of copy bandwidth under the old
("list") and the new ("derived") one.

What two forward kernels read (not compulsory traffic: what reaches the SMs from L2 or memory),
beside the compulsory bytes, for candidate blocks (`tile_table`, printed with `--tile`):
- "gather" (`candidate_fwd_kernel`): every query loads each of its M candidates' rows of K,
  K_prune, V, W itself, B*Nq*M*(Cqk+Cp+Cv+Cw)*e, if no cache caught any of it;
- "tile" (`candidate_fwd_tile_kernel`): every TILE_Y x TILE_X tile of queries loads the distinct
  keys of its candidate lists once, B*tiles*U*(Cqk+Cp+Cv+Cw)*e, U the mean distinct keys per tile,
  measured on the benchmark's plausible correspondence (`kernels.shapes.realistic_candidates`,
  `distinct_keys_per_tile`).
Both also read the queries and the previous top-k and write the outputs as the compulsory count
does (the inference forward: no scores saved).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.candidates.lists import PER_MATCH  # candidates per previous match, by kind of list

PASSES = ("fwd", "bwd", "both")
ACCOUNTINGS = ("list", "list32", "derived")
# Bytes per index read under each accounting: the int64 list of old, the int32 list the builders
# make now, the int32 top-k the derived kernels read.
INDEX_BYTES = {"list": 8, "list32": 4, "derived": 4}
TOPK_BYTES = 8  # the written top-k: the operators return int64 under every accounting


@dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"pass must be one of {PASSES}, got {pass_!r}")


def attention_cost(
    *,
    batch: int,
    nq: int,
    nk: int,
    m: int | None,
    cqk: int,
    cp: int,
    cv: int,
    cw: int,
    k: int,
    element_bytes: int,
    index_bytes: int = 8,
    topk_bytes: int = TOPK_BYTES,
    pass_: str,
    derived_from: str | None = None,
) -> Cost:
    """FLOPs and compulsory bytes of one pass; `m` None means dense (every key). `index_bytes`:
    per candidate index (or previous top-k index) read; `topk_bytes`: per top-k index written.

    `derived_from` "inner" or "inter": the kernel derives its candidates from the previous top-k
    of that block kind, which it reads instead of the candidate list (the "derived" accounting)."""
    _check_pass(pass_)
    dense = m is None
    if derived_from is not None and (dense or derived_from not in PER_MATCH):
        raise ValueError(
            f"derived_from must be one of {tuple(PER_MATCH)} for a candidate block (m given), "
            f"got {derived_from!r} with m={m!r}"
        )
    if derived_from is not None and m % PER_MATCH[derived_from]:
        raise ValueError(
            f"m ({m}) must be a multiple of {PER_MATCH[derived_from]} ({derived_from})"
        )
    pairs = batch * nq * (nk if dense else m)
    fwd_flops = 2 * pairs * (cqk + cp + cv + cw)
    bwd_flops = 2 * pairs * (3 * cqk + 3 * cp + 2 * cv + 2 * cw)

    query_side = batch * nq * (cqk + cp) * element_bytes
    key_side = batch * nk * (cqk + cp + cv + cw) * element_bytes
    if dense:
        candidates = 0
    elif derived_from is None:
        candidates = batch * nq * m * index_bytes
    else:  # the previous top-k: one row per query (inner) or per 2x2 window (inter)
        rows = nq if derived_from == "inner" else nq // 4
        candidates = batch * rows * (m // PER_MATCH[derived_from]) * index_bytes
    outputs = batch * nq * (cv + 1 + cw) * element_bytes
    topk = batch * nq * k * topk_bytes
    fwd_bytes = query_side + key_side + candidates + outputs + topk
    # Backward: inputs read, output gradients read, input gradients written.
    bwd_bytes = query_side + key_side + candidates + outputs + query_side + key_side

    if pass_ == "fwd":
        return Cost(fwd_flops, fwd_bytes)
    if pass_ == "bwd":
        return Cost(bwd_flops, bwd_bytes)
    return Cost(fwd_flops + bwd_flops, fwd_bytes + bwd_bytes)


def shape_cost(shape, batch: int, element_bytes: int, pass_: str, accounting: str) -> Cost:
    """`attention_cost` of a `kernels.shapes.AttentionShape` under one accounting."""
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"accounting must be one of {ACCOUNTINGS}, got {accounting!r}")
    dense = shape.block == "dense"
    return attention_cost(
        batch=batch,
        nq=shape.tokens,
        nk=shape.tokens,
        m=None if dense else shape.candidates,
        cqk=shape.cqk,
        cp=shape.cp,
        cv=shape.cv,
        cw=shape.cw,
        k=shape.k,
        element_bytes=element_bytes,
        index_bytes=INDEX_BYTES[accounting],
        pass_=pass_,
        derived_from=shape.block if accounting == "derived" and not dense else None,
    )


TILE = (4, 4)  # the query-tile forward's tile (`kernels.candidates.fused.FORWARD_TILE`)


def distinct_keys_per_tile(shape, tile: tuple[int, int] = TILE, *, batch: int = 1) -> float:
    """Mean number of distinct candidate keys per tile of tile[0] x tile[1] queries of a candidate
    block, on the benchmark's plausible correspondence (seed 0, the problem `bench_attention.py`
    times). Partial tiles at the grid's edge count as tiles."""
    from kernels.candidates.lists import candidate_indices
    from kernels.shapes import realistic_candidates

    if shape.block not in PER_MATCH:
        raise ValueError(f"a {shape.block} block has no candidate lists to count")
    gen = torch.Generator().manual_seed(0)
    lists = candidate_indices(realistic_candidates(shape, batch, generator=gen)).long()
    ty, tx = tile
    height, width, m = shape.height, shape.width, lists.shape[2]
    pad_y, pad_x = -height % ty, -width % tx
    grid = lists.view(batch, height, width, m)
    # Pad partial tiles by repeating their last row / column: no new keys, the same union.
    grid = torch.cat([grid, grid[:, -1:].expand(-1, pad_y, -1, -1)], dim=1)
    grid = torch.cat([grid, grid[:, :, -1:].expand(-1, -1, pad_x, -1)], dim=2)
    rows, cols = grid.shape[1] // ty, grid.shape[2] // tx
    tiles = grid.view(batch, rows, ty, cols, tx, m).permute(0, 1, 3, 2, 4, 5)
    keys = tiles.reshape(batch * rows * cols, ty * tx * m).sort(dim=1).values
    distinct = (keys[:, 1:] != keys[:, :-1]).sum(dim=1) + 1
    return float(distinct.float().mean())


def forward_reads(
    shape, batch: int, element_bytes: int, kernel: str, distinct: float | None = None
) -> float:
    """Bytes a candidate forward moves under the model of the module docstring: "gather" (each
    query loads its candidates' rows) or "tile" (each tile loads its `distinct` keys once; measured
    by `distinct_keys_per_tile` when None)."""
    if kernel not in ("gather", "tile"):
        raise ValueError(f"kernel must be 'gather' or 'tile', got {kernel!r}")
    compulsory = shape_cost(shape, batch, element_bytes, "fwd", "derived").bytes
    row = (shape.cqk + shape.cp + shape.cv + shape.cw) * element_bytes
    keys_once = batch * shape.tokens * row  # the compulsory key side, replaced by the kernel's
    if kernel == "gather":
        return compulsory - keys_once + batch * shape.tokens * shape.candidates * row
    distinct = distinct_keys_per_tile(shape) if distinct is None else distinct
    tiles = batch * -(-shape.height // TILE[0]) * -(-shape.width // TILE[1])
    return compulsory - keys_once + tiles * distinct * row


def tile_table(presets: list[str], batch: int, element_bytes: int) -> str:
    """Forward MB per candidate block: compulsory (derived), the gather kernel's and the tile
    kernel's reads, with the measured distinct keys per tile and per query."""
    from kernels.shapes import preset_shapes

    lines = [
        f"candidate forward MB at batch {batch}, {element_bytes}-byte floats: compulsory "
        f"(derived), gather (every query loads its candidates' rows), tile (every {TILE[0]}x"
        f"{TILE[1]} tile loads its distinct keys once; measured on the plausible top-k)",
        f"{'preset':<16} {'block':<16} {'keys/tile':>9} {'keys/query':>10} {'compulsory':>10} "
        f"{'gather':>9} {'tile':>9} {'tile/comp':>9}",
    ]
    for name in presets:
        for shape in preset_shapes(name):
            if shape.block == "dense":
                continue
            distinct = distinct_keys_per_tile(shape)
            compulsory = shape_cost(shape, batch, element_bytes, "fwd", "derived").bytes / 1e6
            gather = forward_reads(shape, batch, element_bytes, "gather") / 1e6
            tile = forward_reads(shape, batch, element_bytes, "tile", distinct) / 1e6
            per_query = distinct / (TILE[0] * TILE[1])
            lines.append(
                f"{name:<16} {shape.label:<16} {distinct:>9.1f} {per_query:>10.2f} "
                f"{compulsory:>10.1f} {gather:>9.1f} {tile:>9.1f} {tile / compulsory:>9.2f}"
            )
    return "\n".join(lines)


def accounting_table(presets: list[str], batch: int, element_bytes: int) -> str:
    """MB per pass of every block of the presets under each accounting, and what the new
    ("derived") saves against the old ("list")."""
    from kernels.shapes import preset_shapes

    lines = [
        f"compulsory MB at batch {batch}, {element_bytes}-byte floats, int64 top-k written; "
        "list: int64 candidate list read (old); list32: int32 list read; derived: the previous "
        "int32 top-k read (new)",
        f"{'preset':<16} {'block':<16} {'pass':<5} {'list MB':>9} {'list32 MB':>10} "
        f"{'derived MB':>11} {'saved':>7}",
    ]
    for name in presets:
        for shape in preset_shapes(name):
            for pass_ in PASSES:
                old, narrow, new = (
                    shape_cost(shape, batch, element_bytes, pass_, accounting).bytes / 1e6
                    for accounting in ACCOUNTINGS
                )
                lines.append(
                    f"{name:<16} {shape.label:<16} {pass_:<5} {old:>9.1f} {narrow:>10.1f} "
                    f"{new:>11.1f} {1 - new / old:>7.1%}"
                )
    return "\n".join(lines)


_SHAPE_FIELDS = re.compile(
    r"(?P<label>\w+)-(?P<h>\d+)x(?P<w>\d+) N=\d+ M=\S+ Cqk=(?P<cqk>\d+) Cp=(?P<cp>\d+) "
    r"Cv=(?P<cv>\d+) Cw=(?P<cw>\d+) k=(?P<k>\d+)"
)


def remeasure(path: Path) -> str:
    """Measured rows of a bench_attention.py CSV with GB/s and % of the copy bandwidth of the
    same run, under both accountings (the time is the same; only the bytes counted differ)."""
    from kernels.shapes import AttentionShape

    element = {"bfloat16": 2, "float16": 2, "float32": 4}
    lines = [
        f"{'block':<16} {'pass':<5} {'impl':<10} {'ms':>9} {'list GB/s':>10} {'% copy':>7} "
        f"{'derived GB/s':>13} {'% copy':>7}"
    ]
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("status") != "ok" or not row.get("median_ms"):
                continue
            fields = _SHAPE_FIELDS.match(row["shape"])
            if fields is None or row["dtype"] not in element:
                raise ValueError(f"{path}: cannot read the shape {row['shape']!r} of a row")
            block = row["block"]
            shape = AttentionShape(
                block=block,
                height=int(fields["h"]),
                width=int(fields["w"]),
                cqk=int(fields["cqk"]),
                cp=int(fields["cp"]),
                cv=int(fields["cv"]),
                cw=int(fields["cw"]),
                k=int(fields["k"]),
            )
            sec, copy = float(row["median_ms"]) / 1e3, float(row["copy_gbps"] or "nan")
            rates = []
            for accounting in ("list", "derived"):
                cost = shape_cost(shape, int(row["batch"]), element[row["dtype"]], row["pass"],
                                  accounting)  # fmt: skip
                rates.append(cost.bytes / sec / 1e9)
            old, new = rates
            lines.append(
                f"{shape.label:<16} {row['pass']:<5} {row['impl']:<10} {sec * 1e3:>9.3f} "
                f"{old:>10.1f} {old / copy:>7.1%} {new:>13.1f} {new / copy:>7.1%}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compulsory bytes: old (list) vs new (derived).")
    parser.add_argument("--preset", action="append", default=[], help="kernels.shapes presets")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--element-bytes", type=int, default=2, help="2: bf16 (default), 4: fp32")
    parser.add_argument("--csv", type=Path, default=None, help="a bench_attention.py CSV")
    parser.add_argument(
        "--tile",
        action="store_true",
        help="also the candidate forwards' reads: gather vs query-tile (measured key overlap)",
    )
    args = parser.parse_args(argv)
    try:
        presets = args.preset or ["deepfashion-256"]
        print(accounting_table(presets, args.batch, args.element_bytes))
        if args.tile:
            print(tile_table(presets, args.batch, args.element_bytes))
        if args.csv is not None:
            print(remeasure(args.csv))
    except (ValueError, OSError) as err:
        print(f"attention_cost: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
