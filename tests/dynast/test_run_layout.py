"""dynast.run_layout: the names training writes are the names dynast.io and eval read."""

from __future__ import annotations

import pytest

from dynast import run_layout
from dynast.config import DynaSTConfig
from dynast.generator import Generator
from dynast.io import resolve_generator_dir, save_pretrained
from dynast.run_layout import checkpoint_name, checkpoint_step, sample_name


@pytest.mark.parametrize("step", [0, 7, 500, 12_345_678, 123_456_789])
def test_checkpoint_names_round_trip(step):
    name = checkpoint_name(step)
    assert name.startswith(run_layout.CHECKPOINT_PREFIX) and len(name) >= len("checkpoint_") + 8
    assert checkpoint_step(name) == step


@pytest.mark.parametrize(
    "name",
    [
        "checkpoint_00000500.tmp",
        "checkpoint_00000500.damaged",
        "checkpoint_500",
        "checkpoint_",
        "custom_checkpoint_00000001",
        "final",
    ],
)
def test_other_names_are_no_checkpoints(name):
    assert checkpoint_step(name) is None


def test_names_of_the_documented_layout():
    assert checkpoint_name(500) == "checkpoint_00000500"
    assert sample_name(250) == "step_00000250.png"
    assert run_layout.OUTPUT_DIRS == ("checkpoints", "samples", "tensorboard", "final")
    assert run_layout.OUTPUT_FILES == ("config.json", "metrics.jsonl")


def test_a_checkpoint_written_under_the_layout_is_what_load_generator_finds(tmp_path):
    cfg = DynaSTConfig(name="tiny", image_size=32, ngf=4, num_scales=3, pos_unit=2, prune_unit=2)
    checkpoints = tmp_path / run_layout.CHECKPOINTS_DIR
    for step in (9, 10):
        save_pretrained(Generator(cfg), checkpoints / checkpoint_name(step) / "generator")
    newest = checkpoints / checkpoint_name(10) / run_layout.GENERATOR_DIR
    assert resolve_generator_dir(tmp_path) == newest
    save_pretrained(Generator(cfg), tmp_path / run_layout.FINAL_DIR)
    assert resolve_generator_dir(tmp_path) == tmp_path / run_layout.FINAL_DIR
