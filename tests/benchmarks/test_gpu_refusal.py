"""The GPU-sized benchmarks refuse to start on a machine without CUDA unless a CPU run is asked
for (`--tiny`, or `--device cpu`), with one `error:` line and exit code 2; and a CPU run appends
to the tracked benchmarks/results/*.csv only when `--csv` names a file."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks import (
    bench_attention,
    bench_generate,
    bench_norm,
    bench_optimizer_step,
    bench_train_step,
    profile_step,
)
from benchmarks.measure import csv_destination, run_device, write_rows

ROOT = Path(__file__).resolve().parents[2]
no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the refusal is for machines without CUDA"
)

GPU_BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "bench_attention": bench_attention.main,
    "bench_train_step": bench_train_step.main,
    "bench_optimizer_step": bench_optimizer_step.main,
    "bench_generate": bench_generate.main,
    "bench_norm": bench_norm.main,
    "profile_step": profile_step.main,
}


@no_cuda
@pytest.mark.parametrize("name", sorted(GPU_BENCHMARKS))
def test_the_gpu_default_is_refused_without_cuda(name: str, capsys: pytest.CaptureFixture) -> None:
    argv = ["--batch", "8", "--sizes", "256"] if name == "bench_train_step" else []
    assert GPU_BENCHMARKS[name](argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{name}: error: no CUDA device" in err
    assert "--tiny" in err and "--device cpu" in err


@no_cuda
def test_an_explicit_device_is_checked() -> None:
    assert run_device("cpu", tiny=False, gpu_work="w") == torch.device("cpu")
    assert run_device(None, tiny=True, gpu_work="w") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda: no CUDA device"):
        run_device("cuda", tiny=True, gpu_work="w")
    with pytest.raises(ValueError, match="--device: expected cpu, cuda or cuda:N, got 'tpu7'"):
        run_device("tpu7", tiny=False, gpu_work="w")


def test_a_cpu_run_writes_a_csv_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    default = ROOT / "benchmarks" / "results" / "train_step.csv"
    assert csv_destination(None, default, cpu) is None
    assert csv_destination(None, default, cuda) == default
    assert csv_destination(tmp_path / "x.csv", default, cpu) == tmp_path / "x.csv"
    write_rows(None, ["a"], [{"a": 1}])
    assert (
        "1 row not written: a CPU run writes a CSV only with --csv PATH" in capsys.readouterr().out
    )
    write_rows(tmp_path / "y.csv", ["a"], [{"a": 1}, {"a": 2}])
    assert (tmp_path / "y.csv").read_text().splitlines() == ["a", "1", "2"]
    assert f"appended 2 rows to {tmp_path / 'y.csv'}" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a GPU")
def test_the_device_session_refuses_without_a_gpu(tmp_path: Path) -> None:
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    proc = subprocess.run(
        ["bash", "benchmarks/device_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("device_session.sh: error: no CUDA device")
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()
