"""Checkpoints of a run: `<run>/checkpoints/checkpoint_XXXXXXXX/`, written whole or not at all.

A checkpoint is written into `checkpoint_XXXXXXXX.tmp` (Accelerate `save_state` in safetensors
under `state/`, the generator's `save_pretrained` folder under `generator/`, the fp16 loss scalers
as `scalers.json`, `progress.json`, then `manifest.json` last: the size and SHA-256 of every other
file) and renamed into place only when complete, so an interruption never leaves a half-written
folder under a final name. Resume takes the newest checkpoint that verifies against its manifest
(`select_resume`); a damaged newer one is renamed `*.damaged` and left for inspection. Rotation
renames a doomed checkpoint `*.deleting` before deleting it, so an interrupted deletion is finished
at the next start instead of leaving a half-deleted folder under a checkpoint name.

Accelerate's files live in `state/` rather than beside `generator/` because its generator file is
also called `model.safetensors`: one level up it would make the checkpoint folder look like a
`save_pretrained` folder to `dynast.io.load_generator`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError
from safetensors.torch import load_model

from dynast.io import CONFIG_FILE, WEIGHTS_FILE
from dynast.manifest import (
    MANIFEST_FILE,
    ManifestError,
    file_problem,
    read_manifest,
)
from dynast.output_folder import set_aside, swap_in
from dynast.run_layout import (
    CHECKPOINT_PREFIX,
    CHECKPOINTS_DIR,
    GENERATOR_DIR,
    checkpoint_name,
    checkpoint_step,
)
from kernels.files import write_atomically

from .errors import TrainingError

PROGRESS_FILE = "progress.json"
SCALERS_FILE = "scalers.json"
STATE_DIR = "state"
# Files a checkpoint cannot resume without (Accelerate's names for two models, two optimizers).
REQUIRED_FILES = (
    PROGRESS_FILE,
    f"{GENERATOR_DIR}/{CONFIG_FILE}",
    f"{GENERATOR_DIR}/{WEIGHTS_FILE}",
    f"{STATE_DIR}/model.safetensors",
    f"{STATE_DIR}/model_1.safetensors",
    f"{STATE_DIR}/optimizer.bin",
    f"{STATE_DIR}/optimizer_1.bin",
)
# Random states only make the resumed run continue the same random stream; losing one is worth a
# warning, not the checkpoint.
_RANDOM_STATE = re.compile(rf"^{STATE_DIR}/random_states_\d+\.pkl$")
_LEFTOVER_SUFFIXES = (".tmp", ".old", ".deleting")


@dataclass(frozen=True, kw_only=True)
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


def checkpoints_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIR


def _named_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every folder named `checkpoint_XXXXXXXX`, complete or not, oldest first."""
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir():
            found.append((step, entry))
    return sorted(found)


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint (one with `progress.json`), oldest first."""
    return [(s, f) for s, f in _named_checkpoints(run_dir) if (f / PROGRESS_FILE).is_file()]


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete folders left by an interrupted save (`*.tmp`, `*.old`) or an interrupted rotation
    (`*.deleting`); returns what was removed."""
    root = checkpoints_root(run_dir)
    removed = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if (
                entry.is_dir()
                and entry.name.startswith(CHECKPOINT_PREFIX)
                and entry.name.endswith(_LEFTOVER_SUFFIXES)
            ):
                shutil.rmtree(entry)
                removed.append(entry)
    return removed


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON to `path` through a temporary file flushed to disk and renamed into place."""
    text = json.dumps(data, indent=2) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text), durable=True)


# ----------------------------------------------------------------------------- progress.json


class DamagedCheckpointError(TrainingError):
    """A checkpoint whose files are missing or do not match what was written (disk damage, an
    interrupted copy): resume skips it for an older one."""


def _check_progress(data: object, path: Path, expected_step: int | None) -> Progress:
    """`Progress` from parsed JSON; TrainingError naming `path` for any wrong field."""
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: expected a JSON object, got {type(data).__name__}")
    names = [f.name for f in fields(Progress)]
    if sorted(data) != sorted(names):
        raise TrainingError(
            f"{path}: expected the fields {names}, got {sorted(data)} (edited by hand?)"
        )
    for name in names[:-1]:
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TrainingError(
                f"{path}: {name} must be an integer >= 0, got {value!r} (edited by hand?)"
            )
    elapsed = data["elapsed_s"]
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, (int, float))
        or not math.isfinite(elapsed)
    ):
        raise TrainingError(f"{path}: elapsed_s must be a finite number, got {elapsed!r}")
    if data["world_size"] < 1 or data["batch_size"] < 1:
        raise TrainingError(f"{path}: world_size and batch_size must be >= 1")
    if expected_step is not None and data["step"] != expected_step:
        raise TrainingError(
            f"{path}: step {data['step']} differs from its folder {path.parent.name} (step "
            f"{expected_step}); edited by hand? Resuming would continue at the wrong step and "
            "overwrite later checkpoints: fix or remove that checkpoint"
        )
    return Progress(**{**data, "elapsed_s": float(elapsed)})


def _folder_step(folder: Path) -> int | None:
    return checkpoint_step(folder.name.removesuffix(".tmp"))


def read_progress(folder: Path) -> Progress:
    """The `progress.json` of a checkpoint folder, checked field by field (and against the step in
    the folder's name). TrainingError naming the file when it is unreadable or wrong."""
    path = folder / PROGRESS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: not a readable checkpoint progress file ({e})") from e
    return _check_progress(data, path, _folder_step(folder))


def write_progress(folder: Path, progress: Progress) -> None:
    write_json_atomic(folder / PROGRESS_FILE, asdict(progress))


# ----------------------------------------------------------------------------- manifest


def _read_manifest(folder: Path) -> dict[str, dict[str, object]]:
    try:
        return read_manifest(folder)
    except ManifestError as e:
        raise DamagedCheckpointError(str(e)) from None


@dataclass(frozen=True, kw_only=True)
class Verified:
    """A checkpoint that verified: its progress, and warnings about files it can resume without
    (random states)."""

    step: int
    folder: Path
    progress: Progress
    warnings: tuple[str, ...]


def verify(folder: Path) -> Verified:
    """Check a checkpoint before trusting it: `progress.json` readable and consistent with the
    folder name (a consistent-looking but wrong file is refused with TrainingError: someone edited
    it), `manifest.json` present, every required file listed, and every listed file present with
    its recorded size and hash. DamagedCheckpointError for damage; a damaged random-state file is
    only a warning."""
    step = _folder_step(folder)
    path = folder / PROGRESS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as e:
        raise DamagedCheckpointError(f"{path}: unreadable ({e})") from None
    progress = _check_progress(data, path, step)
    files = _read_manifest(folder)
    absent = [name for name in REQUIRED_FILES if name not in files]
    if absent:
        raise DamagedCheckpointError(f"{folder / MANIFEST_FILE} does not list {absent}")
    warnings = []
    for rel, entry in files.items():
        problem = file_problem(folder / rel, entry)
        if problem is None:
            continue
        if _RANDOM_STATE.match(rel):
            warnings.append(
                f"warning: {folder / rel}: {problem}; that process resumes with fresh random "
                "states (the data order is unaffected)"
            )
        else:
            raise DamagedCheckpointError(f"{folder / rel}: {problem}")
    return Verified(step=progress.step, folder=folder, progress=progress, warnings=tuple(warnings))


def select_resume(run_dir: Path, say: Callable[[str], None]) -> Verified | None:
    """The newest checkpoint of `run_dir` that verifies (None when there is no checkpoint at
    all). Every newer damaged one is renamed `*.damaged`, left on disk, and reported in one line.
    When checkpoints exist but none verifies, TrainingError lists why and renames nothing: the
    run would otherwise silently start over."""
    found = _named_checkpoints(run_dir)
    damaged: list[tuple[Path, str]] = []
    chosen = None
    for _, folder in reversed(found):
        try:
            chosen = verify(folder)
            break
        except DamagedCheckpointError as e:
            damaged.append((folder, str(e)))
    if chosen is None:
        if damaged:
            reasons = "; ".join(f"{folder.name}: {why}" for folder, why in damaged)
            raise TrainingError(
                f"{checkpoints_root(run_dir)}: no checkpoint verifies ({reasons}); move them "
                "away to start the run over"
            )
        return None
    for folder, why in damaged:
        kept = set_aside(folder, ".damaged")
        say(f"skipped damaged checkpoint {folder.name} ({why}); kept as {kept.name}")
    return chosen


# ----------------------------------------------------------------------------- scalers


def save_scalers(folder: Path, scalers: dict[str, torch.amp.GradScaler]) -> None:
    """The loss scalers' state as JSON (numbers only), read back by `load_scalers`: nothing in a
    run folder is unpickled."""
    write_json_atomic(folder / SCALERS_FILE, {name: s.state_dict() for name, s in scalers.items()})


def load_scalers(folder: Path, scalers: dict[str, torch.amp.GradScaler]) -> None:
    path = folder / SCALERS_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or sorted(data) != sorted(scalers):
            raise ValueError(f"expected the scalers {sorted(scalers)}")
        for name, scaler in scalers.items():
            state = data[name]
            if not isinstance(state, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in state.values()
            ):
                raise ValueError(f"{name}: expected a JSON object of numbers")
            scaler.load_state_dict(state)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise TrainingError(f"{path}: not a readable loss-scaler state ({e})") from None


# ----------------------------------------------------------------------------- training state


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def load_training_state(
    state_dir: Path,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    process_index: int,
) -> list[str]:
    """Load what Accelerate's `save_state` wrote into `state_dir`, by our own loaders rather than
    `Accelerator.load_state`, which would also unpickle any `custom_checkpoint_*.pkl` found there
    with `weights_only=False`: models from safetensors (data only), optimizers with
    `torch.load(weights_only=True)`, this process's random states with Accelerate's `load`
    (weights_only=True plus numpy's state types). Other files in the folder are never opened.
    TrainingError naming the file for a model or optimizer that does not load; a random-state file
    that does not load is a warning (returned), the run goes on with fresh random states."""
    for i, model in enumerate(models):
        path = state_dir / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
        try:
            load_model(model, path, strict=True, device="cpu")
        except (SafetensorError, OSError, RuntimeError) as e:
            raise TrainingError(f"{path}: cannot load the model state ({_first_line(e)})") from None
    for i, optimizer in enumerate(optimizers):
        path = state_dir / ("optimizer.bin" if i == 0 else f"optimizer_{i}.bin")
        try:
            optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
            raise TrainingError(
                f"{path}: cannot load the optimizer state ({_first_line(e)})"
            ) from None
    path = state_dir / f"random_states_{process_index}.pkl"
    try:
        states = accelerate_load(path)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])  # noqa: NPY002 - the state saved
        torch.set_rng_state(states["torch_manual_seed"])
        if torch.cuda.is_available() and "torch_cuda_manual_seed" in states:
            torch.cuda.set_rng_state_all(states["torch_cuda_manual_seed"])
    except (
        OSError,
        RuntimeError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        pickle.UnpicklingError,
    ) as e:
        return [
            f"warning: {path}: random states not loaded ({_first_line(e)}); this process goes on "
            "with fresh ones"
        ]
    return []


