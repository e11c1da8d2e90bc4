"""CPU threads of a training process: undo `accelerate launch`'s one-thread default.

`accelerate launch` exports `OMP_NUM_THREADS=1` to the process it starts whenever the variable is
not already set (on a machine without GPUs its own core-count heuristic does not apply when no
`--cpu` flag is given), so `accelerate launch train/main.py` on a 2-core laptop would train on one
core. With one process per machine that default only wastes cores: PyTorch's intra-op threads are
the whole parallelism of the run. Several processes per machine keep it (they share the cores).

The rule: when the launcher started this process, `OMP_NUM_THREADS` is `1`, the launcher itself was
started without `OMP_NUM_THREADS` (so the `1` is its default, not the user's choice; read from the
launcher's environment in /proc where the OS has one) and this is the only process on the machine,
use every core this process may run on. `OMP_NUM_THREADS=1 accelerate launch ...` and
`OMP_NUM_THREADS=1 python train/main.py` keep one thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

# Set by `accelerate launch` in the environment of the processes it starts (any launcher mode).
LAUNCHER_MARKER = "ACCELERATE_DYNAMO_BACKEND"
# Processes on this machine, as torchrun / accelerate (LOCAL_WORLD_SIZE) or MPI launchers say.
LOCAL_SIZE_VARIABLES = (
    "LOCAL_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def processes_on_machine(env: Mapping[str, str]) -> int:
    """Training processes on this machine according to the launcher's variables (1 if none)."""
    for name in LOCAL_SIZE_VARIABLES:
        value = env.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def launcher_environment() -> dict[str, str] | None:
    """The environment the parent process (the launcher) was started with, or None where the OS
    does not show it."""
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def threads_to_use(
    env: Mapping[str, str], cores: int, launcher_env: Mapping[str, str] | None = None
) -> int | None:
    """The thread count to set, or None to keep what the process has.

    Only the launcher's one-thread default for a lone process is overridden; an
    `OMP_NUM_THREADS` the user gave the launcher (seen in `launcher_env` when known), one of
    anything but 1, or several processes per machine are left alone."""
    launched = LAUNCHER_MARKER in env
    user_set = launcher_env is not None and "OMP_NUM_THREADS" in launcher_env
    if launched and not user_set and env.get("OMP_NUM_THREADS") == "1":
        if processes_on_machine(env) == 1 and cores > 1:
            return cores
    return None


def configure_threads(say: Callable[[str], None] = print) -> int:
    """Apply the rule above to this process and say what it runs on (the first process only);
    returns the thread count."""
    wanted = threads_to_use(os.environ, usable_cores(), launcher_environment())
    if wanted is not None:
        torch.set_num_threads(wanted)
    if os.environ.get("RANK", "0") != "0":
        return torch.get_num_threads()
    if wanted is not None:
        say(
            f"CPU threads: {wanted} (accelerate launch set OMP_NUM_THREADS=1 for its single "
            f"process; using the {wanted} cores of this machine, torch.set_num_threads({wanted}))"
        )
    else:
        say(f"CPU threads: {torch.get_num_threads()}")
    return torch.get_num_threads()
