"""Timing, peak memory and result rows shared by the benchmark scripts.

Imports only torch (and triton on a GPU), so the scripts run on the GPU machines' bare image.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from kernels.files import write_atomically

ROOT = Path(__file__).resolve().parents[1]


def run_device(device: str | None, *, tiny: bool, gpu_work: str) -> torch.device:
    """The device a benchmark runs on: `--device` when given, the CPU with `--tiny`, else CUDA.

    Without CUDA and without either flag the run is refused (ValueError, for one `error:` line):
    a GPU benchmark's work (`gpu_work`, e.g. "the attention blocks of deepfashion-256 at batch
    8") takes hours or all the memory of a CPU machine, so a CPU run must be asked for."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {device!r}") from err
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA device here")
        return chosen
    if tiny:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    raise ValueError(
        f"no CUDA device: this benchmark times {gpu_work} on a GPU; pass --tiny for a CPU smoke "
        "run in seconds, or --device cpu to run it on the CPU anyway"
    )


def device_and_backends(
    device: str | None,
    backends: str | None,
    *,
    tiny: bool,
    known: Sequence[str],
    gpu_work: str,
) -> tuple[torch.device, list[str]]:
    """The device a step benchmark runs on (`run_device`) and the attention backends it compares
    (both on a GPU, the reference on a CPU, unless given). ValueError naming --backends when it
    lists anything but `known`."""
    chosen = run_device(device, tiny=tiny, gpu_work=gpu_work)
    names = (backends or ("triton,torch" if chosen.type == "cuda" else "torch")).split(",")
    if not names or any(b not in known for b in names):
        raise ValueError(f"--backends must list some of {tuple(known)}, got {backends!r}")
    return chosen, names


def add_csv_argument(parser: argparse.ArgumentParser, default: Path) -> None:
    """`--csv PATH`, read by `csv_destination`: where the rows go (`default`, under
    benchmarks/results/, for a GPU run; a CPU run writes only to a path given here)."""
    shown = default.relative_to(ROOT) if default.is_relative_to(ROOT) else default
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help=f"rows are appended here (default on a GPU: {shown}; a CPU run writes only here)",
    )


def csv_destination(given: Path | None, default: Path, device: torch.device) -> Path | None:
    """Where a benchmark's rows go: `--csv` when given, else the tracked `default` under
    benchmarks/results/ for a GPU run; a CPU run writes nowhere unless asked, so that a smoke
    run never appends to the tracked results."""
    return given or (default if device.type == "cuda" else None)


def write_rows(path: Path | None, columns: list[str], rows: list[dict[str, object]]) -> None:
    """Append `rows` to `path` (`append_rows`) and say so; with no path (a CPU run without
    --csv), say that nothing was written and how to write it."""
    if path is None:
        print(f"{_rows(len(rows))} not written: a CPU run writes a CSV only with --csv PATH")
        return
    append_rows(path, columns, rows)
    print(f"appended {_rows(len(rows))} to {path}")


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def median_ms(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup_ms: int,
    rep_ms: int,
    reset: Sequence[Tensor] | None = None,
) -> float:
    """Median time of `fn` in milliseconds; the gradients of `reset` are dropped before each run.

    On a GPU: `triton.testing.do_bench` (L2 flushed between runs). On a CPU: one untimed call
    (compilation, allocator warm-up), then at least 3 and at most 100 runs within `rep_ms`."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(
            do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=reset, return_mode="median")
        )
    times: list[float] = []
    fn()
    budget = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or (time.perf_counter() < budget and len(times) < 100):
        for x in reset or []:
            x.grad = None
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_mb(
    fn: Callable[[], object], device: torch.device, *, above_live: bool = True
) -> float | None:
    """Peak CUDA memory of one call in MiB: above what was live before it, or (`above_live`
    False) in all. None off CUDA, where PyTorch keeps no allocator statistics."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if above_live else 0
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def peak_rss_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident set size of this process during one call of `fn`, in MiB: the CPU's
    counterpart of `peak_mb(..., above_live=False)`, everything resident included (weights,
    Python, libraries). Linux: the high-water mark is reset through /proc/self/clear_refs before
    the call and read from /proc/self/status after it; None where that is unavailable (`fn` is
    called either way)."""
    status = Path("/proc/self/status")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        fn()
        return None
    fn()
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def step_peak_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory of one call of a training step in MiB: all CUDA memory allocated on a GPU,
    the process's resident set on the CPU (see `peak_rss_mb`)."""
    if device.type == "cuda":
        return peak_mb(fn, device, above_live=False)
    return peak_rss_mb(fn)


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:100] if text else ''}"


def environment(device: torch.device) -> dict[str, str]:
    """GPU (or CPU) name, torch and Triton versions, git commit: the columns every row carries."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine()
        gpu = f"cpu ({cpu}, {torch.get_num_threads()} threads)"
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": git_commit(),
    }


def git_commit() -> str:
    """Short HEAD, `-dirty` when tracked files differ from it; "unknown" outside a checkout."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    return head.stdout.strip() + ("-dirty" if dirty else "")


def append_rows(path: Path, columns: list[str], rows: list[dict[str, object]]) -> None:
    """Append rows to a CSV, with a header when the file is new. The file is rewritten to a
    temporary name and renamed, so an interrupted run never leaves half a row; a file whose header
    differs is refused rather than mixed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    if existing:
        header = existing.splitlines()[0].split(",")
        if header != columns:
            raise ValueError(f"{path} has columns {header}, expected {columns}: use another file")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(existing)
            writer = csv.writer(f)
            if not existing:
                writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row[c] is None else row[c] for c in columns])

    write_atomically(path, write)


def cell(value: float | None, spec: str) -> str:
    """A table cell: `value` in `spec`, or "-" where there is no figure (a failed or skipped
    measurement)."""
    return "-" if value is None else format(value, spec)


def rel_rms(actual: Tensor, expected: Tensor) -> float:
    """RMS of `actual - expected` over RMS of `expected`, in float64; inf where it is not finite.
    The benchmarks' sanity check of an implementation against the reference (not a test)."""
    a, e = actual.detach().double(), expected.detach().double()
    err = float((a - e).pow(2).mean().sqrt() / e.pow(2).mean().sqrt().clamp_min(1e-30))
    return err if math.isfinite(err) else math.inf
