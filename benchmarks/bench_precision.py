"""Time a short real-preset training run on this CPU with the precision chosen automatically
against an explicit one: what a user trying `--preset deepfashion-256` on a laptop waits.

    python -m benchmarks.bench_precision [--precisions auto,no] [--steps 2] [--width 8]
        [--batch 2] [--csv PATH] [--parts runs,discriminator]

Each run is `python -m train.main --preset deepfashion-256` in its own process (Accelerate keeps
one precision per process) on a DeepFashion tree of 256 px files (`benchmarks.data_trees`), at
256 px with every width set to `--width` (ngf, ndf), without the VGG terms (no weights file is
needed). `auto` passes no precision flag (the preset's bf16, or fp32 where bf16 is not native:
train.precision); any other value is passed as `--mixed-precision`. The row records the
precision the run used (its config.json), its training time over the steps (`time/train_s` of
its metrics log: data loading and optimiser steps, after the step-0 evaluation) and the whole
process's wall time, with the CPU's model and bf16 flags; rows are appended to
benchmarks/results/precision.csv. `--parts discriminator` prints the preset's full-width
discriminator step in fp32 and bf16 autocast, where emulated bf16 costs most.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import data_trees
from benchmarks.measure import ROOT, append_rows, environment, median_ms
from dynast.config import preset
from dynast.discriminator import MultiscaleDiscriminator
from train.config import MIXED_PRECISION
from train.precision import cpu_bf16

PRESET = "deepfashion-256"
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "precision.csv"
COLUMNS = [
    "timestamp", "cpu", "native_bf16", "cpu_flags", "torch", "commit", "preset", "image_size",
    "width", "batch", "steps", "requested", "used", "train_s", "wall_s",
]  # fmt: skip


def run_preset(
    root: Path, run_dir: Path, requested: str, *, steps: int, width: int, batch: int
) -> dict[str, object]:
    """One training run in its own process; its precision, training and wall times."""
    args = [
        sys.executable, "-m", "train.main", "--preset", PRESET, "--data.root", str(root),
        "--output-dir", str(run_dir), "--max-steps", str(steps), "--no-vgg",
        "--model.ngf", str(width), "--model.ndf", str(width), "--train.batch_size", str(batch),
        "--train.eval_pairs", "1", "--train.eval_batch_size", "1", "--train.sample_rows", "1",
        "--train.log_every", "1",
    ]  # fmt: skip
    if requested != "auto":
        args += ["--mixed-precision", requested]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # a launcher's choice is not what is measured
    started = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"error: the {requested} run failed: {' / '.join(tail)}")
    line = next(
        (x for x in result.stdout.splitlines() if x.startswith("mixed precision:")), "(no line)"
    )
    print(f"{requested:>5}: {line}")
    used = json.loads((run_dir / "config.json").read_text())["train"]["mixed_precision"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_s = max(r["time/train_s"] for r in records if "time/train_s" in r)
    return {"requested": requested, "used": used, "train_s": round(train_s, 2),
            "wall_s": round(wall, 2)}  # fmt: skip


def discriminator_ms(batch: int = 1, size: int = 256) -> dict[str, float]:
    """Median milliseconds of the preset's full-width discriminator, forward and backward of one
    batch, in fp32 and under bf16 autocast: the part of the step that dominates the emulated bf16
    time on a CPU without native bf16 (the tiny-width runs above spend theirs in the attention)."""
    cfg = preset(PRESET)
    discriminator = MultiscaleDiscriminator(cfg)
    semantic = torch.randn(batch, cfg.semantic_nc, size, size)
    image = torch.randn(batch, 3, size, size)

    def step() -> None:
        outputs = discriminator(semantic, image)
        sum(feature[-1].float().mean() for feature in outputs).backward()

    times = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            times[name] = median_ms(step, torch.device("cpu"), warmup_ms=0, rep_ms=0)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--precisions", default="auto,no", help="auto and/or no, fp16, bf16")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--width", type=int, default=8, help="ngf and ndf")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="rows are appended here")
    parser.add_argument(
        "--parts",
        default="runs",
        help="runs (the training runs) and/or discriminator (the preset's full-width "
        "discriminator, batch 1, in fp32 and bf16 autocast)",
    )
    args = parser.parse_args(argv)
    requested = [p for p in args.precisions.split(",") if p]
    parts = [p for p in args.parts.split(",") if p]
    if not parts or any(p not in ("runs", "discriminator") for p in parts):
        print(
            f"error: --parts takes runs and/or discriminator, got {args.parts!r}", file=sys.stderr
        )
        return 2
    known = ("auto", *MIXED_PRECISION)
    if not requested or any(p not in known for p in requested):
        print(
            f"error: --precisions takes some of {list(known)}, got {args.precisions!r}",
            file=sys.stderr,
        )
        return 2
    for name in ("steps", "width", "batch"):
        if getattr(args, name) < 1:
            value = getattr(args, name)
            print(f"error: --{name} must be a positive integer, got {value}", file=sys.stderr)
            return 2
    cpu = cpu_bf16()
    env = environment(torch.device("cpu"))
    print(f"CPU: {cpu.describe()}; {os.cpu_count()} cores")
    if "runs" in parts:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "deepfashion"
            data_trees.write_deepfashion(root)
            for n, precision in enumerate(requested):
                measured = run_preset(
                    root, Path(tmp) / f"run{n}", precision,
                    steps=args.steps, width=args.width, batch=args.batch,
                )  # fmt: skip
                print(
                    f"{precision:>5}: used {measured['used']}, {args.steps} steps in "
                    f"{measured['train_s']} s (process {measured['wall_s']} s)"
                )
                rows.append({
                    "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "cpu": cpu.model, "native_bf16": cpu.native,
                    "cpu_flags": " ".join(cpu.flags), "torch": env["torch"],
                    "commit": env["commit"], "preset": PRESET, "image_size": 256,
                    "width": args.width, "batch": args.batch, "steps": args.steps, **measured,
                })  # fmt: skip
        append_rows(args.csv, COLUMNS, rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    if "discriminator" in parts:
        times = discriminator_ms()
        print(
            f"{PRESET} discriminator (full width, batch 1, forward + backward, "
            f"{torch.get_num_threads()} threads, median of 3): fp32 {times['fp32']:.0f} ms, "
            f"bf16 autocast {times['bf16']:.0f} ms ({times['bf16'] / times['fp32']:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
