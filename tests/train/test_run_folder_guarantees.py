"""Run-folder guarantees (docs/training.md, "Run-folder guarantees"): every test creates one kind
of damage or bad input and checks the outcome. Damage to a real checkpoint of a tiny fp16 run
(written once per module) is checked through `select_resume` directly where that says it all, and
through the training command as a subprocess where the whole run matters."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _damaged_run import (
    TINY,
    Payload,
    checkpoint_dir,
    garble,
    one_error,
    pid_alive,
    train_process,
    truncate,
)
from _training_process import TRAIN_MAIN, training_env
from PIL import Image

from train import checkpoints as ckpt
from train.errors import TrainingError
from train.run_folder import (
    check_output_paths,
    lock_run_folder,
    recover_final,
    write_final,
)

# ------------------------------------------------------------------------- 1. damaged checkpoints


DAMAGE = {
    "truncated-state-model": ("state/model.safetensors", truncate),
    "garbled-generator": ("generator/model.safetensors", garble),
    "truncated-optimizer": ("state/optimizer.bin", truncate),
    "missing-state": ("state", lambda p: shutil.rmtree(p)),
    "missing-manifest": ("manifest.json", lambda p: p.unlink()),
    "garbled-manifest": ("manifest.json", truncate),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_renamed_and_reported(run_dir, name):
    rel, damage = DAMAGE[name]
    damage(checkpoint_dir(run_dir, 4) / rel)
    said: list[str] = []
    chosen = ckpt.select_resume(run_dir, said.append)
    assert chosen.step == 2 and chosen.folder == checkpoint_dir(run_dir, 2)
    assert len(said) == 1 and "skipped damaged checkpoint checkpoint_00000004" in said[0]
    assert rel.split("/")[0] in said[0], said[0]  # names what is wrong
    kept = run_dir / "checkpoints" / "checkpoint_00000004.damaged"
    assert kept.is_dir() and not checkpoint_dir(run_dir, 4).exists()
    assert "kept as checkpoint_00000004.damaged" in said[0]
    # Left alone from now on: not a checkpoint, not a leftover.
    assert ckpt.remove_partial(run_dir) == [] and kept.is_dir()
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2]


def test_no_verifying_checkpoint_is_an_error_that_renames_nothing(run_dir):
    truncate(checkpoint_dir(run_dir, 4) / "state" / "model.safetensors")
    truncate(checkpoint_dir(run_dir, 2) / "state" / "optimizer.bin")
    with pytest.raises(TrainingError, match="no checkpoint verifies") as info:
        ckpt.select_resume(run_dir, print)
    assert "model.safetensors" in str(info.value) and "optimizer.bin" in str(info.value)
    assert checkpoint_dir(run_dir, 4).is_dir() and checkpoint_dir(run_dir, 2).is_dir()


@pytest.mark.parametrize("damage", ["lost", "truncated"])
def test_damaged_random_state_is_a_warning_naming_the_file(run_dir, damage):
    path = checkpoint_dir(run_dir, 4) / "state" / "random_states_0.pkl"
    path.unlink() if damage == "lost" else truncate(path)
    said: list[str] = []
    chosen = ckpt.select_resume(run_dir, said.append)
    assert chosen.step == 4 and said == []  # still the checkpoint to resume from
    assert len(chosen.warnings) == 1
    assert chosen.warnings[0].startswith(f"warning: {path}: ")


def test_resume_skips_a_damaged_checkpoint_end_to_end(run_dir, tmp_path):
    """Through the training command: one line names the skipped checkpoint and the file, the run
    resumes from the older one, and the damaged one stays on disk, renamed."""
    truncate(checkpoint_dir(run_dir, 4) / "state" / "model.safetensors")
    (checkpoint_dir(run_dir, 2) / "state" / "random_states_0.pkl").unlink()
    result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    skipped = [line for line in out.splitlines() if "skipped damaged checkpoint" in line]
    assert len(skipped) == 1 and "state/model.safetensors" in skipped[0], out
    assert "random_states_0.pkl" in out and "warning:" in out
    assert "at step 2" in out and "Traceback" not in out
    assert (run_dir / "checkpoints" / "checkpoint_00000004.damaged").is_dir()
    assert ckpt.verify(checkpoint_dir(run_dir, 4)).step == 4  # rewritten, whole


# ----------------------------------------------------------------------------- 3. no pickle runs


def test_a_planted_pickle_in_the_checkpoint_does_not_run(run_dir, tmp_path):
    marker = tmp_path / "payload-ran"
    state = checkpoint_dir(run_dir, 4) / "state"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "scaler.pt"):
        # Accelerate's own names for registered objects and its loss scaler.
        with open(state / name, "wb") as f:
            pickle.dump(Payload(marker), f)
    result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "at step 4" in result.stdout + result.stderr
    assert not marker.exists(), "a pickle from the run folder was executed"
    scalers = json.loads((checkpoint_dir(run_dir, 6) / ckpt.SCALERS_FILE).read_text())
    assert scalers["generator"]["scale"] > 0 and scalers["discriminator"]["scale"] > 0


def test_a_planted_pickle_as_random_state_does_not_run(run_dir, tmp_path):
    """Accelerate reads random states with its `load` (torch.load, weights_only=True): refused,
    not run; the manifest flags the file as changed."""
    import torch
    from accelerate.utils import load

    marker = tmp_path / "payload-ran"
    path = checkpoint_dir(run_dir, 4) / "state" / "random_states_0.pkl"
    torch.save({"random_state": Payload(marker)}, path)
    chosen = ckpt.select_resume(run_dir, print)
    assert chosen.step == 4 and str(path) in chosen.warnings[0]
    with pytest.raises(pickle.UnpicklingError):
        load(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- progress.json


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"step": "four"}, "step must be an integer"),
        ({"step": 4.5}, "step must be an integer"),
        ({"step": 3}, "differs from its folder checkpoint_00000004"),
        ({"world_size": 0}, "world_size and batch_size must be >= 1"),
    ],
)
def test_hand_edited_progress_is_refused_naming_the_file(run_dir, edit, message):
    path = checkpoint_dir(run_dir, 4) / ckpt.PROGRESS_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(TrainingError, match=message) as info:
        ckpt.select_resume(run_dir, print)
    assert str(path) in str(info.value)
    assert checkpoint_dir(run_dir, 4).is_dir()  # refused, not renamed: someone meant something


def test_max_steps_below_the_checkpoint_is_refused_and_config_kept(run_dir, tmp_path):
    before = (run_dir / "config.json").read_bytes()
    result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "3"], tmp_path)
    error = one_error(result)
    assert "--max-steps 3 is below the step of the newest checkpoint" in error
    assert "at step 4" in error
    assert (run_dir / "config.json").read_bytes() == before


# ----------------------------------------------------------------------------- rotation


def test_rotation_finishes_half_deleted_checkpoints(tmp_path):
    def fake(step: int, complete: bool = True) -> Path:
        folder = ckpt.staging_dir(tmp_path, step)
        folder.mkdir(parents=True)
        (folder / "state").mkdir()
        (folder / "state" / "x.bin").write_bytes(b"x")
        ckpt.write_progress(
            folder,
            ckpt.Progress(
                step=step, epoch=0, batch_in_epoch=step, world_size=1, batch_size=2, elapsed_s=1.0
            ),
        )
        final = ckpt.publish(folder)
        if not complete:
            (final / ckpt.PROGRESS_FILE).unlink()  # what an rmtree cut short leaves
        return final

    half = fake(1, complete=False)
    for step in (2, 4, 6):
        fake(step)
    removed = ckpt.rotate(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint_00000001", "checkpoint_00000002"]
    assert not half.exists()
    # A deletion interrupted after the rename is finished at the next start.
    real_rmtree = shutil.rmtree
    calls = []

    def dies(path, *args, **kwargs):
        calls.append(Path(path))
        raise KeyboardInterrupt  # killed mid-delete

    fake(8)
    shutil.rmtree = dies
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.rotate(tmp_path, 2)
    finally:
        shutil.rmtree = real_rmtree
    assert calls[0].name == "checkpoint_00000004.deleting" and calls[0].exists()
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [6, 8]
    assert ckpt.remove_partial(tmp_path) == [calls[0]] and not calls[0].exists()


# ----------------------------------------------------------------------------- 4. one writer


def test_second_run_on_a_locked_folder_names_the_holder(run_dir, tmp_path):
    holder = lock_run_folder(run_dir)
    try:
        with pytest.raises(TrainingError, match=f"pid {os.getpid()}"):
            lock_run_folder(run_dir)
        before = (run_dir / "config.json").read_bytes()
        result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
        error = one_error(result)
        assert f"in use by another training run (pid {os.getpid()}" in error
        assert str(run_dir / "run.lock") in error
        assert (run_dir / "config.json").read_bytes() == before
        assert not checkpoint_dir(run_dir, 6).exists()
    finally:
        holder.close()
    lock_run_folder(run_dir).close()  # released with its file: the next run may go


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_a_killed_launcher_takes_its_trainer_with_it(tmp_path):
    """`accelerate launch` killed with SIGKILL: the trainer gets SIGTERM (PR_SET_PDEATHSIG) and
    ends, releasing the run folder."""
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", TRAIN_MAIN,
         *TINY, "--output-dir", str(run_dir), "--max-steps", "10000"],
        cwd=tmp_path, env=training_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    lock, trainer = run_dir / "run.lock", None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and trainer is None:
            text = lock.read_text().strip() if lock.exists() else ""
            trainer = int(text) if text else None
            time.sleep(0.2)
        assert trainer is not None and trainer != launcher.pid, "the trainer never started"
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pid_alive(trainer):
            time.sleep(0.2)
        assert not pid_alive(trainer), "the trainer outlived its launcher"
    finally:
        launcher.kill()
        if trainer is not None and pid_alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    lock_run_folder(run_dir).close()


# ----------------------------------------------------------------------------- 5. write failures


def test_output_paths_are_checked_at_start(run_dir, tmp_path):
    shutil.rmtree(run_dir / "samples")
    (run_dir / "samples").write_text("a file where the sample grids go")
    with pytest.raises(TrainingError, match="samples exists and is not a folder"):
        check_output_paths(run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    result = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert str(run_dir / "samples") in one_error(result)
    after = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name != "run.lock"} == {
        p: t for p, t in before.items() if p.name != "run.lock"
    }, "a refused run changed the run folder"


def _limit_file_size() -> None:
    # Files above 200 kB cannot grow (EFBIG, as a full disk would refuse): the sample grids and
    # logs still fit, a checkpoint's weights do not.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_write_failure_mid_run_keeps_the_last_checkpoint_and_final(run_dir, tmp_path):
    final_before = {p.name: p.read_bytes() for p in (run_dir / "final").iterdir()}
    result = train_process(
        [*TINY, "--output-dir", str(run_dir), "--max-steps", "6"],
        tmp_path,
        preexec_fn=_limit_file_size,
    )
    error = one_error(result)
    assert "write failed" in error and "checkpoint_00000006" in error, error
    assert ckpt.verify(checkpoint_dir(run_dir, 4)).step == 4
    assert {p.name: p.read_bytes() for p in (run_dir / "final").iterdir()} == final_before
    # The next run (disk space back) clears the half-written checkpoint and finishes.
    again = train_process([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "checkpoint_00000006.tmp" in again.stdout + again.stderr
    assert ckpt.verify(checkpoint_dir(run_dir, 6)).step == 6


def test_final_is_written_beside_the_old_one_and_swapped(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "w").write_text("old")

    def fails(folder: Path) -> None:
        folder.mkdir()
        (folder / "w").write_text("half")
        raise OSError(28, "No space left on device", str(folder / "w"))

    with pytest.raises(OSError):
        write_final(tmp_path, fails)
    assert (final / "w").read_text() == "old"
    assert recover_final(tmp_path) == [f"removed incomplete {tmp_path / 'final.tmp'}"]

    def writes(folder: Path) -> None:
        folder.mkdir()
        (folder / "w").write_text("new")

    write_final(tmp_path, writes)
    assert (final / "w").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    # Killed between the two renames: final/ is missing, final.old/ is put back.
    os.replace(final, tmp_path / "final.old")
    assert recover_final(tmp_path) == [f"restored {final} from {tmp_path / 'final.old'}"]
    assert (final / "w").read_text() == "new"


# ----------------------------------------------------------------------------- 6. smaller cases


def test_discriminator_too_small_for_the_images_fails_the_dry_run(capsys):
    from train.main import main

    assert main(["--model.image_size", "16", "--data.image_size", "16", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: image 16x16 is too small for the discriminator"), err
    assert main(["--model.image_size", "32", "--data.image_size", "32", "--dry-run"]) == 2
    capsys.readouterr()
    args = ["--model.image_size", "32", "--data.image_size", "32", "--model.disc_layers", "3"]
    assert main([*args, "--dry-run"]) == 0


def test_missing_data_root_fails_before_the_model_is_built_and_writes_nothing(
    tmp_path, monkeypatch
):
    import train.loop
    from train.main import resolve_config

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(train.loop, "Generator", no_model)
    monkeypatch.setattr(train.loop, "MultiscaleDiscriminator", no_model)
    run_dir = tmp_path / "run"
    cfg, _ = resolve_config(["--preset", "deepfashion-256", "--output-dir", str(run_dir)])
    with pytest.raises(TrainingError, match=r"data: DataConfig.root is required"):
        train.loop.train(cfg)
    assert not run_dir.exists()


def _folder_dataset(root: Path, *, missing_exemplar: bool, bad_label: bool) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            root / "images" / f"p{i}.png"
        )
        label = rng.integers(0, 4, (8, 8), dtype=np.uint8)
        if bad_label and i == 2:
            label[0, 0] = 9
        Image.fromarray(label, mode="L").save(root / "labels" / f"p{i}.png")
    if missing_exemplar:
        (root / "images" / "p1.png").unlink()
    (root / "pairs_train.csv").write_text("target,exemplar\np0,p2\n\np0,p1\n")


@pytest.mark.parametrize("kind", ["missing-exemplar", "bad-label"])
def test_data_errors_name_the_csv_line(tmp_path, kind):
    from dynast.data import DataConfig, build_dataset

    root = tmp_path / "data"
    missing = kind == "missing-exemplar"
    _folder_dataset(root, missing_exemplar=missing, bad_label=not missing)
    cfg = DataConfig(kind="folder", root=str(root), image_size=8, num_classes=4)
    csv = root / "pairs_train.csv"
    if missing:
        with pytest.raises(FileNotFoundError, match=f"^{csv}:4: .*p1"):
            build_dataset(cfg, "train")
        return
    dataset = build_dataset(cfg, "train")
    dataset[1]  # p0 -> p1: fine
    with pytest.raises(ValueError, match=f"^{csv}:2: .*p2.png"):
        dataset[0]


# ----------------------------------------------------------------------------- eval side


def test_eval_model_with_damaged_weights_is_one_error_line(base, tmp_path, capsys):
    from eval.cli import main as eval_main
    from eval.generate import main as generate_main

    model = tmp_path / "model"
    shutil.copytree(base / "final", model)
    weights = model / "model.safetensors"
    for damage in (truncate, garble):
        shutil.copy(base / "final" / "model.safetensors", weights)
        damage(weights)
        if damage is garble:
            # Garbled inside the header: the header no longer parses.
            data = bytearray(weights.read_bytes())
            data[8:40] = b"\x00" * 32
            weights.write_bytes(bytes(data))
        assert generate_main(["--model", str(model), "--out", str(tmp_path / "g"), "--cpu"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dynast-generate: error: ")
        assert str(weights) in err[0] and "damaged" in err[0]
        assert eval_main(["corr", "--model", str(model), "--count", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(weights) in err[0] and "error:" in err[0]


def test_fid_folder_vs_folder_of_another_size_is_refused(tmp_path, capsys):
    from eval.cli import main as eval_main

    for name, size in (("real", 64), ("fake", 32)):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (size, size), (i * 50, 0, 0)).save(tmp_path / name / f"{i}.png")
    status = eval_main(
        ["calc", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
         "--metrics", "fid"]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert "fid compares sets at one size" in err and "64x64" in err and "32x32" in err


@pytest.mark.parametrize("field", ["mu", "sigma"])
def test_non_finite_fid_statistics_are_refused_at_load(tmp_path, field):
    from eval.fid import FeatureStats, load_stats, save_stats

    mu, sigma = np.zeros(4), np.eye(4)
    (mu if field == "mu" else sigma)[1] = np.nan
    path = tmp_path / "stats.npz"
    save_stats(path, FeatureStats(mu, sigma, 10, {"image_size": [8, 8]}))
    with pytest.raises(ValueError, match=f"{field} holds non-finite values") as info:
        load_stats(path)
    assert str(path) in str(info.value)
