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

TINY = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
    "--model.ndf", "8", "--model.disc_layers", "3",
    "--data.train_length", "64", "--data.test_length", "8", "--data.textures", "procedural",
    "--train.eval_pairs", "4", "--train.eval_batch_size", "4", "--train.sample_rows", "2",
    "--train.log_every", "2", "--train.sample_every", "2", "--train.checkpoint_every", "2",
    "--train.checkpoint_limit", "2", "--train.batch_size", "4", "--mixed-precision", "fp16",
]  # fmt: skip


def _train(args: list[str], tmp: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, TRAIN_MAIN, *args],
        cwd=tmp,
        env=training_env(tmp),
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _one_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    errors = _errors(result)
    assert result.returncode == status, f"exit {result.returncode}\n{result.stderr}"
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 4-step fp16 run: checkpoints at steps 2 and 4, final/."""
    tmp = tmp_path_factory.mktemp("guarantees")
    run_dir = tmp / "run"
    result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "4"], tmp)
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture
def run_dir(base, tmp_path) -> Path:
    """A private copy of the base run."""
    copy = tmp_path / "run"
    shutil.copytree(base, copy)
    (copy / "config.json").write_text(
        (copy / "config.json").read_text().replace(str(base), str(copy))
    )
    return copy


def _checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / ckpt.checkpoint_name(step)


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------- 1. damaged checkpoints


DAMAGE = {
    "truncated-state-model": ("state/model.safetensors", _truncate),
    "garbled-generator": ("generator/model.safetensors", _garble),
    "truncated-optimizer": ("state/optimizer.bin", _truncate),
    "missing-state": ("state", lambda p: shutil.rmtree(p)),
    "missing-manifest": ("manifest.json", lambda p: p.unlink()),
    "garbled-manifest": ("manifest.json", _truncate),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_skipped_renamed_and_reported(run_dir, name):
    rel, damage = DAMAGE[name]
    damage(_checkpoint(run_dir, 4) / rel)
    said: list[str] = []
    chosen = ckpt.select_resume(run_dir, said.append)
    assert chosen.step == 2 and chosen.folder == _checkpoint(run_dir, 2)
    assert len(said) == 1 and "skipped damaged checkpoint checkpoint_00000004" in said[0]
    assert rel.split("/")[0] in said[0], said[0]  # names what is wrong
    kept = run_dir / "checkpoints" / "checkpoint_00000004.damaged"
    assert kept.is_dir() and not _checkpoint(run_dir, 4).exists()
    assert "kept as checkpoint_00000004.damaged" in said[0]
    # Left alone from now on: not a checkpoint, not a leftover.
    assert ckpt.remove_partial(run_dir) == [] and kept.is_dir()
    assert [s for s, _ in ckpt.complete_checkpoints(run_dir)] == [2]


def test_no_verifying_checkpoint_is_an_error_that_renames_nothing(run_dir):
    _truncate(_checkpoint(run_dir, 4) / "state" / "model.safetensors")
    _truncate(_checkpoint(run_dir, 2) / "state" / "optimizer.bin")
    with pytest.raises(TrainingError, match="no checkpoint verifies") as info:
        ckpt.select_resume(run_dir, print)
    assert "model.safetensors" in str(info.value) and "optimizer.bin" in str(info.value)
    assert _checkpoint(run_dir, 4).is_dir() and _checkpoint(run_dir, 2).is_dir()


@pytest.mark.parametrize("damage", ["lost", "truncated"])
def test_damaged_random_state_is_a_warning_naming_the_file(run_dir, damage):
    path = _checkpoint(run_dir, 4) / "state" / "random_states_0.pkl"
    path.unlink() if damage == "lost" else _truncate(path)
    said: list[str] = []
    chosen = ckpt.select_resume(run_dir, said.append)
    assert chosen.step == 4 and said == []  # still the checkpoint to resume from
    assert len(chosen.warnings) == 1
    assert chosen.warnings[0].startswith(f"warning: {path}: ")


def test_resume_skips_a_damaged_checkpoint_end_to_end(run_dir, tmp_path):
    """Through the training command: one line names the skipped checkpoint and the file, the run
    resumes from the older one, and the damaged one stays on disk, renamed."""
    _truncate(_checkpoint(run_dir, 4) / "state" / "model.safetensors")
    (_checkpoint(run_dir, 2) / "state" / "random_states_0.pkl").unlink()
    result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    skipped = [line for line in out.splitlines() if "skipped damaged checkpoint" in line]
    assert len(skipped) == 1 and "state/model.safetensors" in skipped[0], out
    assert "random_states_0.pkl" in out and "warning:" in out
    assert "at step 2" in out and "Traceback" not in out
    assert (run_dir / "checkpoints" / "checkpoint_00000004.damaged").is_dir()
    assert ckpt.verify(_checkpoint(run_dir, 4)).step == 4  # rewritten, whole


# ----------------------------------------------------------------------------- 3. no pickle runs


class _Payload:
    """Unpickling this runs `open(marker, "w")`: what a planted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_the_checkpoint_does_not_run(run_dir, tmp_path):
    marker = tmp_path / "payload-ran"
    state = _checkpoint(run_dir, 4) / "state"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "scaler.pt"):
        # Accelerate's own names for registered objects and its loss scaler.
        with open(state / name, "wb") as f:
            pickle.dump(_Payload(marker), f)
    result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "at step 4" in result.stdout + result.stderr
    assert not marker.exists(), "a pickle from the run folder was executed"
    scalers = json.loads((_checkpoint(run_dir, 6) / ckpt.SCALERS_FILE).read_text())
    assert scalers["generator"]["scale"] > 0 and scalers["discriminator"]["scale"] > 0


