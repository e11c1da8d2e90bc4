"""Generator weights on disk: `save_pretrained` / `from_pretrained` folders and `load_generator`,
which also finds the generator inside a training run folder.

A pretrained folder holds `config.json` (the `DynaSTConfig` as JSON), `model.safetensors` (the
state dict; its metadata repeats the config so that a folder whose two files come from different
saves is caught) and `manifest.json` (`dynast.manifest`: size and SHA-256 of every file, written
last). Each file is written to a temporary name and renamed into place. Loading verifies the
manifest first: a damaged file is one DamagedWeightsError naming it, never weights passed on
(folders saved before manifests existed have none and load unverified). Loading is strict: any
missing, unexpected or mis-shaped tensor is an error that lists them.

Run folder layout read by `load_generator` (written by training, named in `dynast.run_layout`):
`<run>/final/` (a pretrained folder) and `<run>/checkpoints/checkpoint_<step>/generator/` (a
pretrained folder, also listed in the checkpoint's own manifest).
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kernels.files import write_atomically

from .config import DynaSTConfig
from .generator import Generator
from .manifest import MANIFEST_FILE, ManifestError, read_manifest, verify_entries, write_manifest
from .run_layout import CHECKPOINTS_DIR, FINAL_DIR, GENERATOR_DIR, checkpoint_step
from .state_dicts import key_mismatches

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


# What torch.load raises for a file that is not a PyTorch file (text, truncated, another format)
# or a pickle that weights_only refuses.
_TORCH_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    AttributeError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    OSError,
    zipfile.BadZipFile,
)


def load_torch_file(path: str | os.PathLike, what: str) -> object:
    """`torch.load(path, weights_only=True)` on the CPU; any file it cannot read (text, truncated,
    another format, a pickle that would run code) is a ValueError naming `what` and the file.
    FileNotFoundError when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(
            f"{what}: {str(path)!r} is not a plain tensor state dict that loads with "
            f"weights_only=True (truncated, another format, or a pickle that would run code; "
            f"refused, nothing in it was run): {first_line}"
        ) from None


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file`, with DamagedWeightsError naming the file when unreadable."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as error:
        raise _damaged(Path(path), error) from None


def save_pretrained(generator: Generator, directory: str | os.PathLike) -> Path:
    """Write `config.json`, `model.safetensors` and then `manifest.json` of `generator` into
    `directory` (created if needed; existing files are replaced). Returns the directory."""
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
    write_manifest(directory)
    return directory


def verify_pretrained(directory: str | os.PathLike) -> None:
    """Check a pretrained folder against its manifest: its own `manifest.json`, or, for the
    `generator/` of a checkpoint written before pretrained folders had one, the checkpoint's
    entries for it. DamagedWeightsError naming the first file that does not match; a folder with
    neither (saved before manifests existed) passes unverified."""
    directory = Path(directory)
    required = (CONFIG_FILE, WEIGHTS_FILE)
    try:
        if (directory / MANIFEST_FILE).is_file():
            verify_entries(directory, read_manifest(directory), required)
        elif directory.name == GENERATOR_DIR and checkpoint_step(directory.parent.name) is not None:
            prefix = f"{GENERATOR_DIR}/"
            entries = {
                rel: entry
                for rel, entry in read_manifest(directory.parent).items()
                if rel.startswith(prefix)
            }
            verify_entries(directory.parent, entries, tuple(prefix + name for name in required))
    except ManifestError as error:
        raise DamagedWeightsError(
            f"damaged weights: {error} (checked against the folder's {MANIFEST_FILE}); "
            "nothing was loaded: save or copy the weights again"
        ) from None


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


def load_state_strict(generator: Generator, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict(strict=True)` with an error that lists every missing, unexpected and
    mis-shaped key (and names the source)."""
    missing, unexpected, wrong = key_mismatches(state, generator.state_dict())
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
    that differ. The folder is verified against its manifest (`verify_pretrained`) before the
    generator is returned, in eval mode on `device`."""
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
            f"(config.json vs weights: {saved.differences(weights_config)})"
        )
    if config is not None and config != saved:
        raise CheckpointMismatchError(
            f"checkpoint {str(directory)!r} is a {saved.name!r} generator but a {config.name!r} "
            f"generator was asked for (checkpoint vs asked: {saved.differences(config)})"
        )
    generator = Generator(saved)
    load_state_strict(generator, load_safetensors(weights), repr(str(weights)))
    # After the checks that name what is wrong inside the files (another save's config, missing
    # keys), before the weights are handed out.
    verify_pretrained(directory)
    return generator.to(device).eval()


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _newest_verified_checkpoint(run: Path, say: Callable[[str], None]) -> Path | None:
    """The `generator/` of the newest checkpoint of `run` that verifies, saying which and what
    was skipped (as training resumes, but renaming nothing: loading only reads). None when there
    is no checkpoint; DamagedWeightsError when none verifies."""
    found = sorted(
        (step, child)
        for child in (run / CHECKPOINTS_DIR).iterdir()
        if (step := checkpoint_step(child.name)) is not None and child.is_dir()
    )
    skipped: list[str] = []
    for _, folder in reversed(found):
        try:
            verify_pretrained(folder / GENERATOR_DIR)
        except DamagedWeightsError as error:
            skipped.append(f"{folder.name}: {error}")
            continue
        for reason in skipped:
            say(f"skipped damaged checkpoint {reason}")
        say(f"{run} has no {FINAL_DIR}/: using {folder.name}, its newest checkpoint that verifies")
        return folder / GENERATOR_DIR
    if skipped:
        raise DamagedWeightsError(
            f"{run / CHECKPOINTS_DIR}: no checkpoint's generator verifies ({'; '.join(skipped)})"
        )
    return None


def resolve_generator_dir(
    path: str | os.PathLike, say: Callable[[str], None] | None = None
) -> Path:
    """The pretrained folder that `load_generator(path)` reads (see there); `say` (stderr by
    default) hears which checkpoint a run folder without `final/` resolved to."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder")
    if (path / GENERATOR_DIR).is_dir():
        return path / GENERATOR_DIR
    if (path / WEIGHTS_FILE).is_file() or (path / MANIFEST_FILE).is_file():
        # A pretrained folder (one that lost its weights file is refused when loaded).
        return path
    if (path / FINAL_DIR).is_dir():
        # The weights the run finished with: a damaged final/ is refused when loaded, never
        # replaced by a checkpoint the user did not ask for.
        return path / FINAL_DIR
    if (path / CHECKPOINTS_DIR).is_dir():
        newest = _newest_verified_checkpoint(path, say or _to_stderr)
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
    say: Callable[[str], None] | None = None,
) -> Generator:
    """Load a generator from a save_pretrained folder, one checkpoint folder of a run
    (`<run>/checkpoints/checkpoint_<step>/`, read from its `generator/`), or a run folder (its
    `final/` when present, else the `generator/` of its newest checkpoint that verifies, which
    `say` is told). Every folder is verified against its manifest before it is read."""
    return from_pretrained(resolve_generator_dir(path, say), config=config, device=device)
