"""Fault injection: a short training run killed with SIGKILL at seeded random moments (startup,
mid-step, inside a checkpoint write, publish, rotation, final/), re-run each time with the same
command. After every kill the run folder holds only checkpoints that verify; every restart
resumes from the newest one; the finished run equals an uninterrupted one.

Run by `pytest` and so by CI (not marked slow, which is opt-in): about 1-2 minutes on 2 cores."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from _training_process import TRAIN_MAIN, training_env
from safetensors.torch import load_file

from train import checkpoints as ckpt

STEPS = 12
ARGS = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
    "--model.ndf", "8", "--model.disc_layers", "3",
    "--data.train_length", "16", "--data.test_length", "4", "--data.textures", "procedural",
    "--train.eval_pairs", "2", "--train.eval_batch_size", "2", "--train.sample_rows", "1",
    "--train.batch_size", "2", "--train.log_every", "1", "--train.sample_every", "8",
    "--train.checkpoint_every", "1", "--train.checkpoint_limit", "2",
    "--max-steps", str(STEPS),
]  # fmt: skip
KILLS = 10
SEED = 14


def _start(run_dir: Path, tmp: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, TRAIN_MAIN, *ARGS, "--output-dir", str(run_dir)],
            cwd=tmp,
            env=training_env(tmp),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _check_folder(run_dir: Path) -> int | None:
    """Every checkpoint under its final name verifies; returns the newest step (None: none)."""
    steps = []
    for entry in sorted((run_dir / "checkpoints").glob("checkpoint_*")):
        assert not entry.name.endswith(".damaged"), f"a kill damaged {entry}"
        if re.fullmatch(r"checkpoint_\d{8}", entry.name):
            steps.append(ckpt.verify(entry).step)
    return max(steps) if steps else None


def test_killed_at_random_points_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    log = tmp_path / "straight.log"
    done = _start(straight, tmp_path, log).wait(timeout=600)
    assert done == 0, log.read_text()

    run_dir = tmp_path / "run"
    rng = random.Random(SEED)
    resumed_at = []
    for kill in range(KILLS):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        expected = _check_folder(run_dir)
        log = tmp_path / f"attempt_{kill}.log"
        process = _start(run_dir, tmp_path, log)
        if kill > 0 and rng.random() < 0.2:
            # During startup: imports, data, model, loading the checkpoint.
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            # Shortly after a checkpoint one or two steps on (the last kill: the final step),
            # i.e. mid-step, inside the next checkpoint's write, publish, rotation or final/.
            target = STEPS if kill == KILLS - 1 else min(STEPS, (expected or 0) + rng.randint(1, 2))
            deadline = time.monotonic() + 300
            while process.poll() is None and time.monotonic() < deadline:
                if (run_dir / "checkpoints" / ckpt.checkpoint_name(target)).is_dir():
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        text = log.read_text()
        assert process.returncode in (0, -signal.SIGKILL), text
        assert "Traceback" not in text and "skipped damaged" not in text, text
        match = re.search(r"resuming from \S+ at step (\d+)", text)
        if match:
            resumed_at.append(int(match.group(1)))
            assert int(match.group(1)) == expected, text
        _check_folder(run_dir)

    log = tmp_path / "final.log"
    expected = _check_folder(run_dir)
    assert _start(run_dir, tmp_path, log).wait(timeout=600) == 0, log.read_text()
    text = log.read_text()
    if expected is not None:
        assert f"at step {expected}" in text, text
    assert _check_folder(run_dir) == STEPS
    assert len(resumed_at) >= 3, f"too few kills after startup to test resume ({resumed_at})"

    ours, theirs = (load_file(str(d / "final" / "model.safetensors")) for d in (run_dir, straight))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6, msg=key)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in records if "loss/warp" in r]
    assert loss_steps == list(range(1, STEPS + 1)), loss_steps
