"""The routes to the trainer that README and docs/training.md promise without an install: from the
repository root, `python -m train.main`; from anywhere, `PYTHONPATH=<repo> python train/main.py`
(what `accelerate launch` and `torchrun` run too). No sys.path edits are involved."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _dry_run(command: list[str], cwd: Path, pythonpath: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, *command, "--preset", "synthetic-64-long", "--dry-run"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_python_dash_m_from_the_repository_root_needs_no_pythonpath():
    printed = _dry_run(["-m", "train.main"], REPO, None)
    assert printed["train"]["output_dir"] == "runs/synthetic-64-long"


def test_the_script_path_with_pythonpath_from_another_folder(tmp_path):
    printed = _dry_run([str(REPO / "train" / "main.py")], tmp_path, str(REPO))
    assert printed["model"]["name"] == "synthetic-64"


@pytest.mark.parametrize("folder", ["train", "benchmarks"])
def test_a_script_folder_first_on_sys_path_shadows_no_module(folder):
    """Run by path, a script's folder comes first on sys.path: none of its modules may carry the
    name of a module that Python or an installed package would import instead."""
    names = sorted(p.stem for p in (REPO / folder).glob("*.py") if p.stem != "__init__")
    clashes = [name for name in names if importlib.util.find_spec(name) is not None]
    assert clashes == []
