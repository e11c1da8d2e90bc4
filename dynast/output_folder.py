"""A command's output folder: never written over what a user made, and replaced whole.

`check_output_folder` runs before any work and refuses, naming the flag:
- a path that is a file or lies under one;
- a training run folder (`dynast.run_layout.is_run_folder`), even with `force`: its config and
  checkpoints belong to the run;
- a folder that is not empty, unless `force`;
- with `force`, a folder that holds one of the command's inputs (the model, the data) or the
  working directory, which replacing it would delete.

The output is then written into a staging folder beside it (`.<name>.partial`) and swapped in
whole (`swap_in`): the old folder is renamed aside (`.<name>.replaced`) and deleted only once the
new one is in place, so an interrupted command leaves the earlier output intact. `recover_swap`
finishes or undoes a swap a crash interrupted (training's `final/` uses the same swap).
`set_aside` renames a file or folder out of the way with a numbered suffix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from .run_layout import is_run_folder


class OutputFolderError(ValueError):
    """An output folder that must not be written; the message names the flag."""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(
    path: str | os.PathLike,
    flag: str,
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """The output folder `path` (`flag` names it in errors) once it is known to be safe to write
    as described in the module docstring; nothing is created. Returns it resolved."""
    path = Path(path).expanduser().absolute()
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, a file"
                raise OutputFolderError(f"{flag} {path} {where}; give a folder")
            break
    if not path.exists():
        return path
    if is_run_folder(path):
        raise OutputFolderError(
            f"{flag} {path} is a training run folder; write the output elsewhere (a run's "
            "config and checkpoints are never replaced, even with --force)"
        )
    if not any(path.iterdir()):
        return path
    if not force:
        raise OutputFolderError(
            f"{flag} {path} is not empty; choose a new folder, or pass --force to replace it "
            "whole (the new output is written beside it and swapped in when complete)"
        )
    resolved = path.resolve()
    for item in [Path.cwd(), *(Path(p) for p in inputs if p is not None)]:
        if _inside(item.expanduser().resolve(), resolved):
            raise OutputFolderError(
                f"{flag} {path} holds {item}, which replacing the folder would delete; write the "
                "output elsewhere"
            )
    return path


def staging_path(path: Path) -> Path:
    """Where the new contents of `path` are written before `swap_in`."""
    return path.with_name(f".{path.name}.partial")


def replaced_path(path: Path) -> Path:
    """Where the old contents of `path` wait during `swap_in`."""
    return path.with_name(f".{path.name}.replaced")


def clear(path: Path) -> None:
    """Remove `path` (a folder or a file) when it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_in(staging: Path, path: Path, old: Path | None = None) -> Path:
    """Put the complete folder `staging` in place of `path`: `path` -> `old`, `staging` ->
    `path`, then delete `old`. Returns `path`."""
    old = old or replaced_path(path)
    clear(old)
    if path.exists():
        os.replace(path, old)
    os.replace(staging, path)
    with contextlib.suppress(FileNotFoundError):
        clear(old)  # a symbolic link --out is replaced by the folder, its target left alone
    return path


def write_folder(
    path: Path,
    write: Callable[[Path], None],
    *,
    staging: Path | None = None,
    old: Path | None = None,
) -> Path:
    """`write(staging)` (it creates the folder), then `swap_in`. A leftover staging folder of an
    interrupted run is removed first; an exception leaves `path` as it was."""
    staging = staging or staging_path(path)
    clear(staging)
    write(staging)
    return swap_in(staging, path, old)


def recover_swap(path: Path, staging: Path, old: Path) -> list[str]:
    """Undo what a swap interrupted by a crash left: a half-written `staging` is deleted; an `old`
    folder is put back when `path` is missing, else deleted. Returns what was done, one line
    each."""
    done = []
    if staging.exists():
        shutil.rmtree(staging)
        done.append(f"removed incomplete {staging}")
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
            done.append(f"removed {old} left by an interrupted swap")
        else:
            os.replace(old, path)
            done.append(f"restored {path} from {old}")
    return done


def set_aside(path: Path, suffix: str) -> Path:
    """Rename `path` to `<name><suffix>`, or `<name><suffix>-2`, `-3`, ... when taken; returns the
    new path. Nothing already set aside is ever replaced."""
    target, n = path.with_name(path.name + suffix), 1
    while target.exists() or target.is_symlink():
        n += 1
        target = path.with_name(f"{path.name}{suffix}-{n}")
    os.replace(path, target)
    return target
