"""The SPADE-modulation benchmark on the CPU with --tiny: eager and fused (Triton's interpreter)
rows, printed and appended to the CSV, the fused output equal to the eager one within fp32
rounding (a smoke run: the GPU figures come from benchmarks/device_session.sh, stage `norm`)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import bench_norm


def test_tiny_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "norm.csv"
    args = ["--tiny", "--impls", "eager,fused", "--rep", "1", "--warmup", "1", "--csv", str(out)]
    assert bench_norm.main(args) == 0
    printed = capsys.readouterr().out
    assert "config tiny | batch 2 | fp32" in printed
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench_norm.COLUMNS
    scales = len(bench_norm.TINY_SCALES)
    assert len(rows) == scales * 2 * 2
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 for r in rows)
    fused = [r for r in rows if r["impl"] == "fused"]
    assert len(fused) == scales * 2 and all(float(r["rel_rms"]) < 1e-5 for r in fused)
    first = rows[0]
    channels, size = bench_norm.TINY_SCALES[0]
    assert (int(first["channels"]), int(first["height"])) == (channels, size)
    assert float(first["compulsory_mb"]) == pytest.approx(4 * 2 * channels * size * size * 4 / 1e6)


def test_tiny_channels_last_rows(tmp_path: Path) -> None:
    out = tmp_path / "norm.csv"
    args = ["--tiny", "--impls", "eager,fused", "--passes", "both", "--channels-last"]
    assert bench_norm.main([*args, "--rep", "1", "--warmup", "1", "--csv", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["layout"] for r in rows} == {"nhwc"} and all(r["status"] == "ok" for r in rows)
    assert all(float(r["rel_rms"]) < 1e-5 for r in rows if r["impl"] == "fused")


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert bench_norm.main(["--tiny", "--impls", "eager,flash"]) == 2
    assert "--impls must list some of" in capsys.readouterr().err
