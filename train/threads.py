"""CPU threads of a training process: the cores it may use that other processes leave free.

`accelerate launch` exports `OMP_NUM_THREADS=1` to the process it starts whenever the variable is
not already set (on a machine without GPUs its own core-count heuristic does not apply when no
`--cpu` flag is given), so `accelerate launch train/main.py` on a 2-core laptop would train on one
core. With one process per machine that default only wastes cores: PyTorch's intra-op threads are
the whole parallelism of the run. Several processes per machine keep it (they share the cores).

The rule: an `OMP_NUM_THREADS` the user set (to this process or to the launcher; read from the
launcher's environment in /proc where the OS has one) is kept, and so is the launcher's one
thread per process when several share the machine. Otherwise, `accelerate launch`'s one-thread
default included, the run uses the cores it may run on (`os.sched_getaffinity`) that other
processes leave free: measured over a quarter of a second at start, then over every 5 seconds of
training (`FreeCpuThreads`, checked once per step), as the idle time of those cores plus this
process's own CPU time. A count is taken only once two measurements agree.

Why: OpenMP threads spin while they wait for each other. Beside one busy process, two threads on
two cores made every step of the default run 3-4 times slower (12 times in the measurement that
found it), while one thread lost nothing; letting the waiting threads sleep instead
(`OMP_WAIT_POLICY=PASSIVE`) cost 40% on an idle machine. docs/training.md, "CPU threads under
load", has the figures.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping
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


# How often, in seconds of training, the free cores are measured again.
FOLLOW_INTERVAL_S = 5.0
_PROC_STAT = Path("/proc/stat")


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


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


def follows_free_cores(env: Mapping[str, str], launcher_env: Mapping[str, str] | None) -> bool:
    """Whether the thread count may follow the free cores: not when the user chose a count (for
    this process, or for the launcher), nor when several processes share the machine."""
    launcher_default = (
        LAUNCHER_MARKER in env
        and env.get("OMP_NUM_THREADS") == "1"
        and not (launcher_env is not None and "OMP_NUM_THREADS" in launcher_env)
    )
    user_set = "OMP_NUM_THREADS" in env and not launcher_default
    return not user_set and processes_on_machine(env) == 1


def idle_seconds(cpus: Collection[int]) -> float | None:
    """Idle and I/O-wait time so far of the CPUs `cpus`, from /proc/stat; None where the OS does
    not report it."""
    try:
        lines = _PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in cpus:
            ticks += int(fields[3]) + int(fields[4])
    return ticks / os.sysconf("SC_CLK_TCK")


def threads_for(free: float, ceiling: int) -> int:
    """Threads for `free` free cores: whole cores (a quarter of one is forgiven: other processes'
    small tasks), at least 1, at most `ceiling`."""
    return max(1, min(ceiling, math.floor(free + 0.25)))


class FreeCpuThreads:
    """Keeps torch's thread count at the cores of `cpus` that other processes leave free. Every
    `interval` seconds (checked by `update`), the cores' idle time plus this process's CPU time,
    over the wall time, is how many cores this process could use; a new count is set once two
    measurements in a row ask for it."""

    def __init__(
        self,
        cpus: Collection[int],
        interval: float = FOLLOW_INTERVAL_S,
        *,
        idle: Callable[[Collection[int]], float | None] | None = None,
        own: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus, self.interval = frozenset(cpus), interval
        self.idle, self.own, self.clock = idle or idle_seconds, own, clock
        self.free: float | None = None
        self._pending: int | None = None
        self._mark = self._sample()

    def _sample(self) -> tuple[float, float, float | None]:
        return self.clock(), self.own(), self.idle(self.cpus)

    def measure(self) -> float | None:
        """Free cores since the last measurement (None where the OS reports no idle time)."""
        now = self._sample()
        then, self._mark = self._mark, now
        wall = now[0] - then[0]
        if now[2] is None or then[2] is None or wall <= 0:
            return None
        self.free = (now[2] - then[2] + now[1] - then[1]) / wall
        return self.free

    def start(self, window: float = 0.25) -> int:
        """Measure over `window` seconds and take that count at once; returns it."""
        time.sleep(window)
        free = self.measure()
        if free is not None:
            torch.set_num_threads(threads_for(free, len(self.cpus)))
        return torch.get_num_threads()

    def update(self) -> int | None:
        """Measure when `interval` has passed; the new count when it changed (and is set)."""
        if self.clock() - self._mark[0] < self.interval:
            return None
        free = self.measure()
        if free is None:
            return None
        wanted = threads_for(free, len(self.cpus))
        if wanted == torch.get_num_threads():
            self._pending = None
            return None
        if self._pending != wanted:
            self._pending = wanted  # a second measurement must agree
            return None
        self._pending = None
        torch.set_num_threads(wanted)
        return wanted


_following: FreeCpuThreads | None = None


def follow_free_cores() -> tuple[int, float] | None:
    """Once per training step: (the new thread count, the free cores measured) when the count
    changed; None otherwise, and when the count does not follow the free cores."""
    if _following is None:
        return None
    changed = _following.update()
    return None if changed is None else (changed, _following.free or 0.0)


def configure_threads(say: Callable[[str], None] = print) -> int:
    """Apply the rule above to this process and say what it runs on (the first process only);
    returns the thread count."""
    global _following
    launcher_env = launcher_environment()
    cpus = usable_cpus()
    wanted = threads_to_use(os.environ, len(cpus), launcher_env)
    if wanted is not None:
        torch.set_num_threads(wanted)
    free = None
    if follows_free_cores(os.environ, launcher_env) and len(cpus) > 1:
        _following = FreeCpuThreads(cpus)
        _following.start()
        free = _following.free
    count = torch.get_num_threads()
    if os.environ.get("RANK", "0") != "0":
        return count
    if free is not None:
        launcher = " (accelerate launch's OMP_NUM_THREADS=1 undone)" if wanted else ""
        say(
            f"CPU threads: {count} of the {len(cpus)} cores this run may use, {free:.1f} of "
            f"them free{launcher}; followed every {FOLLOW_INTERVAL_S:.0f} s"
        )
    else:
        say(f"CPU threads: {count}")
    return count
