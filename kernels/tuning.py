"""Tuned launch configurations: where the autotuner's winners live and how kernels read them.

The table is a JSON file keyed GPU name -> Triton version -> kernel -> bucketed shape key -> entry.
Kernels never tune at run time: they look their shape up here and fall back to the default their
module declares. `python -m kernels.autotune` writes the file (atomically, so processes reading it
concurrently see either the old or the new table, never half of one).

`$DYNAST_TUNING_FILE` names the file; the default is `~/.cache/dynast/kernel_tuning.json`.
Where that file has no entry, the table shipped with the package (`kernels/tuning_shipped.json`:
winners measured on the GPUs this project was timed on, see docs/benchmarks.md) is consulted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# A launch configuration: block sizes and feature flags (constexpr), plus num_warps / num_stages.
LaunchConfig = dict[str, int]

TUNING_FILE_ENV = "DYNAST_TUNING_FILE"
SHIPPED_TABLE = Path(__file__).with_name("tuning_shipped.json")


@dataclass(frozen=True)
class TunableKernel:
    """One kernel the autotuner may sweep.

    space(dims) lists the configs it may pick for a problem (every one must compile, see the
    ahead-of-time tests); default(dims) is what runs when the table has no entry; make_runner(dims,
    config, device, dtype) builds fresh inputs and returns a zero-argument callable that launches
    the kernel once with that config (what `do_bench` times).
    """

    name: str
    space: Callable[[dict[str, int]], list[LaunchConfig]]
    default: Callable[[dict[str, int]], LaunchConfig]
    make_runner: Callable[
        [dict[str, int], LaunchConfig, torch.device, torch.dtype], Callable[[], Any]
    ]


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


def tuned_config(kernel: TunableKernel, dims: dict[str, int], device: torch.device) -> LaunchConfig:
    """The autotuner's winner for this GPU, Triton version and shape bucket (from the user's table,
    else the shipped one), else the default."""
    for table in (load_table(), load_table(SHIPPED_TABLE)):
        entry = (
            table.get(device_name(device), {})
            .get(triton_version(), {})
            .get(kernel.name, {})
            .get(shape_key(dims))
        )
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
) -> None:
    """Merge one winner into the table at `path`, written to a temporary file and renamed."""
    table = load_table(path) if path.exists() else {}
    table = json.loads(json.dumps(table))  # a private copy: the cached one stays untouched
    slot = table.setdefault(device_name(device), {}).setdefault(triton_version(), {})
    slot.setdefault(kernel, {})[shape_key(dims)] = {"config": dict(config), "ms": round(ms, 5)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