def test_a_planted_pickle_as_random_state_does_not_run(run_dir, tmp_path):
    """Accelerate reads random states with its `load` (torch.load, weights_only=True): refused,
    not run; the manifest flags the file as changed."""
    import torch
    from accelerate.utils import load

    marker = tmp_path / "payload-ran"
    path = _checkpoint(run_dir, 4) / "state" / "random_states_0.pkl"
    torch.save({"random_state": _Payload(marker)}, path)
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
    path = _checkpoint(run_dir, 4) / ckpt.PROGRESS_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    with pytest.raises(TrainingError, match=message) as info:
        ckpt.select_resume(run_dir, print)
    assert str(path) in str(info.value)
    assert _checkpoint(run_dir, 4).is_dir()  # refused, not renamed: someone meant something


def test_max_steps_below_the_checkpoint_is_refused_and_config_kept(run_dir, tmp_path):
    before = (run_dir / "config.json").read_bytes()
    result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "3"], tmp_path)
    error = _one_error(result)
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
        result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
        error = _one_error(result)
        assert f"in use by another training run (pid {os.getpid()}" in error
        assert str(run_dir / "run.lock") in error
        assert (run_dir / "config.json").read_bytes() == before
        assert not _checkpoint(run_dir, 6).exists()
    finally:
        holder.close()
    lock_run_folder(run_dir).close()  # released with its file: the next run may go


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


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
        while time.monotonic() < deadline and _pid_alive(trainer):
            time.sleep(0.2)
        assert not _pid_alive(trainer), "the trainer outlived its launcher"
    finally:
        launcher.kill()
        if trainer is not None and _pid_alive(trainer):
            os.kill(trainer, signal.SIGKILL)
    lock_run_folder(run_dir).close()


# ----------------------------------------------------------------------------- 5. write failures


def test_output_paths_are_checked_at_start(run_dir, tmp_path):
    shutil.rmtree(run_dir / "samples")
    (run_dir / "samples").write_text("a file where the sample grids go")
    with pytest.raises(TrainingError, match="samples exists and is not a folder"):
        check_output_paths(run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    result = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert str(run_dir / "samples") in _one_error(result)
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
    result = _train(
        [*TINY, "--output-dir", str(run_dir), "--max-steps", "6"],
        tmp_path,
        preexec_fn=_limit_file_size,
    )
    error = _one_error(result)
    assert "write failed" in error and "checkpoint_00000006" in error, error
    assert ckpt.verify(_checkpoint(run_dir, 4)).step == 4
    assert {p.name: p.read_bytes() for p in (run_dir / "final").iterdir()} == final_before
    # The next run (disk space back) clears the half-written checkpoint and finishes.
    again = _train([*TINY, "--output-dir", str(run_dir), "--max-steps", "6"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "checkpoint_00000006.tmp" in again.stdout + again.stderr
    assert ckpt.verify(_checkpoint(run_dir, 6)).step == 6


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
    for damage in (_truncate, _garble):
        shutil.copy(base / "final" / "model.safetensors", weights)
        damage(weights)
        if damage is _garble:
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
    assert _one_error(result, status).startswith(message)
    assert result.stderr.strip() == _errors(result)[0], result.stderr
    assert not (tmp_path / "run").exists()


def test_accelerate_launch_quiet_prints_only_our_line(tmp_path):
    """`accelerate launch --quiet` (for several GPUs) shows only our line; Accelerate's launcher
    turns every failure into status 1 whatever the trainer's own status."""
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1",
         TRAIN_MAIN, "--no-such-flag", "1"],
        cwd=tmp_path, env=training_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert _one_error(result, 1).startswith("error: unknown argument '--no-such-flag'")
    assert "CalledProcessError" not in result.stderr


def test_two_processes_resume_past_a_damaged_random_state(tmp_path):
    """torchrun with 2 processes: the main process verifies and picks the checkpoint, the other
    finds the same one; each loads its own state (DDP-unwrapped names); rank 1's truncated random
    state is a warning, not a failure."""
    run_dir = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", TRAIN_MAIN]
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
    damaged = _checkpoint(run_dir, 1) / "state" / "random_states_1.pkl"
    _truncate(damaged)
    second = launch(2)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "at step 1" in out and f"warning: {damaged}" in out and "Traceback" not in out
    assert ckpt.verify(_checkpoint(run_dir, 2)).step == 2


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
        assert any(_pid_alive(w) for w in workers), "the worker ended first: nothing was tested"
    finally:
        trainer.kill()
        for worker in workers:
            if _pid_alive(worker):
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
    torch.save({"features.0.weight": _Payload(marker)}, refused)
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
