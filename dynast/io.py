"""Generator weights on disk: `save_pretrained` / `from_pretrained` folders and `load_generator`,
which also finds the generator inside a training run folder.

A pretrained folder holds `config.json` (the `DynaSTConfig` as JSON) and `model.safetensors` (the
state dict; its metadata repeats the config so that a folder whose two files come from different
saves is caught). Both files are written to a temporary name and renamed into place. Loading is
strict: any missing, unexpected or mis-shaped tensor is an error that lists them.

Run folder layout read by `load_generator` (written by training, named in `dynast.run_layout`):
`<run>/final/` (a pretrained folder) and `<run>/checkpoints/checkpoint_<step>/generator/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kernels.files import write_atomically

from .config import DynaSTConfig
from .generator import Generator
from .run_layout import CHECKPOINTS_DIR, FINAL_DIR, GENERATOR_DIR, checkpoint_step

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "dynast-generator"


class CheckpointMismatchError(ValueError):
    """Weights that do not fit the generator they are loaded into."""


class DamagedWeightsError(ValueError):
    """A weights file that cannot be read as safetensors (truncated, garbled, not safetensors)."""


def _damaged(path: Path, error: Exception) -> DamagedWeightsError:
    # safetensors' messages (e.g. "incomplete metadata, file not fully covered") name no file.
    return DamagedWeightsError(
        f"{str(path)!r}: damaged or not a safetensors file ({error}); save the weights again"
    )


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a safetensors file; DamagedWeightsError naming it when it is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise _damaged(Path(path), error) from None


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with DamagedWeightsError naming the file when unreadable."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as error:
        raise _damaged(Path(path), error) from None


def save_pretrained(generator: Generator, directory: str | os.PathLike) -> Path:
    """Write `config.json` and `model.safetensors` of `generator` into `directory` (created if
    needed; existing files are replaced). Returns the directory."""
    if not isinstance(generator, Generator):
        raise ValueError(f"save_pretrained expects a Generator, got {type(generator).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(generator.config.to_dict(), indent=2, sort_keys=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in generator.state_dict().items()}
    metadata = {"format": FORMAT, "config": config_text}
    # Weights first: a crash between the two renames leaves the old config beside new weights,
    # which `from_pretrained` detects through the metadata copy of the config.
    write_atomically(directory / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata))
    write_atomically(directory / CONFIG_FILE, lambda p: p.write_text(config_text + "\n"))
    return directory


def read_config(directory: str | os.PathLike) -> DynaSTConfig:
    """The `DynaSTConfig` of a pretrained folder."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: not a save_pretrained folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON: {err}") from err
    try:
        return DynaSTConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{str(path)!r} does not hold a valid DynaSTConfig: {err}") from err


def _config_difference(a: DynaSTConfig, b: DynaSTConfig) -> str:
    da, db = a.to_dict(), b.to_dict()
    return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])


def load_state_strict(generator: Generator, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists every missing, unexpected and
    mis-shaped key (and names the source)."""
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} in checkpoint, {tuple(expected[k].shape)} in model"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        raise CheckpointMismatchError(
            f"weights in {source} do not fit the {generator.config.name!r} generator: "
            f"missing keys {missing}; unexpected keys {unexpected}; shape mismatches {wrong}"
        )
    generator.load_state_dict(state, strict=True)


def from_pretrained(
    directory: str | os.PathLike,
    *,
    config: DynaSTConfig | None = None,
    device: str | torch.device = "cpu",
) -> Generator:
    """Build the generator described by `directory/config.json` and load its weights strictly.

    `config`, when given, is the architecture the caller expects: a checkpoint of any other
    configuration (another preset, say) is one CheckpointMismatchError naming both and the fields
    that differ. The generator is returned in eval mode on `device`."""
    directory = Path(directory)
    saved = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{str(weights)!r} not found beside {CONFIG_FILE}")
    metadata = read_safetensors_metadata(weights)
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{str(weights)!r} was not written by dynast.io.save_pretrained "
            f"(metadata format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        weights_config = DynaSTConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{str(weights)!r}: its metadata holds no valid generator config ({error})"
        ) from None
    if weights_config != saved:
        raise CheckpointMismatchError(
            f"{CONFIG_FILE} and {WEIGHTS_FILE} in {str(directory)!r} come from different saves "
            f"(config.json vs weights: {_config_difference(saved, weights_config)})"
        )
    if config is not None and config != saved:
        raise CheckpointMismatchError(
            f"checkpoint {str(directory)!r} is a {saved.name!r} generator but a {config.name!r} "
            f"generator was asked for (checkpoint vs asked: {_config_difference(saved, config)})"
        )
    generator = Generator(saved)
    load_state_strict(generator, load_safetensors(weights), repr(str(weights)))
    return generator.to(device).eval()


def _newest_checkpoint(checkpoints: Path) -> Path | None:
    found = []
    for child in checkpoints.iterdir():
        step = checkpoint_step(child.name)
        if step is not None and (child / GENERATOR_DIR / WEIGHTS_FILE).is_file():
            found.append((step, child))
    return max(found)[1] / GENERATOR_DIR if found else None


def resolve_generator_dir(path: str | os.PathLike) -> Path:
    """The pretrained folder that `load_generator(path)` reads (see there)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder")
    if (path / WEIGHTS_FILE).is_file():
        return path
    if (path / GENERATOR_DIR / WEIGHTS_FILE).is_file():
        return path / GENERATOR_DIR
    if (path / FINAL_DIR / WEIGHTS_FILE).is_file():
        return path / FINAL_DIR
    if (path / CHECKPOINTS_DIR).is_dir():
        newest = _newest_checkpoint(path / CHECKPOINTS_DIR)
        if newest is not None:
            return newest
    raise FileNotFoundError(
        f"no generator weights under {str(path)!r}: expected a save_pretrained folder "
        f"({CONFIG_FILE} + {WEIGHTS_FILE}), a checkpoint folder with generator/, or a run folder "
        "with final/ or checkpoints/checkpoint_<step>/generator/"
    )


def load_generator(
    path: str | os.PathLike,
    *,
    config: DynaSTConfig | None = None,
    device: str | torch.device = "cpu",
) -> Generator:
    """Load a generator from a save_pretrained folder, one checkpoint folder of a run
    (`<run>/checkpoints/checkpoint_<step>/`, read from its `generator/`), or a run folder (its
    `final/` when present, else the newest checkpoint's `generator/`)."""
    return from_pretrained(resolve_generator_dir(path), config=config, device=device)
