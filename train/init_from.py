"""Start a new run from existing weights (`--train.init_from DIR`): the generator of a
`save_pretrained` folder (what `python -m dynast.convert release` writes, or any run's `final/`)
and, when the folder has one, the discriminator in `discriminator.safetensors` beside it.

Only the weights are taken: the optimizers start fresh and the step count starts at 0. A resumed
run ignores `init_from` (its checkpoint holds newer weights).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from dynast.convert import DISCRIMINATOR_FORMAT, DISCRIMINATOR_WEIGHTS
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator
from dynast.io import (
    CheckpointMismatchError,
    load_generator,
    load_state_strict,
    read_config,
    resolve_generator_dir,
)
from dynast.state_dicts import key_mismatches

from .errors import TrainingError


def load_discriminator_weights(path: Path, discriminator: MultiscaleDiscriminator) -> None:
    """Load `discriminator.safetensors` strictly; a mismatch lists the keys."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != DISCRIMINATOR_FORMAT:
        raise TrainingError(
            f"--train.init_from: {path} is not a dynast discriminator file (metadata format "
            f"{metadata.get('format')!r}, expected {DISCRIMINATOR_FORMAT!r})"
        )
    state = load_file(str(path), device="cpu")
    missing, unexpected, wrong = key_mismatches(state, discriminator.state_dict())
    if missing or unexpected or wrong:
        raise TrainingError(
            f"--train.init_from: {path} does not fit the {discriminator.config.name!r} "
            f"discriminator: missing keys {missing}; unexpected keys {unexpected}; shape "
            f"mismatches {wrong}"
        )
    discriminator.load_state_dict(state, strict=True)


def initialise_from(
    directory: str, generator: Generator, discriminator: MultiscaleDiscriminator
) -> dict[str, str | None]:
    """Copy the weights under `directory` into the (unprepared) models; returns the files read
    and, under "differences", the model-config fields in which the source differs from the run
    (allowed when the weights still fit, e.g. another top-k; an error otherwise)."""
    try:
        source = resolve_generator_dir(directory)
        saved = read_config(source)
        loaded = load_generator(source)
    except (FileNotFoundError, ValueError) as err:
        raise TrainingError(f"--train.init_from: {err}") from None
    differences = saved.differences(generator.config)
    try:
        load_state_strict(generator, loaded.state_dict(), str(source))
    except CheckpointMismatchError as err:
        raise TrainingError(
            f"--train.init_from: the generator in {source} does not fit this run's model "
            f"(source vs run: {differences}): {err}"
        ) from None
    d_file = source / DISCRIMINATOR_WEIGHTS
    if d_file.is_file():
        load_discriminator_weights(d_file, discriminator)
    return {
        "generator": str(source),
        "discriminator": str(d_file) if d_file.is_file() else None,
        "differences": differences or None,
    }
