"""What every results line records about the code that made it, and the JSONL appender.

A results file is checked before any metric is computed (`check_results_file`): it must be a
regular file (or a new one in a writable folder) whose existing lines are all JSON objects, so
hours of computation never end in a file that cannot take the line. A record always starts on a
line of its own, also after a last line without its newline.
"""

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


def check_results_file(path: str | Path, flag: str = "--results") -> None:
    """ValueError naming `flag` unless `path` can take a results line: an existing regular,
    writable file whose non-empty lines are all JSON objects, or a new file whose nearest existing
    folder is writable."""
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a .jsonl file")
        if not path.is_file():
            raise ValueError(f"{flag} {path} is not a regular file (a device or a pipe)")
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path} is not writable")
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{flag} {path} cannot be read as text: {error}") from None
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else {}
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{flag} {path}:{number} is not a JSON object ({line[:60]!r}); this file is "
                    "not a results file: give another, or repair that line"
                )
        return
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")


def append_jsonl(path: str | Path, record: dict[str, object]) -> None:
    """Append one JSON line, on a line of its own. A single `write` of one line to a file opened
    for appending lands whole (O_APPEND), so concurrent runs never interleave inside a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # the last line lacks its newline: do not append to it
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def append_results(path: str | Path, record: dict[str, object], flag: str = "--results") -> None:
    """`append_jsonl` to a results file, and say so; a failed write (the disk filled up since
    `check_results_file`) is a ValueError naming the file, after the values were printed."""
    try:
        append_jsonl(path, record)
    except OSError as error:
        raise ValueError(
            f"{flag} {path}: the line could not be appended ({error.strerror or error}); the "
            "values are printed above"
        ) from None
    print(f"appended to {path}")
