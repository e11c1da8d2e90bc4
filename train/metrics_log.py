"""Scalars of a run: `<run>/metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only the main process writes. A resumed run first drops the records after the step it resumes
from (they describe training that the checkpoint does not contain) so the JSONL reads as one run,
and any line that is not a JSON object (a torn write, an edit by hand), with a warning naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from dynast.run_layout import METRICS_FILE, TENSORBOARD_DIR
from kernels.files import write_atomically


def _parse(lines: list[str]) -> tuple[list[dict], list[int]]:
    """(records, numbers of the lines that are not JSON objects with an integer step, if any) of
    the lines of a metrics log."""
    records, garbled = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        step = record.get("step", -1) if isinstance(record, dict) else None
        if isinstance(step, int) and not isinstance(step, bool):
            records.append(record)
        else:
            garbled.append(number)
    return records, garbled


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of `<run>/metrics.jsonl` (an empty list when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records, garbled = _parse(lines)
    # A run killed mid-write leaves at most one torn last line; skip it, keep the rest.
    wrong = [number for number in garbled if number != len(lines)]
    if wrong:
        raise ValueError(f"{path}:{wrong[0]}: not a JSON object")
    return records


def _finite(value: float) -> float | None:
    # JSON has no NaN/inf; record them as null rather than writing invalid JSON.
    return value if math.isfinite(value) else None


class MetricsLog:
    """Append-only scalar log. `keep_through`: records with a larger step are dropped at start
    (-1 for a fresh run: drop everything); lines that are not JSON objects are dropped too, each
    reported to `say`."""

    def __init__(
        self,
        run_dir: Path,
        *,
        keep_through: int,
        enabled: bool = True,
        say: Callable[[str], None] = print,
    ) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
        records, garbled = _parse(lines)
        for number in garbled:
            if keep_through >= 0 and number != len(lines):  # a torn last line is expected
                say(
                    f"warning: {self.path}:{number}: not a JSON object, dropped "
                    f"({lines[number - 1][:60]!r})"
                )
        kept = [r for r in records if r.get("step", -1) <= keep_through]
        text = "".join(json.dumps(record) + "\n" for record in kept)
        write_atomically(self.path, lambda tmp: tmp.write_text(text))
        # Imported here: only the main process needs TensorBoard.
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(Path(run_dir) / TENSORBOARD_DIR), purge_step=keep_through + 1
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _finite(float(v)) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in scalars.items():
            self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
