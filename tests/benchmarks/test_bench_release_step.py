"""`benchmarks/bench_release_step.py` on the CPU at its smallest size: the release's full training
step timed, one `full_step` row of train_step.csv's columns written where --csv says; the runs it
refuses, each with one line naming the argument."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from benchmarks import bench_generate, bench_release_step, bench_train_step


def test_the_releases_step_at_64_px_on_the_cpu_narrowed(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "train_step.csv"
    args = ["--release-root", str(release), "--device", "cpu", "--size", "64", "--batch", "1"]
    args += ["--ngf", "8", "--warmup", "0", "--rep", "0", "--csv", str(out)]
    assert bench_release_step.main(args) == 0
    assert "full_step  release" in capsys.readouterr().out
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == bench_train_step.COLUMNS
    assert (row["backend"], row["work"], row["status"]) == ("release", "full_step", "ok")
    assert row["config"] == "release-deepfashion-ngf8"
    assert (row["image_size"], row["batch"], row["amp"]) == ("64", "1", "none")
    assert row["gpu"].startswith("cpu") and float(row["median_ms"]) > 0
    assert float(row["peak_mb"]) > 100  # the process's peak resident set: models and all


def test_the_releases_test_forward_at_64_px_on_the_cpu_narrowed(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "generate.csv"
    args = ["--release-root", str(release), "--device", "cpu", "--size", "64", "--batch", "2"]
    args += ["--ngf", "8", "--work", "generate", "--warmup", "0", "--rep", "0", "--csv", str(out)]
    assert bench_release_step.main(args) == 0
    assert "generate   release" in capsys.readouterr().out
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert list(row) == bench_generate.COLUMNS
    assert (row["backend"], row["status"], row["batch"], row["compile"]) == (
        "release",
        "ok",
        "2",
        "False",
    )
    ms, rate = float(row["median_ms"]), float(row["images_per_s"])
    assert ms > 0 and rate == pytest.approx(2 / (ms / 1e3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_gpu_default_is_refused_without_cuda(capsys: pytest.CaptureFixture) -> None:
    assert bench_release_step.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err and "--device cpu" in err
    assert bench_release_step.main(["--device", "cpu", "--size", "64", "--amp"]) == 2
    assert "--amp" in capsys.readouterr().err


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bench_release_step.main(["--device", "cpu", "--size", "60"]) == 2
    assert "--size" in capsys.readouterr().err
    assert bench_release_step.main(["--device", "cpu", "--size", "64", "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    assert bench_release_step.main(["--device", "cpu", "--size", "64", "--ngf", "0"]) == 2
    assert "--ngf" in capsys.readouterr().err
    args = ["--device", "cpu", "--size", "64", "--release-root", str(tmp_path)]
    assert bench_release_step.main(args) == 2
    err = capsys.readouterr().err
    assert "--release-root" in err and str(tmp_path) in err
