"""Run-folder guarantees (docs/training.md, "Run-folder guarantees"), second part: the documented
command and its launchers, and what a user brings (folders, flags, weights files, a full disk).
The first part, damage to checkpoints and the run folder, is test_run_folder_guarantees.py; the
tiny run both damage is in tests/_damaged_run.py and tests/train/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _damaged_run import TINY, Payload, checkpoint_dir, error_lines, one_error, pid_alive, truncate
from _training_process import TRAIN_MAIN, training_env

from train import checkpoints as ckpt
from train.errors import TrainingError
from train.run_folder import lock_run_folder

# ----------------------------------------------------------------------------- 2. the command


def _dynast_train() -> list[str]:
    """The installed `dynast-train` console script (pip install -e .)."""
    script = Path(sys.executable).parent / "dynast-train"
    if not script.is_file():
        found = shutil.which("dynast-train")
        if found is None:
            pytest.skip("dynast-train is not installed (pip install -e .)")
        script = Path(found)
    return [str(script)]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--no-such-flag", "1"], 2, "error: unknown argument '--no-such-flag'"),
        (["--model.image_size", "16", "--data.image_size", "16"], 2, "error: image 16x16"),
        (["--preset", "deepfashion-256", "--max-steps", "1"], 1, "error: data: DataConfig.root"),
    ],
)
def test_the_documented_command_prints_one_line_and_keeps_the_status(
    tmp_path, args, status, message
):
    result = subprocess.run(
        [*_dynast_train(), *args, "--output-dir", str(tmp_path / "run")],
        cwd=tmp_path,
        env=training_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one_error(result, status).startswith(message)
    assert result.stderr.strip() == error_lines(result)[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_accelerate_launch_quiet_prints_only_our_line(tmp_path):
    """`accelerate launch --quiet` (for several GPUs) shows only our line; Accelerate's launcher
    turns every failure into status 1 whatever the trainer's own status."""
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1",
         TRAIN_MAIN, "--no-such-flag", "1"],
        cwd=tmp_path, env=training_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one_error(result, 1).startswith("error: unknown argument '--no-such-flag'")
    assert "CalledProcessError" not in result.stderr


def test_two_processes_resume_past_a_damaged_random_state(tmp_path):
    """torchrun with 2 processes: the main process verifies and picks the checkpoint, the other
    finds the same one; each loads its own state (DDP-unwrapped names); rank 1's truncated random
    state is a warning, not a failure."""
    run_dir = tmp_path / "run"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        TRAIN_MAIN,
    ]
    args = [
        *TINY[: TINY.index("--train.batch_size")], "--train.batch_size", "2",
        "--train.checkpoint_every", "1", "--output-dir", str(run_dir),
    ]  # fmt: skip

    def launch(steps: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*torchrun, *args, "--max-steps", str(steps)],
            cwd=tmp_path, env=training_env(tmp_path), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    first = launch(1)
    assert first.returncode == 0, first.stderr
    damaged = checkpoint_dir(run_dir, 1) / "state" / "random_states_1.pkl"
    truncate(damaged)
    second = launch(2)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "at step 1" in out and f"warning: {damaged}" in out and "Traceback" not in out
    assert ckpt.verify(checkpoint_dir(run_dir, 2)).step == 2


# ----------------------------------------------------------------------------- 7. user's things


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (its DataLoader workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_trainer_killed_with_a_worker_leaves_no_stale_lock(tmp_path):
    """kill -9 of a trainer with one DataLoader worker: the orphaned worker outlives it for
    seconds, yet the run folder is free at once for the rerun."""
    from train.metrics_log import read_metrics

    run_dir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, TRAIN_MAIN, *TINY, "--output-dir", str(run_dir), "--max-steps", "10000",
         "--train.num_workers", "1", "--train.log_every", "1"],
        cwd=tmp_path, env=training_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        # A logged step: the worker has been loading batches for a while, not just forked.
        while time.monotonic() < deadline and not (
            workers and any(r.get("step", 0) >= 1 for r in read_metrics(run_dir))
        ):
            assert trainer.poll() is None, "the trainer ended early"
            workers = workers or _children(trainer.pid)
            time.sleep(0.1)
        assert workers, "no DataLoader worker started"
        trainer.kill()
        trainer.wait()
        lock_run_folder(run_dir).close()  # at once: the lock died with the trainer
        assert any(pid_alive(w) for w in workers), "the worker ended first: nothing was tested"
    finally:
        trainer.kill()
        for worker in workers:
            if pid_alive(worker):
                os.kill(worker, signal.SIGKILL)


