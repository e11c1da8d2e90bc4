"""The layout of a training run folder: the one definition of its names.

Training (`train/`) writes these; `dynast.io.load_generator` and `eval` read them. Defined here,
below both, so that neither retypes a name or a pattern (docs/training.md, "The run folder"):

    <run>/config.json                           the resolved RunConfig
    <run>/metrics.jsonl, <run>/tensorboard/     logged scalars
    <run>/samples/step_00000250.png             sample grids
    <run>/run.lock                              held by the run writing the folder
    <run>/checkpoints/checkpoint_00000500/      one checkpoint; its generator/ is a
                                                save_pretrained folder
    <run>/final/                                save_pretrained of the generator at the end

What else a checkpoint holds (Accelerate's state, progress, manifest) is training's own format:
`train.checkpoints`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RUN_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
LOCK_FILE = "run.lock"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
# Inside a checkpoint folder: the generator as a save_pretrained folder.
GENERATOR_DIR = "generator"

# Folders and files a run writes directly under its folder.
OUTPUT_DIRS = (CHECKPOINTS_DIR, SAMPLES_DIR, TENSORBOARD_DIR, FINAL_DIR)
OUTPUT_FILES = (RUN_CONFIG_FILE, METRICS_FILE)
# Everything a run may leave directly under its folder: the above, its lock, the two sides of a
# swap of final/, and the temporaries of its atomic writes and write probes.
RUN_ENTRIES = frozenset(
    {*OUTPUT_DIRS, *OUTPUT_FILES, LOCK_FILE, f"{FINAL_DIR}.tmp", f"{FINAL_DIR}.old"}
)
_RUN_TEMPORARY = re.compile(r"\.(?P<name>.+)\.\d+\.tmp|\.write_probe(\.\d+)?")

CHECKPOINT_PREFIX = "checkpoint_"
_STEP_DIGITS = 8
# Exactly the names `checkpoint_name` writes: the step zero-padded to at least eight digits.
CHECKPOINT_PATTERN = re.compile(rf"{CHECKPOINT_PREFIX}(\d{{{_STEP_DIGITS},}})")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint of optimizer step `step`, e.g. `checkpoint_00000500`."""
    return f"{CHECKPOINT_PREFIX}{step:0{_STEP_DIGITS}d}"


def checkpoint_step(name: str) -> int | None:
    """The step a checkpoint folder name stands for; None when `name` is no checkpoint name."""
    match = CHECKPOINT_PATTERN.fullmatch(name)
    return int(match.group(1)) if match else None


def sample_name(step: int) -> str:
    """The file name of the sample grid of step `step`, e.g. `step_00000250.png`."""
    return f"step_{step:0{_STEP_DIGITS}d}.png"


def is_run_config(path: Path) -> bool:
    """Whether `path` is a run's `config.json` (sections model, data and train), as opposed to,
    say, a save_pretrained folder's model config."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"model", "data", "train"} <= set(data)


def is_run_folder(path: Path) -> bool:
    """Whether the folder `path` holds (part of) a training run: a lock, checkpoints, a metrics
    log or a run config."""
    path = Path(path)
    return (
        (path / LOCK_FILE).exists()
        or (path / CHECKPOINTS_DIR).is_dir()
        or (path / METRICS_FILE).is_file()
        or is_run_config(path / RUN_CONFIG_FILE)
    )


def foreign_entries(path: Path) -> list[str]:
    """Names directly under the folder `path` that no training run writes, sorted (a
    `config.json` counts unless it is a run's): what a run must not be started beside."""
    foreign = []
    for entry in Path(path).iterdir():
        name = entry.name
        temporary = _RUN_TEMPORARY.fullmatch(name)
        if temporary and (temporary["name"] is None or temporary["name"] in RUN_ENTRIES):
            continue
        if name == RUN_CONFIG_FILE and not is_run_config(entry):
            foreign.append(f"{name} (not a run's config)")
        elif name not in RUN_ENTRIES:
            foreign.append(name)
    return sorted(foreign)
