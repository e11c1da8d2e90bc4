"""The run folder as a whole: one writer at a time, nothing but a run written into, every output
path checked before the run starts, and `final/` replaced only by a complete new one.

- `check_run_folder` refuses, before anything is written, an `--output-dir` whose name is not
  UTF-8 (TensorBoard cannot write there) or that holds anything a run does not write (a
  `save_pretrained` folder, someone's files): a run would replace its `config.json`.
- `lock_run_folder` takes an exclusive `fcntl.flock` on `<run>/run.lock` for the whole run; the
  kernel drops it when the process ends however it ends, so a crashed run never leaves a stale
  lock. A forked child (a DataLoader worker) would share the lock and keep it for the seconds it
  outlives a killed trainer, so every child closes its copy as it starts. The file holds the
  holder's pid for the error a second run prints.
- `check_output_paths` proves, before any model is built, that every file and folder the run will
  write can be written, so a read-only `checkpoints/` or a file called `samples` is one error at
  start instead of a traceback hours later.
- `write_final` writes `final.tmp/` beside `final/` and swaps them (`final/` -> `final.old/`,
  `final.tmp/` -> `final/`); `recover_final` finishes or undoes a swap a crash interrupted.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dynast.output_folder import recover_swap, write_folder
from dynast.run_layout import FINAL_DIR, LOCK_FILE, OUTPUT_DIRS, OUTPUT_FILES, foreign_entries

from .errors import TrainingError


def check_run_folder(run_dir: Path) -> None:
    """TrainingError naming `--output-dir` when the folder must not hold a run (see above)."""
    try:
        str(run_dir).encode("utf-8")
    except UnicodeEncodeError:
        raise TrainingError(
            f"--output-dir {str(run_dir)!r}: the name is not valid UTF-8, which TensorBoard's "
            "writer needs; rename the folder"
        ) from None
    if run_dir.is_dir():
        foreign = foreign_entries(run_dir)
        if foreign:
            raise TrainingError(
                f"--output-dir {run_dir} holds {', '.join(foreign[:5])}"
                f"{' ...' if len(foreign) > 5 else ''}, which no training run writes: it is not a "
                "run folder, and a run would replace its config.json; use another --output-dir"
            )
    elif run_dir.exists():
        raise TrainingError(f"--output-dir {run_dir} is a file; give a folder")


# The run locks this process holds: a forked child closes its copies as it starts.
_HELD_LOCKS: weakref.WeakSet[IO[str]] = weakref.WeakSet()


def _close_locks_in_child() -> None:
    for handle in list(_HELD_LOCKS):
        if not handle.closed:
            # Closing a copy of the descriptor does not unlock (LOCK_UN would, for everyone).
            handle.close()


os.register_at_fork(after_in_child=_close_locks_in_child)


def lock_run_folder(run_dir: Path) -> IO[str]:
    """Take the run folder's lock (non-blocking) and write our pid into it; keep the returned file
    open for as long as the run writes. TrainingError naming the holder's pid when another run
    holds it."""
    path = run_dir / LOCK_FILE
    try:
        # "a+": open without truncating, so a refused second run leaves the holder's pid intact.
        handle = open(path, "a+")
    except OSError as e:
        raise TrainingError(f"{path}: cannot open the run lock ({e.strerror or e})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise TrainingError(
            f"{run_dir} is in use by another training run (pid {holder}, which holds {path}); "
            "wait for it to end or stop it, or use another --output-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD_LOCKS.add(handle)
    return handle


def _writable_dir(path: Path) -> str | None:
    if not path.is_dir():
        return "exists and is not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    # os.access trusts permission bits only (root passes, read-only mounts may not): probe.
    probe = path / f".write_probe.{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        return f"cannot be written ({e.strerror or e})"
    return None


def check_output_paths(run_dir: Path) -> None:
    """Create the folders a run writes into and prove each output path writable; TrainingError
    naming the first that is not."""
    for name in OUTPUT_DIRS:
        path = run_dir / name
        if name != FINAL_DIR and not path.exists():
            try:
                path.mkdir()
            except OSError as e:
                raise TrainingError(f"{path}: cannot create ({e.strerror or e})") from None
        if path.exists():
            problem = _writable_dir(path)
            if problem:
                raise TrainingError(f"{path} {problem}; the run writes there")
    for name in OUTPUT_FILES:
        path = run_dir / name
        if path.exists() and not path.is_file():
            raise TrainingError(f"{path} exists and is not a file; the run writes it")
        if path.exists() and not os.access(path, os.W_OK):
            raise TrainingError(f"{path} is not writable; the run writes it")


def _final_paths(run_dir: Path) -> tuple[Path, Path, Path]:
    return tuple(run_dir / n for n in (FINAL_DIR, FINAL_DIR + ".tmp", FINAL_DIR + ".old"))


def recover_final(run_dir: Path) -> list[str]:
    """Undo what a swap of `final/` interrupted by a crash left: a half-written `final.tmp/` is
    deleted; a `final.old/` is put back when `final/` is missing, else deleted. Returns what was
    done, one line each."""
    final, tmp, old = _final_paths(run_dir)
    return recover_swap(final, tmp, old)


def write_final(run_dir: Path, write: Callable[[Path], None]) -> Path:
    """`write(folder)` into `final.tmp/`, then swap it with `final/`; the old `final/` is deleted
    only once the new one is in place."""
    final, tmp, old = _final_paths(run_dir)
    return write_folder(final, write, staging=tmp, old=old)
