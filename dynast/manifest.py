"""`manifest.json`: the size and SHA-256 of every file of a folder, written last.

Every folder of weights carries one: a training checkpoint (`train.checkpoints`), a
`save_pretrained` folder and a run's `final/` (`dynast.io`). A folder is trusted only when each
file it lists is present with the recorded size and hash (and a safetensors header that parses),
so a truncated copy, flipped bytes or a half-finished save are refused instead of loaded.

Hashing reads every byte: about 0.6 s for the 370 MB of a deepfashion-256 generator on one core
of the development machine, against 3-4 s to build and load that generator (docs/training.md,
"Weights folders"), so nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from kernels.files import write_atomically

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "dynast-checkpoint-manifest/1"
_HASH_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A folder that does not match its manifest (or has no readable one); the message names the
    file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """Record the size and SHA-256 of every file under `folder` (read back from disk) in
    `manifest.json`, flushed to disk and renamed into place: a folder without it was never
    finished."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST_FILE:
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    text = json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=2) + "\n"
    write_atomically(folder / MANIFEST_FILE, lambda tmp: tmp.write_text(text), durable=True)
    return files


def read_manifest(folder: Path) -> dict[str, dict[str, object]]:
    """The entries of `folder/manifest.json` (relative path -> size, sha256); ManifestError when
    it is missing or unreadable."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path} is missing (it is written last)")
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        for entry in files.values():
            if not (isinstance(entry["size"], int) and isinstance(entry["sha256"], str)):
                raise ValueError("an entry without an integer size and a sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestError(f"{path}: not a readable manifest ({e})") from None
    return files


def file_problem(path: Path, entry: dict[str, object]) -> str | None:
    """Why `path` does not match its manifest entry, or None."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{size} bytes, {entry['size']} when written"
    if sha256_file(path) != entry["sha256"]:
        return "contents differ from when it was written (SHA-256)"
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            return f"unreadable safetensors header ({e})"
    return None


def verify_entries(
    folder: Path, files: dict[str, dict[str, object]], required: tuple[str, ...]
) -> None:
    """Check that `files` (manifest entries, relative to `folder`) lists every name of `required`
    and that every listed file matches; ManifestError naming the first file that does not."""
    absent = [name for name in required if name not in files]
    if absent:
        raise ManifestError(f"{folder / MANIFEST_FILE} does not list {absent}")
    for rel, entry in files.items():
        problem = file_problem(folder / rel, entry)
        if problem is not None:
            raise ManifestError(f"{folder / rel}: {problem}")