# ----------------------------------------------------------------------------- publish, rotate


def staging_dir(run_dir: Path, step: int) -> Path:
    """The temporary folder a checkpoint of `step` is written into before `publish`."""
    return checkpoints_root(run_dir) / (checkpoint_name(step) + ".tmp")


def publish(staging: Path) -> Path:
    """Rename a fully written staging folder to its final name. A complete checkpoint already
    there (same step, e.g. a run re-done) is moved aside first and deleted only afterwards."""
    if not staging.name.endswith(".tmp") or not (staging / PROGRESS_FILE).is_file():
        raise TrainingError(f"{staging}: not a complete checkpoint staging folder")
    final = staging.with_name(staging.name[: -len(".tmp")])
    return swap_in(staging, final, final.with_name(final.name + ".old"))


def rotate(run_dir: Path, limit: int) -> list[Path]:
    """Delete the complete checkpoints older than the newest `limit`, and any incomplete
    `checkpoint_XXXXXXXX` folder older than the newest complete one (a deletion interrupted by
    older code); returns what was removed. Each folder is first renamed `*.deleting`, so a deletion
    interrupted here is finished by `remove_partial` at the next start."""
    if limit < 1:
        raise ValueError(f"checkpoint limit must be >= 1, got {limit}")
    complete = complete_checkpoints(run_dir)
    doomed = [folder for _, folder in complete[:-limit]]
    if complete:
        newest = complete[-1][0]
        kept = {folder for _, folder in complete}
        doomed += [f for s, f in _named_checkpoints(run_dir) if s < newest and f not in kept]
    for folder in sorted(doomed):
        going = folder.with_name(folder.name + ".deleting")
        if going.exists():
            shutil.rmtree(going)
        os.replace(folder, going)
        shutil.rmtree(going)
    return sorted(doomed)
