"""Fixtures of the run-folder guarantee tests (test_run_folder_guarantees.py and
test_run_folder_user_input.py): one finished tiny fp16 run, written once per test session, and a
private copy of it per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _damaged_run import TINY, train_process


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A finished 4-step fp16 run: checkpoints at steps 2 and 4, final/."""
    tmp = tmp_path_factory.mktemp("guarantees")
    run_dir = tmp / "run"
    result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "4"], tmp)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def run_dir(base, tmp_path) -> Path:
    """A private copy of the base run."""
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    (copy / "config.json").write_text(
        (copy / "config.json").read_text().replace(str(base), str(copy))
    )
    return copy
