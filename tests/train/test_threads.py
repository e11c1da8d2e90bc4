"""train.threads: when a training process overrides the launcher's one-thread default."""

from __future__ import annotations

import time

import pytest
import torch

from train import threads
from train.threads import threads_to_use

LAUNCHED = {"ACCELERATE_DYNAMO_BACKEND": "NO", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    "env,cores,expected",
    [
        pytest.param(LAUNCHED, 2, 2, id="launcher-default-one-process"),
        pytest.param(LAUNCHED, 1, None, id="one-core-machine"),
        pytest.param({**LAUNCHED, "OMP_NUM_THREADS": "3"}, 8, None, id="user-set-3"),
        pytest.param({"OMP_NUM_THREADS": "1"}, 2, None, id="no-launcher-user-set-1"),
        pytest.param({**LAUNCHED, "LOCAL_WORLD_SIZE": "2"}, 2, None, id="two-processes"),
        pytest.param({**LAUNCHED, "LOCAL_WORLD_SIZE": "1"}, 4, 4, id="local-world-1"),
        pytest.param({}, 2, None, id="plain-python"),
    ],
)
def test_threads_to_use(env, cores, expected):
    assert threads_to_use(env, cores) == expected
    assert threads_to_use(env, cores, launcher_env={"PATH": "/bin"}) == expected


def test_a_one_thread_setting_given_to_the_launcher_is_kept():
    assert threads_to_use(LAUNCHED, 2, launcher_env={"OMP_NUM_THREADS": "1"}) is None


def test_launcher_environment_reads_the_parent_process():
    env = threads.launcher_environment()
    assert env is None or isinstance(env, dict)


def test_configure_threads_sets_and_says(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: frozenset({0, 1}))
    # Both cores idle whatever this machine's load: the count follows the free cores.
    monkeypatch.setattr(threads, "idle_seconds", lambda cpus: 2 * time.monotonic())
    monkeypatch.setattr(threads, "_following", None)
    monkeypatch.setattr(threads, "launcher_environment", lambda: {})
    for name, value in LAUNCHED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    lines: list[str] = []
    try:
        assert threads.configure_threads(lines.append) == 2
        assert torch.get_num_threads() == 2
        assert len(lines) == 1 and "OMP_NUM_THREADS=1" in lines[0] and "2 cores" in lines[0]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "env,launcher_env,follows",
    [
        pytest.param({}, None, True, id="plain-python"),
        pytest.param(LAUNCHED, {}, True, id="launcher-default"),
        pytest.param(LAUNCHED, {"OMP_NUM_THREADS": "1"}, False, id="given-to-the-launcher"),
        pytest.param({"OMP_NUM_THREADS": "2"}, None, False, id="user-set"),
        pytest.param({**LAUNCHED, "LOCAL_WORLD_SIZE": "2"}, {}, False, id="two-processes"),
    ],
)
def test_when_the_count_follows_the_free_cores(env, launcher_env, follows):
    assert threads.follows_free_cores(env, launcher_env) is follows


def test_threads_for_whole_free_cores():
    assert [threads.threads_for(f, 2) for f in (0.0, 0.7, 0.8, 1.5, 1.8, 2.0, 3.5)] == [
        1, 1, 1, 1, 2, 2, 2,
    ]  # fmt: skip
    idle = threads.idle_seconds({0})
    assert idle is None or idle >= 0


def test_the_thread_count_follows_the_free_cores():
    """Two cores, a fake clock: alone, then a busy neighbour takes a core, then leaves. A count
    changes only when two measurements 5 s apart agree."""
    state = {"t": 0.0, "own": 0.0, "idle": 0.0}

    def run(seconds: float, idle_cores: float, own_cores: float) -> int | None:
        state["t"] += seconds
        state["idle"] += idle_cores * seconds
        state["own"] += own_cores * seconds
        return follower.update()

    before = torch.get_num_threads()
    follower = threads.FreeCpuThreads(
        {0, 1}, 5.0, idle=lambda cpus: state["idle"], own=lambda: state["own"],
        clock=lambda: state["t"],
    )  # fmt: skip
    try:
        torch.set_num_threads(2)
        assert run(5, 0.0, 2.0) is None and torch.get_num_threads() == 2  # alone
        assert run(5, 0.0, 1.0) is None  # the neighbour takes a core: one measurement
        assert run(5, 0.0, 1.0) == 1 and follower.free == 1.0
        assert torch.get_num_threads() == 1
        assert run(2, 1.0, 1.0) is None  # within the interval: not measured
        assert run(3, 1.0, 1.0) is None and follower.free == 2.0  # the neighbour left
        assert run(5, 1.0, 1.0) == 2 and torch.get_num_threads() == 2
        assert run(5, 0.0, 1.0) is None and run(5, 0.0, 2.0) is None  # disagreeing: kept
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
