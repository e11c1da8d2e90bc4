"""Scalars of a run: `<run>/metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only the main process writes. A resumed run first drops the records after the step it resumes
from (they describe training that the checkpoint does not contain) so the JSONL reads as one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dynast.run_layout import METRICS_FILE, TENSORBOARD_DIR
from kernels.files import write_atomically


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of `<run>/metrics.jsonl` (an empty list when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A run killed mid-write leaves at most one torn last line; skip it, keep the rest.
            if number == len(lines):
                continue
            raise ValueError(f"{path}:{number}: not a JSON object") from None
    return records


def _finite(value: float) -> float | None:
    # JSON has no NaN/inf; record them as null rather than writing invalid JSON.
    return value if math.isfinite(value) else None


class MetricsLog:
    """Append-only scalar log. `keep_through`: records with a larger step are dropped at start
    (-1 for a fresh run: drop everything)."""

    def __init__(self, run_dir: Path, *, keep_through: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        kept = [r for r in read_metrics(run_dir) if r.get("step", -1) <= keep_through]
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
