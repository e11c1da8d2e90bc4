"""Training presets add data and a recipe to the model presets: a name means the same model in
training as in dynast.config (and so in generation, benchmarks and the autotuner)."""

from __future__ import annotations

import pytest

from dynast.config import DEFAULT_PRESET, PRESETS, preset
from train.config import PRESET_NAMES, RELEASED_PRESETS, TRAINING_PRESETS, run_preset


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_training_preset_trains_the_model_preset_of_its_name(name):
    model = run_preset(name).model
    assert name == model.name or name.startswith(model.name + "-")
    assert name not in PRESETS or name == model.name
    assert model == preset(model.name)


def test_every_model_preset_trains_and_the_default_is_shared():
    assert set(PRESETS) <= set(TRAINING_PRESETS)
    assert set(RELEASED_PRESETS) <= set(TRAINING_PRESETS)
    assert DEFAULT_PRESET in TRAINING_PRESETS
    assert run_preset(DEFAULT_PRESET).model == PRESETS[DEFAULT_PRESET]


def test_the_default_run_is_unchanged():
    """The default training run: the synthetic-64 model is ngf 16 with init_gain 0.3."""
    cfg = run_preset("synthetic-64")
    assert (cfg.model.name, cfg.model.ngf, cfg.model.init_gain) == ("synthetic-64", 16, 0.3)
    assert (cfg.train.max_steps, cfg.train.output_dir) == (400, "runs/synthetic-64")
