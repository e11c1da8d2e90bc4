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

import re

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
