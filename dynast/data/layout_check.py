"""The one check every real-data loader makes first: does the root have the expected folders?"""

from __future__ import annotations

from pathlib import Path


def found_entries(root: Path, limit: int = 12) -> str:
    """A short listing of what `root` holds, for an error message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "nothing"


def require_dirs(root: Path, names: tuple[str, ...], layout: str) -> None:
    """ValueError naming the expected folders and what the root holds when one is missing."""
    absent = [n for n in names if not (root / n).is_dir()]
    if absent:
        expected = ", ".join(f"{n}/" for n in names)
        raise ValueError(
            f"{root}: not the {layout} layout: expected {expected} but {', '.join(absent)} "
            f"missing; found: {found_entries(root)}"
        )
