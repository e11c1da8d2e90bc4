"""Sweep the fused kernels' launch configs on this GPU and record the winners for run time.

    python -m kernels.autotune                                # deepfashion-256, bf16, every kernel
    python -m kernels.autotune --preset deepfashion-512 --kernel candidate_fwd
    python -m kernels.autotune --shape inner:H=256,W=256,Cqk=80,Cp=16,Cv=64 --dry-run
    python -m kernels.autotune --kernel candidate_fwd_tile   # the query-tile forward (optional)

For each attention block of the chosen shapes and each kernel that runs it (the `TUNABLE` lists of
`kernels.dense.tuning` and `kernels.candidates.tuning`), every config of the kernel's search space
is timed with `triton.testing.do_bench` (median), a table is printed and the fastest config is
merged into the tuning file (`kernels.tuning.table`: `$DYNAST_TUNING_FILE`, default
`~/.cache/dynast/kernel_tuning.json`), keyed by GPU name, Triton version, dtype (`--dtype`), kernel
and bucketed shape.

Kernels only ever read that file, and fall back to their default config where it has no entry:
nothing tunes at run time, so processes sharing the file (data-parallel ranks, evaluation jobs)
all launch the same configs. Writes are atomic (temporary file + rename) and serialised between
concurrent autotuners by a lock file beside the table.

`--dry-run` prints the search space and needs no GPU.
"""

from __future__ import annotations

import argparse
import fcntl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..candidates.tuning import TILE_TUNABLE
from ..candidates.tuning import TUNABLE as CANDIDATE_KERNELS
from ..dense.tuning import TUNABLE as DENSE_KERNELS
from ..runtime import interpreting
from ..shapes import SHAPE_SETS, AttentionShape, parse_shape, preset_shapes
from .table import (
    TUNING_FILE_ENV,
    LaunchConfig,
    TunableKernel,
    record_winner,
    shape_key,
    tuning_file,
)

# The kernels (launch spaces and runners) that run each block.
KERNELS: dict[str, list[TunableKernel]] = {
    "dense": DENSE_KERNELS,
    "inter": CANDIDATE_KERNELS,
    "inner": CANDIDATE_KERNELS,
}
# Kernels the operators run only behind a switch (the query-tile candidate forward,
# `$DYNAST_CANDIDATE_FORWARD=tile`): swept only when `--kernel` names them.
OPTIONAL_KERNELS: dict[str, list[TunableKernel]] = {"inter": TILE_TUNABLE, "inner": TILE_TUNABLE}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
NO_GPU_MESSAGE = (
    "kernels.autotune: error: no CUDA GPU is visible. The autotuner times the kernels on the "
    "GPU it tunes them for: run it on that machine, or add --dry-run to print the search space."
)

# Times one launch of a runner in milliseconds (the median of many).
Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class Job:
    """One kernel on one problem. `shapes` lists the blocks that share this tuning entry."""

    kernel: TunableKernel
    dims: dict[str, int]
    shapes: tuple[str, ...]

    @property
    def key(self) -> str:
        return shape_key(self.dims)


@dataclass(frozen=True)
class Trial:
    config: LaunchConfig
    ms: float | None  # None when the config failed to compile or launch
    error: str = ""


@dataclass(frozen=True)
class SweepResult:
    job: Job
    default: LaunchConfig
    trials: tuple[Trial, ...]

    @property
    def winner(self) -> Trial | None:
        timed = [t for t in self.trials if t.ms is not None]
        return min(timed, key=lambda t: t.ms) if timed else None

    @property
    def default_ms(self) -> float | None:
        return next((t.ms for t in self.trials if t.config == self.default), None)


def is_backward(kernel: TunableKernel) -> bool:
    """Backward kernels are named `<op>_bwd[_<part>]` by both fused modules."""
    return "bwd" in kernel.name.split("_")


