"""Where a generator training step spends its time: `torch.profiler` over the step of
`bench_train_step.py`, a table of the top kernels by time, and a CSV of every kernel.

    python -m benchmarks.profile_step                                    # GPU: deepfashion-256, b8
    python -m benchmarks.profile_step --backend torch --top 40 --csv /tmp/profile.csv
    python -m benchmarks.profile_step --tiny                             # CPU smoke run, seconds

The step is the generator's forward with warped exemplars, the stand-in loss and the backward
(`bench_train_step.generator_loss`), in bf16 autocast on a GPU. After `--warmup` untimed steps,
`--steps` steps run under the profiler; times are per step. On a GPU the table ranks device
kernels by their own (self) device time, so it answers what the step's ~230 ms outside the
attention kernels are: each kernel is put in a category (convolution, matrix product, normalisation,
attention kernel, reduction, elementwise, copy, other) by its name, and the categories are
summed under the table. On a CPU (`--tiny`) it ranks operators by self CPU time instead, which only
shows the script works.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.bench_train_step import AMP, generator_loss, make_inputs
from benchmarks.measure import (
    add_csv_argument,
    csv_destination,
    environment,
    run_device,
    write_rows,
)
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.config import PRESETS, preset
from dynast.generator import Generator

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = [
    "timestamp", "gpu", "torch", "triton", "commit", "config", "image_size", "batch", "amp",
    "backend", "compile", "rank", "kernel", "category", "calls", "self_ms_per_step", "share",
]  # fmt: skip
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "profile_step.csv"

# First match wins: the order puts the specific names (our Triton kernels, cuDNN convolutions)
# before the generic ones (a "gemm" inside a convolution kernel's name is a convolution).
CATEGORIES: list[tuple[str, re.Pattern]] = [
    ("attention", re.compile(r"_dense_|_candidate|dynast|attention", re.I)),
    ("convolution", re.compile(r"conv|cudnn|implicit|wgrad|dgrad|fprop|winograd", re.I)),
    ("matmul", re.compile(r"gemm|matmul|cublas|sm\d+_xmma|\bmm\b|addmm|bmm|(?<!bi)linear", re.I)),
    ("normalisation", re.compile(r"norm|welford|var_mean|moments", re.I)),
    ("reduction", re.compile(r"reduce|sum|mean|max|softmax|topk|sort", re.I)),
    # Padding, resampling and index copies too: `step_cost.py` counts them as copies.
    (
        "copy",
        re.compile(
            r"copy|memcpy|memset|cat|contiguous|transpose|permute|to_copy|pad|upsample|index|"
            r"gather|scatter|fill",
            re.I,
        ),
    ),
    (
        "elementwise",
        re.compile(r"elementwise|vectorized|unrolled|pointwise|triton_poi|add|mul", re.I),
    ),
]


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


@dataclasses.dataclass(frozen=True)
class KernelTime:
    name: str
    calls: int
    self_ms: float  # per step


def profile_step(
    step: Callable[[], None], device: torch.device, *, warmup: int, steps: int
) -> list[KernelTime]:
    """Self time per kernel (GPU) or operator (CPU) per step, largest first."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    rows = []
    if device.type == "cuda":
        # Device kernels only: the events the CUDA activity recorded, by kernel name.
        totals: dict[str, list[float]] = {}
        for event in prof.events():
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            slot = totals.setdefault(event.name, [0, 0.0])
            slot[0] += 1
            slot[1] += event.device_time_total / 1e3  # us -> ms
        for name, (calls, ms) in totals.items():
            rows.append(KernelTime(name, calls // steps, ms / steps))
        if not rows:  # no kernel-level events recorded: fall back to operators' device time
            for event in prof.key_averages():
                if event.self_device_time_total > 0:
                    ms = event.self_device_time_total / 1e3 / steps
                    rows.append(KernelTime(event.key, event.count // steps, ms))
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                rows.append(
                    KernelTime(
                        event.key, event.count // steps, event.self_cpu_time_total / 1e3 / steps
                    )
                )
    return sorted(rows, key=lambda r: r.self_ms, reverse=True)


def format_table(rows: list[KernelTime], top: int, unit: str) -> str:
    total = sum(r.self_ms for r in rows) or 1.0
    lines = [f"{'#':>3} {'self ms':>9} {'share':>6} {'calls':>6} {'category':<13} {unit}"]
    for i, r in enumerate(rows[:top], 1):
        name = r.name if len(r.name) <= 90 else r.name[:87] + "..."
        lines.append(
            f"{i:>3} {r.self_ms:>9.3f} {r.self_ms / total:>6.1%} {r.calls:>6} "
            f"{category(r.name):<13} {name}"
        )
    by_category: dict[str, float] = {}
    for r in rows:
        by_category[category(r.name)] = by_category.get(category(r.name), 0.0) + r.self_ms
    lines.append(f"total {total:.3f} ms per step over {len(rows)} distinct {unit}s; by category:")
    for label, ms in sorted(by_category.items(), key=lambda kv: kv[1], reverse=True):
        lines.append(f"  {label:<13} {ms:>9.3f} ms  {ms / total:>6.1%}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="deepfashion-256")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke run")
    parser.add_argument("--size", type=int, default=None, help="image size (default the preset's)")
    parser.add_argument("--batch", type=int, default=None, help=f"default 8 ({TINY_BATCH} tiny)")
    parser.add_argument("--backend", choices=("triton", "torch"), default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="default bf16 on GPU")
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="rows of the printed table")
    add_csv_argument(parser, DEFAULT_CSV)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = run_device(args.device, tiny=args.tiny, gpu_work="a training step")
    except ValueError as err:
        print(f"profile_step: error: {err}", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda"
    backend = args.backend or ("triton" if on_gpu else "torch")
    for name in ("warmup", "steps", "top"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            print(
                f"profile_step: error: --{name} must be positive, got {getattr(args, name)}",
                file=sys.stderr,
            )
            return 2
    cfg = tiny_model_config() if args.tiny else preset(args.preset)
    cfg = dataclasses.replace(cfg, attention_backend=backend)
    size = args.size or (TINY_SIZE if args.tiny else cfg.image_size)
    batch = args.batch or (TINY_BATCH if args.tiny else 8)
    amp_name = args.amp or ("bf16" if on_gpu else "none")
    amp = AMP[amp_name]

    torch.manual_seed(0)
    model = Generator(cfg).to(device)
    run = torch.compile(model) if args.compile else model
    x = make_inputs(cfg, size, batch, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss, _ = generator_loss(run, x)
        loss.backward()
        model.zero_grad(set_to_none=True)

    env = environment(device)
    print(
        f"{env['gpu']} | torch {env['torch']} | commit {env['commit']} | config {cfg.name} | "
        f"{size} px | batch {batch} | amp {amp_name} | backend {backend} | compile {args.compile}"
    )
    rows = profile_step(step, device, warmup=args.warmup, steps=args.steps)
    print(format_table(rows, args.top, "kernel" if on_gpu else "operator"))
    total = sum(r.self_ms for r in rows) or 1.0
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = [
        {
            "timestamp": stamp,
            **env,
            "config": cfg.name,
            "image_size": size,
            "batch": batch,
            "amp": amp_name,
            "backend": backend,
            "compile": args.compile,
            "rank": i,
            "kernel": r.name,
            "category": category(r.name),
            "calls": r.calls,
            "self_ms_per_step": round(r.self_ms, 5),
            "share": round(r.self_ms / total, 5),
        }
        for i, r in enumerate(rows, 1)
    ]
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), COLUMNS, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
