"""The attention benchmark on the CPU: its table and CSV from a real run (reference vs compiled
reference on tiny shapes), the FlexAttention identity for out and conf, the correctness check and
the FLOP/byte model."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _assert import assert_close

from benchmarks import bench_attention as bench
from benchmarks.attention_cost import attention_cost, shape_cost
from kernels.dense.reference import reference_dynamic_attention
from kernels.runtime import interpreting
from kernels.shapes import AttentionShape, make_problem

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_cpu_run_prints_a_table_and_appends_csv_rows(tmp_path: Path) -> None:
    out = tmp_path / "results" / "attention.csv"
    # One thread: the suite shares two cores, and oversubscribed OpenMP threads crawl.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    args = ["--tiny", "--blocks", "dense,inner", "--rep", "5", "--warmup", "1", "--csv", str(out)]
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_attention.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("block ") and "TFLOP/s" in line for line in lines)
    table = [line.split() for line in lines if line.startswith(("dense-6x10", "inner-12x20"))]
    seen = {(cells[0], cells[1], cells[2]) for cells in table}
    assert seen == {
        (block, pass_, impl)
        for block in ("dense-6x10", "inner-12x20")
        for pass_ in ("fwd", "bwd", "both")
        for impl in ("reference", "compiled")
    }
    assert all(cells[-1] == "ok" for cells in table)

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.CSV_COLUMNS
    assert len(rows) == 12
    for row in rows:
        assert row["status"] == "ok"
        assert row["gpu"].startswith("cpu") and row["torch"] == torch.__version__
        assert row["commit"] and row["timestamp"] and row["dtype"] == "float32"
        assert float(row["median_ms"]) > 0 and float(row["flops"]) > 0
        assert float(row["gbps"]) > 0 and float(row["pct_copy"]) > 0
        assert float(row["err"]) < bench.TOLERANCE[torch.float32]
        assert row["peak_mb"] == ""  # peak memory is measured on CUDA only
        assert row["op"] == ("dense" if row["block"] == "dense" else "candidate")


def test_csv_appends_under_one_header_and_refuses_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    row = bench.Row(
        timestamp="t", gpu="g", torch="1", triton="2", commit="c", preset="p", op="dense",
        block="dense", shape="s", batch=1, dtype="float32", pass_="fwd", impl="reference",
        status="ok", median_ms=1.0, tflops=None, gbps=None, pct_copy=None, peak_mb=None,
        err=0.0, copy_gbps=1.0, flops=1.0, bytes=1.0,
    )  # fmt: skip
    bench.append_csv(path, [row])
    bench.append_csv(path, [row, row])
    text = path.read_text().splitlines()
    assert text[0] == ",".join(bench.CSV_COLUMNS) and len(text) == 4
    other = tmp_path / "b.csv"
    other.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"b\.csv has columns"):
        bench.append_csv(other, [row])
    assert other.read_text() == "x,y\n1,2\n"


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("batch", [1, 2])
def test_flex_attention_gives_out_and_conf_exactly(batch: int) -> None:
    """conf = exp(lse_kept - lse_all) and out = out_kept * conf, with FlexAttention run eagerly on
    the CPU; one query has no kept key at all (its prune feature is zero)."""
    shape = AttentionShape("dense", 6, 10, cqk=48, cp=12, cv=40, cw=0)
    p = make_problem(shape, batch, seed=4)
    p.q_prune[:, 5] = 0.0
    kw = dict(scale=shape.scale, prune_scale=shape.prune_scale)
    with torch.no_grad():
        out, conf, _, _ = bench.flex_dense_attention(p.q, p.k, p.v, p.q_prune, p.k_prune, **kw)
    ref_out, ref_conf, _, _ = reference_dynamic_attention(p.q, p.k, p.v, p.q_prune, p.k_prune, **kw)
    assert_close(out, ref_out, name="out")
    assert_close(conf, ref_conf, name="conf")
    assert torch.all(conf[:, 5] == 0) and torch.all(out[:, 5] == 0)
    assert conf.min() >= 0 and conf.max() <= 1 + 1e-6


def _reference(problem):
    return bench.call_problem(reference_dynamic_attention, problem)


def test_the_correctness_check_catches_wrong_and_missing_results() -> None:
    shape = AttentionShape("dense", 4, 6, cqk=24, cp=8, cv=20, k=2)
    check = make_problem(shape, 2, seed=1, requires_grad=True)
    gold = bench.gold_run(check, with_grads=True)
    assert bench.check_error(_reference, check, gold, with_grads=True) < 1e-6

    def scaled_out(problem):
        out, conf, top, warp = _reference(problem)
        return 1.01 * out, conf, top, warp

    def no_warp(problem):
        out, conf, top, _ = _reference(problem)
        return out, conf, top, None

    def reversed_topk(problem):
        out, conf, top, warp = _reference(problem)
        return out, conf, top.flip(-1).roll(1, dims=1), warp

    def detached_v(problem):
        problem_v = problem.v
        problem.v = problem_v.detach()
        try:
            return _reference(problem)
        finally:
            problem.v = problem_v

    assert bench.check_error(scaled_out, check, gold, with_grads=False) > 5e-3
    assert bench.check_error(no_warp, check, gold, with_grads=False) == float("inf")
    assert bench.check_error(no_warp, check, gold, with_grads=False, complete=False) < 1e-6
    assert bench.check_error(reversed_topk, check, gold, with_grads=False) > 1e-2
    assert bench.check_error(detached_v, check, gold, with_grads=True) == float("inf")


def test_flop_and_byte_model_by_hand() -> None:
    sizes = dict(batch=2, nq=3, nk=5, cqk=4, cp=2, cv=6, cw=1, k=2, element_bytes=2)
    dense = attention_cost(m=None, pass_="fwd", **sizes)
    assert dense.flops == 2 * (2 * 3 * 5) * (4 + 2 + 6 + 1)
    reads = 2 * 3 * (4 + 2) * 2 + 2 * 5 * (4 + 2 + 6 + 1) * 2
    writes = 2 * 3 * (6 + 1 + 1) * 2 + 2 * 3 * 2 * 8
    assert dense.bytes == reads + writes

    sparse = attention_cost(m=4, pass_="fwd", index_bytes=8, **sizes)
    assert sparse.flops == 2 * (2 * 3 * 4) * (4 + 2 + 6 + 1)
    assert sparse.bytes == reads + writes + 2 * 3 * 4 * 8  # the candidates are read once

    bwd = attention_cost(m=4, pass_="bwd", index_bytes=8, **sizes)
    assert bwd.flops == 2 * (2 * 3 * 4) * (3 * 4 + 3 * 2 + 2 * 6 + 2 * 1)
    # inputs and candidates read, output gradients read, input gradients written
    assert bwd.bytes == 2 * reads + 2 * 3 * 4 * 8 + 2 * 3 * (6 + 1 + 1) * 2
    both = attention_cost(m=4, pass_="both", index_bytes=8, **sizes)
    assert both.flops == sparse.flops + bwd.flops and both.bytes == sparse.bytes + bwd.bytes
    with pytest.raises(ValueError, match="pass must be one of"):
        attention_cost(m=None, pass_="forward", **sizes)


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--tiny", "--passes", "fwd,sideways"]) == 2
    assert "--passes" in capsys.readouterr().err
    assert bench.main(["--shape", "dense:H=4"]) == 2
    assert "dense:H=4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(AttentionShape("dense", 4, 6, cqk=24, cp=8, cv=20, k=2), id="dense-4x6"),
        pytest.param(AttentionShape("inter", 4, 6, cqk=24, cp=8, cv=20, k=2), id="inter-4x6"),
        pytest.param(AttentionShape("inner", 4, 6, cqk=24, cp=8, cv=20, k=2), id="inner-4x6"),
    ],
)
def test_the_fused_rows_pass_their_correctness_check(shape: AttentionShape) -> None:
    """The benchmark's `fused` implementations are the kernels' backend entry point (under the CPU
    interpreter here) and pass the check that gates their timing: as the operators run them,
    and for candidate blocks with the candidates derived in the kernel or the list read."""
    on_interpreter = interpreting()
    if not on_interpreter and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by conftest on CPU machines)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check = make_problem(shape, 2, device=device, seed=1, requires_grad=True)
    gold = bench.gold_run(check, with_grads=True)
    names = ["fused"] + ([] if shape.block == "dense" else list(bench.CANDIDATE_SOURCES))
    for name in names:
        fused = bench.implementation(name, shape, device)
        error = bench.check_error(fused, check, gold, with_grads=True)
        assert error < bench.TOLERANCE[torch.float32], name
    if shape.block == "dense":
        assert all(bench.implementation(n, shape, device) is None for n in bench.CANDIDATE_SOURCES)


def test_rows_divide_by_the_chosen_accounting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--accounting` picks the compulsory bytes of every row (benchmarks/attention_cost.py):
    the new "derived" ones by default, the old "list" ones on request."""
    shape = AttentionShape("inner", 4, 6, cqk=24, cp=8, cv=20, k=2)
    settings = dict(
        device=torch.device("cpu"), dtype=torch.float32, batch=1, check_batch=1,
        impls=("reference",), passes=("fwd",), warmup_ms=1, rep_ms=1,
    )  # fmt: skip
    env = {name: "x" for name in ("gpu", "torch", "triton", "commit")}
    for accounting in ("derived", "list"):
        s = bench.Settings(**settings, accounting=accounting)
        (row,) = bench.bench_shape("tiny", shape, s, env, 1.0)
        assert row.bytes == shape_cost(shape, 1, 4, "fwd", accounting).bytes
    assert (
        shape_cost(shape, 1, 4, "fwd", "derived").bytes
        < shape_cost(shape, 1, 4, "fwd", "list").bytes
    )


def test_the_tile_rows_pass_their_correctness_check() -> None:
    """`fused-tile`: the query-tile forward on derived candidates, then the fused backward,
    passes the check that gates its timing; no such row for a dense block."""
    if not interpreting() and not torch.cuda.is_available():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1 (set by conftest on CPU machines)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = AttentionShape("inner", 4, 6, cqk=24, cp=8, cv=20, k=2)
    check = make_problem(shape, 2, device=device, seed=1, requires_grad=True)
    gold = bench.gold_run(check, with_grads=True)
    tile = bench.implementation(bench.CANDIDATE_TILE, shape, device)
    assert bench.check_error(tile, check, gold, with_grads=True) < bench.TOLERANCE[torch.float32]
    dense = AttentionShape("dense", 4, 6, cqk=24, cp=8, cv=20, k=2)
    assert bench.implementation(bench.CANDIDATE_TILE, dense, device) is None
