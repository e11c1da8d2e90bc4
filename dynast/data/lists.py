"""The text lists of the real datasets (splits and reference lists), read with their line numbers
so every later error can name the file and line that referenced a missing file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """One non-empty line: comma-separated items (slashes normalised to '/'), and where it is."""

    items: tuple[str, ...]
    where: str  # "<file>:<line>"

    @property
    def key(self) -> str:
        return self.items[0]


def normalise(name: str) -> str:
    """A list item as a relative POSIX path: backslashes become '/', a leading './' goes."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def natural_key(name: str) -> list[int | str]:
    """Sort key of the authors' natural sort (CoCosNet / DynaST `util.natural_keys`): runs of
    digits compare as numbers, "img2" before "img10"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_list(path: Path, *, what: str) -> list[Entry]:
    """Every non-empty line of `path`. FileNotFoundError naming `what` when it is missing,
    ValueError when it has no entries."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text list ({e})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        items = tuple(normalise(item) for item in line.split(","))
        if any(not item for item in items):
            raise ValueError(f"{path}:{number}: empty item in {line.strip()!r}")
        entries.append(Entry(items, f"{path}:{number}"))
    if not entries:
        raise ValueError(f"{path}: the list is empty ({what})")
    return entries


def read_references(path: Path, *, what: str) -> dict[str, Entry]:
    """A reference list (`key,ref1[,ref2...]` per line) keyed by its first item. A line without
    a reference raises ValueError naming the file and line."""
    table: dict[str, Entry] = {}
    for entry in read_list(path, what=what):
        if len(entry.items) < 2:
            raise ValueError(
                f"{entry.where}: {entry.key!r} has no reference (expected `name,reference[,...]`)"
            )
        table[entry.key] = entry
    return table


def choose_reference(u: float, real: float, hard: float) -> str:
    """The release's rule for one uniform draw u in [0, 1): "hard" when u < real and u < hard,
    "easy" when u < real otherwise, "self" else."""
    if u < real:
        return "hard" if u < hard else "easy"
    return "self"
