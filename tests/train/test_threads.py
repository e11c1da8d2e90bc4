"""train.threads: when a training process overrides the launcher's one-thread default."""

from __future__ import annotations

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
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
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
