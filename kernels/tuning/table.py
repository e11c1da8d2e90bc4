"""Tuned launch configurations: where the autotuner's winners live and how kernels read them.

The table is a JSON file keyed GPU name -> Triton version -> dtype ("bf16", "fp16", "fp32") ->
kernel -> bucketed shape key -> entry: a winner timed in one dtype is not assumed to win in another
(fp32 tiles hold twice the bytes). Files written before the dtype level existed (GPU -> Triton ->
kernel -> ...) are still read, their entries taken as bf16, the autotuner's default dtype then; the
next write of such a file moves them under "bf16".
Kernels never tune at run time: their launchers look their shape up here (`launch_config`) and
fall back to the default their module declares. `python -m kernels.autotune` writes the file
(atomically, so processes reading it concurrently see either the old or the new table, never half
of one).

`$DYNAST_TUNING_FILE` names the file; the default is `~/.cache/dynast/kernel_tuning.json`.
Where that file has no entry, the table shipped with the package (`kernels/tuning/shipped.json`:
winners measured on the GPUs this project was timed on, see docs/benchmarks.md) is consulted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import write_atomically
from ..runtime import interpreting

# A launch configuration: block sizes and feature flags (constexpr), plus num_warps / num_stages.
LaunchConfig = dict[str, int]

TUNING_FILE_ENV = "DYNAST_TUNING_FILE"
SHIPPED_TABLE = Path(__file__).with_name("shipped.json")


@dataclass(frozen=True)
class LaunchSpace:
    """The launch configs of one kernel, declared beside its launcher (an operator's `fused.py`).

    space(dims) lists the configs it may take on a problem (every one must compile, see the
    ahead-of-time tests); default(dims) is what runs when the tuning table has no entry. The
    launchers need no more than this.
    """

    name: str
    space: Callable[[dict[str, int]], list[LaunchConfig]]
    default: Callable[[dict[str, int]], LaunchConfig]


@dataclass(frozen=True)
class TunableKernel(LaunchSpace):
    """One kernel the autotuner may sweep: its launch space, and make_runner(dims, config, device,
    dtype), which builds fresh inputs and returns a zero-argument callable that launches the
    kernel once with that config (what `do_bench` times). The runners live in each operator's
    `tuning.py` (`kernels.dense.tuning`, `kernels.candidates.tuning`), out of the kernel files.
    """

    make_runner: Callable[
        [dict[str, int], LaunchConfig, torch.device, torch.dtype], Callable[[], Any]
    ]

    @classmethod
    def of(cls, launch: LaunchSpace, make_runner: Callable) -> TunableKernel:
        return cls(launch.name, launch.space, launch.default, make_runner)


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
LEGACY_DTYPE = "bf16"  # what entries of a file without the dtype level were timed in


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of a kernel dtype; ValueError for a dtype no kernel is tuned in."""
    try:
        return DTYPE_NAMES[dtype]
    except KeyError:
        raise ValueError(
            f"dtype must be one of {list(DTYPE_NAMES)} for the tuning table, got {dtype!r}"
        ) from None


def by_dtype(version_slot: dict) -> dict[str, dict]:
    """One Triton version's entries as dtype name -> kernel -> shape key -> entry, whether the
    file has the dtype level or not (legacy entries, keyed by kernel directly, are bf16; where a
    file holds both, the dtype-keyed entry wins)."""
    known = set(DTYPE_NAMES.values())
    legacy = {name: entries for name, entries in version_slot.items() if name not in known}
    out = {name: dict(kernels) for name, kernels in version_slot.items() if name in known}
    if legacy:
        merged = dict(legacy)
        for name, entries in out.get(LEGACY_DTYPE, {}).items():
            merged[name] = {**merged.get(name, {}), **entries}
        out[LEGACY_DTYPE] = merged
    return out


def tuning_file() -> Path:
    env = os.environ.get(TUNING_FILE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dynast" / "kernel_tuning.json"


def bucket(n: int) -> int:
    """Next power of two: nearby sizes share one tuned entry (and one compiled kernel)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def shape_key(dims: dict[str, int]) -> str:
    """`"Cqk=128,Nk=1024,..."` over bucketed sizes, in sorted order of names."""
    return ",".join(f"{name}={bucket(size)}" for name, size in sorted(dims.items()))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def triton_version() -> str:
    import triton

    return triton.__version__


# path -> (file identity, table). The identity includes the inode: every write replaces the file
# by a renamed new one, and two writes within one tick of the file system's clock share an mtime.
_cache: dict[str, tuple[tuple[int, int, int], dict]] = {}


def load_table(path: Path | None = None) -> dict:
    """The whole table, re-read only when the file changed. A missing file is an empty table; a
    corrupt one is an error naming it (silently ignoring it would hide a broken tuning run)."""
    path = path or tuning_file()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    hit = _cache.get(str(path))
    if hit and hit[0] == identity:
        return hit[1]
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RuntimeError(
            f"kernel tuning file {path} is unreadable ({err}); fix or delete it, or point "
            f"${TUNING_FILE_ENV} elsewhere"
        ) from err
    _cache[str(path)] = (identity, table)
    return table


def tuned_config(
    kernel: LaunchSpace,
    dims: dict[str, int],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> LaunchConfig:
    """The autotuner's winner for this GPU, Triton version, dtype and shape bucket (from the
    user's table, else the shipped one), else the default. Only winners timed in `dtype` count:
    an fp32 problem never gets a bf16 winner (the launchers pass their inputs' dtype). `dtype`
    None reads bf16, what every lookup returned before the table had a dtype level."""
    name = LEGACY_DTYPE if dtype is None else dtype_name(dtype)
    for table in (load_table(), load_table(SHIPPED_TABLE)):
        slot = table.get(device_name(device), {}).get(triton_version(), {})
        entry = by_dtype(slot).get(name, {}).get(kernel.name, {}).get(shape_key(dims))
        if entry is not None:
            return dict(entry["config"])
    return kernel.default(dims)


def record_winner(
    path: Path,
    device: torch.device,
    kernel: str,
    dims: dict[str, int],
    config: LaunchConfig,
    ms: float,
    dtype: torch.dtype = torch.bfloat16,
) -> None:
    """Merge one winner, timed in `dtype`, into the table at `path`, written to a temporary file
    and renamed. A legacy slot of that GPU and Triton version moves under "bf16" on the way."""
    table = load_table(path) if path.exists() else {}
    table = json.loads(json.dumps(table))  # a private copy: the cached one stays untouched
    versions = table.setdefault(device_name(device), {})
    slot = versions[triton_version()] = by_dtype(versions.get(triton_version(), {}))
    by_kernel = slot.setdefault(dtype_name(dtype), {})
    by_kernel.setdefault(kernel, {})[shape_key(dims)] = {"config": dict(config), "ms": round(ms, 5)}
    text = json.dumps(table, indent=1, sort_keys=True)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def launch_config(
    kernel: LaunchSpace, dims: dict[str, int], device: torch.device, dtype: torch.dtype
) -> LaunchConfig:
    """The config a launcher uses: the tuned one for inputs of `dtype` (`tuned_config`), or the
    default on Triton's CPU interpreter, to which no tuning table applies."""
    if interpreting():
        return kernel.default(dims)
    return tuned_config(kernel, dims, device, dtype)
