"""Training presets add data and a recipe to the model presets: a name means the same model in
training as in dynast.config (and so in generation, benchmarks and the autotuner)."""

from __future__ import annotations

import pytest

from dynast.config import DEFAULT_PRESET, PRESETS, preset
from dynast.data.presets import PRESET_MODELS, preset_data
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


def test_every_training_preset_has_its_data_and_model_below_training():
    """Evaluation reads a preset's data from dynast.data.presets: the same names, the same model
    and the same data config as the training preset's."""
    assert set(PRESET_MODELS) == set(TRAINING_PRESETS)
    for name in PRESET_MODELS:
        run = run_preset(name)
        assert (run.model.name, run.data) == (PRESET_MODELS[name], preset_data(name))
    with pytest.raises(ValueError, match="--preset: unknown preset 'nope'; choose one of"):
        preset_data("nope")
