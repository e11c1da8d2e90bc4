"""bench_data's loader rows on the CPU at 32 px: one row per dataset kind and worker count, with
positive rates, appended to the CSV (a smoke run: docs/benchmarks.md has the 256 px figures)."""

from __future__ import annotations

import csv
from pathlib import Path

from benchmarks import bench_data
from dynast.data.config import DATA_KINDS


def test_loader_rows_for_every_kind(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data.csv"
    args = ["--parts", "loader", "--workers", "0", "--loader-samples", "2", "--size", "32"]
    assert bench_data.main([*args, "--csv", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["kind"] for r in rows] == list(DATA_KINDS)
    assert all(float(r["samples_per_s"]) > 0 and float(r["cpu_ms_per_sample"]) > 0 for r in rows)
    assert {r["image_size"] for r in rows} == {"32"} and "native bf16" in capsys.readouterr().out
