"""The tiny fp16 training run the run-folder guarantee tests damage, and what they use on it:
the command as a subprocess, its error lines, a checkpoint's folder, two kinds of damage, a
planted pickle, and whether a process still runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _training_process import TRAIN_MAIN, training_env

from train import checkpoints as ckpt

TINY = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
    "--model.ndf", "8", "--model.disc_layers", "3",
    "--data.train_length", "64", "--data.test_length", "8", "--data.textures", "procedural",
    "--train.eval_pairs", "4", "--train.eval_batch_size", "4", "--train.sample_rows", "2",
    "--train.log_every", "2", "--train.sample_every", "2", "--train.checkpoint_every", "2",
    "--train.checkpoint_limit", "2", "--train.batch_size", "4", "--mixed-precision", "fp16",
]  # fmt: skip


def train_process(args: list[str], tmp: Path, **kwargs) -> subprocess.CompletedProcess:
    """`train/main.py ARGS` run in `tmp`, its output captured."""
    return subprocess.run(
        [sys.executable, TRAIN_MAIN, *args],
        cwd=tmp,
        env=training_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The `error:` lines of a run's standard error."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def one_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one `error:` line of a run that exited with `status` and printed no traceback."""
    errors = error_lines(result)
    assert result.returncode == status, f"exit {result.returncode}\n{result.stderr}"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint of `step` in `run_dir`."""
    return run_dir / "checkpoints" / ckpt.checkpoint_name(step)


def truncate(path: Path, keep: int = 100) -> None:
    """Keep the first `keep` bytes of `path`, as an interrupted copy would."""
    path.write_bytes(path.read_bytes()[:keep])


def garble(path: Path) -> None:
    """Overwrite 64 bytes in the middle of `path`, as a bad disk would."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


class Payload:
    """Unpickling this runs `open(marker, "w")`: what a planted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
