"""Writing a file so that no reader ever sees it half-written: the one helper every package uses
(it lives here, in the lowest package that writes files: the tuning table)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(
    path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = False
) -> None:
    """Call `write(temporary)` for a temporary path beside `path`, then rename it over `path`.

    A crash or an exception leaves `path` as it was (the temporary is removed on an exception).
    `durable`: flush the file to the disk before the rename, for records that a resume trusts
    after a power loss (checkpoint metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        if durable:
            with open(temporary, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
