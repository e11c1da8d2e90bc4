"""The release's training recipe in the real-data presets, the epoch-based schedule, the
release's effective loss weights, and `--train.init_from` (a new run starting from given
weights, optimizers fresh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _training_process import REPO, TRAIN_MAIN, training_env
from safetensors.torch import load_file

from dynast.convert import save_discriminator
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator
from dynast.io import save_pretrained
from train.config import RELEASE_LOSS, RELEASED_PRESETS, TrainConfig, run_preset
from train.losses import normalised_sum
from train.main import resolve_config

REAL_PRESETS = sorted(RELEASED_PRESETS)


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_real_data_presets_use_the_release_recipe(name):
    tc = run_preset(name).train
    assert (tc.g_adam_eps, tc.d_adam_eps) == (1e-3, 1e-8)
    assert (tc.max_epochs, tc.decay_epochs) == (100, 20)
    assert tc.loss == RELEASE_LOSS
    assert (tc.loss.warp, tc.loss.vgg, tc.loss.gan, tc.loss.discriminator) == (200, 2, 10, 10)
    assert tc.sync_batch_norm is False and tc.mixed_precision == "bf16"
    assert (tc.lr * tc.g_lr_ratio, tc.lr * tc.d_lr_ratio) == (5e-5, 2e-4)  # release's TTUR
    assert tc.batch_size == 5


def test_epoch_schedule_becomes_steps_once_the_dataset_size_is_known():
    tc = TrainConfig(max_epochs=10, decay_epochs=2)
    assert tc.schedule(7) == (70, 14)
    factors = [tc.lr_factor(s, 7) for s in (0, 55, 56, 63, 69)]
    assert factors == [1.0, 1.0, 1.0, 0.5, pytest.approx(1 / 14)]
    assert TrainConfig(max_steps=9, decay_steps=3).schedule(1000) == (9, 3)
    with pytest.raises(ValueError, match=r"decay_epochs \(5\) exceeds max_epochs \(0\)"):
        TrainConfig(decay_epochs=5)
    with pytest.raises(ValueError, match="g_adam_eps"):
        TrainConfig(g_adam_eps=0.0)
    with pytest.raises(ValueError, match="sync_batch_norm"):
        TrainConfig(sync_batch_norm="yes")


def test_release_normalisation_is_a_fifth_of_ours_at_five_per_gpu():
    """The release's `mean(l1 * self_ref / (sum(self_ref) + 1e-5))` over 5 samples on one GPU
    against our global mean over samples with a target: the factor that turns its nominal
    1000 / 10 into the effective 200 / 2 of RELEASE_LOSS."""
    torch.manual_seed(0)
    per_pixel = torch.rand(5, 3, 8, 8)
    self_ref = torch.ones(5)
    weights = (self_ref / (self_ref.sum() + 1e-5)).view(-1, 1, 1, 1)
    release = torch.mean(per_pixel * weights)
    ours = normalised_sum(per_pixel.mean(dim=(1, 2, 3)), self_ref, self_ref.sum(), 1)
    assert float(release / ours) == pytest.approx(0.2, rel=1e-5)
    assert RELEASE_LOSS.warp == 1000 * 0.2 and RELEASE_LOSS.vgg == 10 * 0.2


TINY = [
    "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
    "--model.ndf", "8", "--model.disc_layers", "3",
    "--data.train_length", "64", "--data.test_length", "8", "--data.textures", "procedural",
    "--train.eval_pairs", "4", "--train.eval_batch_size", "4", "--train.sample_rows", "2",
    "--train.sample_every", "1000", "--train.checkpoint_every", "1000",
]  # fmt: skip


def test_init_from_starts_a_new_epoch_based_run_from_given_weights(tmp_path):
    cfg, _ = resolve_config(TINY)
    torch.manual_seed(123)
    source = tmp_path / "weights"
    save_pretrained(Generator(cfg.model), source)
    save_discriminator(MultiscaleDiscriminator(cfg.model), source)
    run_dir = tmp_path / "run"
    # lr this small leaves the weights where they started, so the run's output must equal them.
    args = [*TINY, "--train.init_from", str(source), "--train.lr", "1e-12"]
    args += ["--train.max_epochs", "1", "--train.batch_size", "16", "--output-dir", str(run_dir)]
    result = subprocess.run(
        [sys.executable, TRAIN_MAIN, *args],
        cwd=tmp_path,
        env=training_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "initialised from" in result.stdout + result.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["init_from"] == str(source)
    progress = json.loads(
        (run_dir / "checkpoints" / "checkpoint_00000004" / "progress.json").read_text()
    )
    assert progress["step"] == 4  # 1 epoch = 64 samples // 16 per step
    start_g = load_file(str(source / "model.safetensors"))
    final_g = load_file(str(run_dir / "final" / "model.safetensors"))
    name = "transformer.0.0.to_q.weight"
    assert torch.allclose(final_g[name], start_g[name], atol=1e-6)
    state = run_dir / "checkpoints" / "checkpoint_00000004" / "state"
    start_d = load_file(str(source / "discriminator.safetensors"))
    final_d = load_file(str(state / "model_1.safetensors"))
    name = "scales.0.layers.0.0.weight"
    assert torch.allclose(final_d[name], start_d[name], atol=1e-6)


def test_init_from_another_architecture_is_one_clear_error(tmp_path):
    cfg, _ = resolve_config(TINY)
    other = Generator(cfg.model.__class__(**{**cfg.model.to_dict(), "ngf": 4}))
    save_pretrained(other, tmp_path / "w")
    args = [*TINY, "--train.init_from", str(tmp_path / "w"), "--max-steps", "1"]
    args += ["--output-dir", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    result = subprocess.run(
        [sys.executable, TRAIN_MAIN, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "--train.init_from" in result.stderr and "ngf" in result.stderr
