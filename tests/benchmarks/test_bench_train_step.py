"""The training-step benchmark on the CPU: a model config from JSON, the reference backend, one
small image size; the printed table and the CSV row."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_train_step as bench
from dynast.config import DynaSTConfig

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_step_from_a_json_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": DynaSTConfig(name="tiny-json").to_dict()}))
    out = tmp_path / "steps.csv"
    # `python -m benchmarks.bench_train_step` from the repository root: no PYTHONPATH needed.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    env.pop("PYTHONPATH", None)
    args = [
        "--config",
        str(config),
        "--sizes",
        "32",
        "--batch",
        "2",
        "--rep",
        "1",
        "--device",
        "cpu",
        "--csv",
        str(out),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train_step", "--warmup", "1", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "config tiny-json | batch 2 | amp none" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.split()[:2] == ["32", "torch"])
    assert line.split()[-1] == "ok" and float(line.split()[2]) > 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.COLUMNS and len(rows) == 1
    row = rows[0]
    assert (row["config"], row["image_size"], row["batch"], row["backend"]) == (
        "tiny-json",
        "32",
        "2",
        "torch",
    )
    assert row["status"] == "ok" and float(row["median_ms"]) > 0 and row["gpu"].startswith("cpu")
    assert row["work"] == "g_step"


def test_the_tracked_results_have_the_columns_the_scripts_write() -> None:
    with open(ROOT / "benchmarks" / "results" / "train_step.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == bench.COLUMNS
    assert {row["work"] for row in rows} <= {"g_step", "full_step"}


def test_bad_arguments_are_named(tmp_path: Path, capsys) -> None:
    assert bench.main(["--preset", "synthetic-64", "--backends", "cuda"]) == 2
    assert "--backends" in capsys.readouterr().err
    broken = tmp_path / "bad.json"
    broken.write_text("{")
    assert bench.main(["--config", str(broken)]) == 2
    assert "bad.json" in capsys.readouterr().err
