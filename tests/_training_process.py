"""What the tests that run `train/main.py` as a subprocess share: where it is, and the
environment it runs in."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_MAIN = str(REPO / "train" / "main.py")


def training_env(tmp: Path) -> dict[str, str]:
    """This process's environment with the checkout importable, one thread per process
    (deterministic, and no oversubscription of a shared machine), TORCH_HOME inside `tmp` (no
    VGG19 weights: the VGG terms are off) and no progress bars."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        TORCH_HOME=str(tmp / "torch_home"),
        TQDM_DISABLE="1",
    )
    return env