def test_a_garbled_metrics_line_is_dropped_with_a_warning_on_resume(tmp_path):
    """What a resume does with metrics.jsonl (`MetricsLog` as `train` opens it): a line that is
    not a JSON object is dropped and named, not a traceback; a torn last line goes silently."""
    from train.metrics_log import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 0, "a": 1}', '{"step": 2, "lo', "[3]", '{"step": 4, "a": 2}', '{"step": 6']
    path.write_text("\n".join(lines) + "\n")
    said: list[str] = []
    MetricsLog(tmp_path, keep_through=4, say=said.append).close()
    assert said == [
        f"warning: {path}:2: not a JSON object, dropped ({lines[1]!r})",
        f"warning: {path}:3: not a JSON object, dropped ('[3]')",
    ]
    assert read_metrics(tmp_path) == [{"step": 0, "a": 1}, {"step": 4, "a": 2}]


def test_training_into_a_weights_folder_is_refused_and_writes_nothing(tmp_path):
    import train.loop
    from dynast.generator import Generator
    from dynast.io import save_pretrained
    from train.main import resolve_config

    cfg, _ = resolve_config([*TINY, "--max-steps", "2"])
    weights = save_pretrained(Generator(cfg.model), tmp_path / "weights")
    before = _snapshot(weights)
    cfg, _ = resolve_config([*TINY, "--max-steps", "2", "--output-dir", str(weights)])
    with pytest.raises(TrainingError, match=r"--output-dir .*weights holds config\.json") as info:
        train.loop.train(cfg)
    assert "model.safetensors" in str(info.value) and "not a run folder" in str(info.value)
    assert _snapshot(weights) == before and not (weights / "run.lock").exists()


def test_a_finished_run_without_checkpoints_refuses_another_config(run_dir, monkeypatch):
    """final/ and metrics.jsonl of a run whose checkpoints/ was deleted: another config is
    refused, naming the difference, before anything is replaced."""
    import train.loop
    from train.main import resolve_config

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the config was checked")

    monkeypatch.setattr(train.loop, "Generator", no_model)
    shutil.rmtree(run_dir / "checkpoints")
    before = _snapshot(run_dir)
    args = [*TINY, "--output-dir", str(run_dir), "--max-steps", "4", "--model.ngf", "4"]
    cfg, _ = resolve_config(args)
    with pytest.raises(TrainingError, match=r"config differs from this one \(model\.ngf: 8 -> 4"):
        train.loop.train(cfg)
    after = _snapshot(run_dir)
    assert {p: b for p, b in after.items() if p.name != "run.lock"} == {
        p: b for p, b in before.items() if p.name != "run.lock"
    }


def test_a_non_utf8_output_dir_is_one_error_before_anything_is_written(tmp_path):
    import train.loop
    from train.main import resolve_config

    parent = tmp_path / "runs"
    parent.mkdir()
    name = os.fsdecode(str(parent).encode() + b"/run-\xff")
    cfg, _ = resolve_config([*TINY, "--max-steps", "2", "--output-dir", name])
    with pytest.raises(TrainingError, match="not valid UTF-8"):
        train.loop.train(cfg)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--train.seed", "4294967296"], ["train.seed", "4294967295"]),
        (["--max-steps", "10", "--train.max_steps", "20"], ["--max-steps", "--train.max_steps"]),
        (["--output-dir", "a", "--train.output_dir", "b"], ["--output-dir", "--train.output_dir"]),
    ],
)
def test_out_of_range_seed_and_conflicting_flags_are_one_error_line(capsys, args, names):
    from train.main import main

    assert main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(name in err[0] for name in names), err[0]


def test_vgg_weights_that_do_not_load_are_one_error_naming_the_file(tmp_path):
    import torch

    from train.loop import find_vgg, load_vgg
    from train.main import resolve_config

    text = tmp_path / "vgg19.pth"
    text.write_text("these are not weights\n")
    refused = tmp_path / "vgg19-pickle.pth"
    marker = tmp_path / "payload-ran"
    torch.save({"features.0.weight": Payload(marker)}, refused)
    for path in (text, refused):
        cfg, _ = resolve_config([*TINY, "--vgg-weights", str(path)])
        with pytest.raises(TrainingError, match=r"^--vgg-weights ") as info:
            load_vgg(find_vgg(cfg)[0])
        assert str(path) in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not marker.exists()


def test_a_full_disk_during_a_checkpoint_names_the_device_and_what_was_kept(run_dir, monkeypatch):
    """Fault injection: the error torch.save's zip writer raises on a full device (its text
    names no cause) while the run's filesystem reports no space left; then an OSError ENOSPC."""
    import errno

    from train import loop

    staging = ckpt.staging_dir(run_dir, 6)
    staging.mkdir()
    real_statvfs = os.statvfs

    def full(path):
        s = real_statvfs(path)
        return os.statvfs_result(
            (s.f_bsize, s.f_frsize, s.f_blocks, 0, 0, s.f_files, s.f_ffree, s.f_favail,
             s.f_flag, s.f_namemax)
        )  # fmt: skip

    with monkeypatch.context() as patch:
        patch.setattr(os, "statvfs", full)
        with pytest.raises(TrainingError) as info:
            with loop.writing(run_dir, staging, loop.WRITE_ERRORS):
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7")
    message = str(info.value)
    assert message.startswith("no space left on ") and "unexpected pos" in message, message
    assert f"while writing {staging}" in message
    assert "kept unchanged: checkpoint_00000004 (step 4) and final/" in message
    with pytest.raises(TrainingError, match=r"^no space left on .*kept unchanged: checkpoint_0+4"):
        with loop.writing(run_dir, staging, loop.WRITE_ERRORS):
            raise OSError(errno.ENOSPC, "No space left on device", str(staging / "x.bin"))
