"""What every results line records about the code that made it, and the JSONL appender."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

_REPO = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, object] | None:
    """Commit and dirty flag of the checkout this code runs from, or None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment() -> dict[str, object]:
    """Versions of the code and libraries, the machine, the command line."""
    return {
        "dynast_version": _version("dynast"),
        "git": git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchmetrics": _version("torchmetrics"),
        "numpy": np.__version__,
        "host": platform.node(),
        "argv": sys.argv,
    }


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finite(value: object) -> object:
    # JSON has no inf/nan (PSNR of identical images is inf): write them as strings.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def append_jsonl(path: str | Path, record: dict[str, object]) -> None:
    """Append one JSON line. A single `write` of one line to a file opened for appending lands
    whole (O_APPEND), so concurrent runs never interleave inside a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