def plan_jobs(
    shapes: list[tuple[str, AttentionShape]],
    kernels_for: Callable[[str], list[TunableKernel]],
    only: set[str] | None = None,
    *,
    batch: int = 8,
) -> list[Job]:
    """One job per (kernel, tuning key): blocks whose sizes fall in one bucket share the entry,
    so they are timed once (at the first such block's sizes)."""
    jobs: dict[tuple[str, str], Job] = {}
    for label, shape in shapes:
        for kernel in kernels_for(shape.block):
            if only and kernel.name not in only:
                continue
            dims = shape.dims(batch, backward=is_backward(kernel))
            slot = (kernel.name, shape_key(dims))
            if slot in jobs:
                job = jobs[slot]
                jobs[slot] = Job(job.kernel, job.dims, (*job.shapes, label))
            else:
                jobs[slot] = Job(kernel, dims, (label,))
    return list(jobs.values())


def sweep(
    job: Job,
    *,
    device: torch.device,
    dtype: torch.dtype,
    timer: Timer,
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Time every config of the job's search space (and its default, always) with `timer`.

    A config that fails to compile or launch (too much shared memory, say) is recorded with its
    error and the sweep goes on: one bad corner of the space must not hide the rest."""
    kernel, dims = job.kernel, job.dims
    default = dict(kernel.default(dims))
    configs = [dict(c) for c in kernel.space(dims)]
    if default not in configs:
        configs.append(default)
    trials = []
    for i, config in enumerate(configs):
        if progress:
            progress(f"{kernel.name} {job.shapes[0]}: config {i + 1}/{len(configs)}")
        try:
            ms = float(timer(kernel.make_runner(dims, config, device, dtype)))
        except Exception as err:  # reported in the table, see the docstring
            first_line = (str(err).strip().splitlines() or [""])[0][:120]
            trials.append(Trial(config, None, f"{type(err).__name__}: {first_line}"))
            continue
        trials.append(Trial(config, ms))
    return SweepResult(job, default, tuple(trials))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise writers of the tuning file: each merges into what it reads, so two autotuners
    writing at once would otherwise drop each other's winners. Readers need no lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record(
    result: SweepResult, path: Path, device: torch.device, dtype: torch.dtype = torch.bfloat16
) -> bool:
    """Merge the sweep's winner, timed in `dtype`, into the table at `path`; False when no
    config ran."""
    best = result.winner
    if best is None:
        return False
    with locked(path):
        job = result.job
        record_winner(path, device, job.kernel.name, job.dims, best.config, best.ms, dtype)
    return True


def do_bench_timer(warmup_ms: int = 25, rep_ms: int = 100) -> Timer:
    """Median milliseconds of a launch on the current GPU, L2 flushed between runs."""
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def format_config(config: LaunchConfig) -> str:
    return " ".join(f"{name}={value}" for name, value in config.items())


def format_space(jobs: list[Job]) -> str:
    lines = []
    for job in jobs:
        default = dict(job.kernel.default(job.dims))
        space = [dict(c) for c in job.kernel.space(job.dims)]
        lines.append(
            f"{job.kernel.name}  [{', '.join(job.shapes)}]  key {job.key}  ({len(space)} configs)"
        )
        for config in space:
            mark = "*" if config == default else " "
            lines.append(f"  {mark} {format_config(config)}")
        if default not in space:
            lines.append(f"  * {format_config(default)}  (default, outside the space)")
    lines.append("* = default config")
    return "\n".join(lines)


def format_results(results: list[SweepResult]) -> str:
    lines = []
    for result in results:
        job, best, base = result.job, result.winner, result.default_ms
        lines.append(f"{job.kernel.name}  [{', '.join(job.shapes)}]  key {job.key}")
        lines.append(f"  {'':2}{'config':<56} {'ms':>9} {'vs default':>10}")
        for trial in sorted(result.trials, key=lambda t: (t.ms is None, t.ms or 0.0)):
            mark = ("W" if trial is best else " ") + (
                "*" if trial.config == result.default else " "
            )
            if trial.ms is None:
                lines.append(f"  {mark}{format_config(trial.config):<56} failed: {trial.error}")
                continue
            ratio = f"{base / trial.ms:.2f}x" if base else "-"
            lines.append(f"  {mark}{format_config(trial.config):<56} {trial.ms:>9.4f} {ratio:>10}")
        if best is None:
            lines.append("  no config ran: nothing recorded")
    lines.append("W = winner (recorded), * = default config")
    return "\n".join(lines)


def _shapes_from(args: argparse.Namespace) -> list[tuple[str, AttentionShape]]:
    presets = args.preset or ([] if args.shape else ["deepfashion-256"])
    shapes = [(f"{name}/{s.label}", s) for name in presets for s in preset_shapes(name)]
    shapes += [(f"shape/{s.label}", s) for s in (parse_shape(spec) for spec in args.shape)]
    return shapes


def argument_parser() -> argparse.ArgumentParser:
    """The command line of `python -m kernels.autotune`."""
    parser = argparse.ArgumentParser(
        prog="python -m kernels.autotune",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shapes read BLOCK:key=value,... e.g. inter:H=64,W=64,Cqk=320,Cp=64,Cv=256 "
        "(kernels/shapes.py). Without --preset or --shape: deepfashion-256.",
    )
    parser.add_argument(
        "--preset", action="append", default=[], choices=sorted(SHAPE_SETS), help="model sizes"
    )
    parser.add_argument(
        "--shape", action="append", default=[], help="explicit block, BLOCK:key=value,..."
    )
    parser.add_argument(
        "--kernel", action="append", default=[], help="tune only these kernels (by name)"
    )
    parser.add_argument(
        "--batch", type=int, default=8, help="batch size of the problems (dense kernels key on it)"
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda", help="CUDA device to tune on")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"tuning file (default: ${TUNING_FILE_ENV}, else ~/.cache/dynast/kernel_tuning.json)",
    )
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench measurement, ms")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the search space; needs no GPU"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        shapes = _shapes_from(args)
    except ValueError as err:
        print(f"kernels.autotune: error: {err}", file=sys.stderr)
        return 2
    if not args.dry_run:
        if not torch.cuda.is_available():
            print(NO_GPU_MESSAGE, file=sys.stderr)
            return 2
        if interpreting():
            print(
                "kernels.autotune: error: TRITON_INTERPRET is set, so the kernels would run on the "
                "CPU interpreter; unset it to tune.",
                file=sys.stderr,
            )
            return 2

    only = set(args.kernel)

    def kernels_for(block: str) -> list[TunableKernel]:
        optional = [k for k in OPTIONAL_KERNELS.get(block, []) if k.name in only]
        return KERNELS[block] + optional

    jobs = plan_jobs(shapes, kernels_for, only, batch=args.batch)
    known = {
        k.name
        for _, shape in shapes
        for k in KERNELS[shape.block] + OPTIONAL_KERNELS.get(shape.block, [])
    }
    if only - known:
        print(
            f"kernels.autotune: error: unknown kernel(s) {sorted(only - known)}; "
            f"these shapes run {sorted(known) or 'none'}",
            file=sys.stderr,
        )
        return 2
    if not jobs:
        print("kernels.autotune: error: no kernel to tune for these shapes", file=sys.stderr)
        return 2

    if args.dry_run:
        print(format_space(jobs))
        return 0

    from tqdm import tqdm

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    path = args.out or tuning_file()
    timer = do_bench_timer(args.warmup, args.rep)
    results = []
    with tqdm(total=len(jobs), desc="autotune", file=sys.stderr) as bar:
        for job in jobs:
            result = sweep(
                job, device=device, dtype=dtype, timer=timer, progress=bar.set_postfix_str
            )
            results.append(result)
            record(result, path, device, dtype)
            bar.update()
    print(format_results(results))
    recorded = sum(r.winner is not None for r in results)
    print(
        f"recorded {recorded}/{len(results)} {args.dtype} winners for "
        f"{torch.cuda.get_device_name(device)} in {path}"
    )
    return 0 if recorded == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
