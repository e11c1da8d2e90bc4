"""Checkpoints of a run: `<run>/checkpoints/checkpoint_XXXXXXXX/`, written whole or not at all.

A checkpoint is written into `checkpoint_XXXXXXXX.tmp` (Accelerate `save_state` in safetensors
under `state/`, the generator's `save_pretrained` folder under `generator/`, then `progress.json`
last) and renamed into place only when complete, so an interruption never leaves a half-written
folder under a final name. Resume takes the newest complete one; rotation deletes only older
complete ones.

Accelerate's files live in `state/` rather than beside `generator/` because its generator file is
also called `model.safetensors`: one level up it would make the checkpoint folder look like a
`save_pretrained` folder to `dynast.io.load_generator`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import TrainingError

CHECKPOINTS_DIR = "checkpoints"
PROGRESS_FILE = "progress.json"
GENERATOR_DIR = "generator"
STATE_DIR = "state"
_NAME = re.compile(r"^checkpoint_(\d{8})$")


@dataclass(frozen=True)
class Progress:
    """Where a run stands after optimizer step `step`: the data position (`epoch`, micro-batches
    of that epoch already consumed per process), the process layout that wrote it and the
    training wall time so far."""

    step: int
    epoch: int
    batch_in_epoch: int
    world_size: int
    batch_size: int
    elapsed_s: float


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def checkpoints_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and entry.is_dir() and (entry / PROGRESS_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete folders left by an interrupted save (`*.tmp`, `*.old`); returns what was removed."""
    root = checkpoints_root(run_dir)
    removed = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if (
                entry.is_dir()
                and entry.name.startswith("checkpoint_")
                and (entry.name.endswith(".tmp") or entry.name.endswith(".old"))
            ):
                shutil.rmtree(entry)
                removed.append(entry)
    return removed


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to `path` through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_progress(folder: Path) -> Progress:
    path = folder / PROGRESS_FILE
    try:
        data = json.loads(path.read_text())
        return Progress(**data)
    except (OSError, ValueError, TypeError) as e:
        raise TrainingError(f"{path}: not a readable checkpoint progress file ({e})") from e


def write_progress(folder: Path, progress: Progress) -> None:
    write_json_atomic(folder / PROGRESS_FILE, asdict(progress))


def staging_dir(run_dir: Path, step: int) -> Path:
    """The temporary folder a checkpoint of `step` is written into before `publish`."""
    return checkpoints_root(run_dir) / (checkpoint_name(step) + ".tmp")


def publish(staging: Path) -> Path:
    """Rename a fully written staging folder to its final name. A complete checkpoint already
    there (same step, e.g. a run re-done) is moved aside first and deleted only afterwards."""
    if not staging.name.endswith(".tmp") or not (staging / PROGRESS_FILE).is_file():
        raise TrainingError(f"{staging}: not a complete checkpoint staging folder")
    final = staging.with_name(staging.name[: -len(".tmp")])
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def rotate(run_dir: Path, limit: int) -> list[Path]:
    """Delete the complete checkpoints older than the newest `limit`; returns what was removed."""
    if limit < 1:
        raise ValueError(f"checkpoint limit must be >= 1, got {limit}")
    found = complete_checkpoints(run_dir)
    doomed = [folder for _, folder in found[:-limit]]
    for folder in doomed:
        shutil.rmtree(folder)
    return doomed
