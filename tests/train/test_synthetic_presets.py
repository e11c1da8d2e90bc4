"""The synthetic training presets: the default and its longer variant differ only in run length."""

from __future__ import annotations

import json

import pytest

from train.config import PRESET_NAMES, RunConfig, run_preset
from train.main import main, resolve_config


def test_long_preset_is_the_default_model_trained_longer():
    short, long = run_preset("synthetic-64"), run_preset("synthetic-64-long")
    assert long.model == short.model and long.data == short.data
    assert long.train.max_steps > short.train.max_steps
    assert long.train.output_dir == "runs/synthetic-64-long"
    changed = {name.split(".", 1)[1] for name in long.changes_from(short)}
    assert changed <= {"max_steps", "output_dir", "sample_every", "checkpoint_every"}, changed
    again = RunConfig.from_dict(json.loads(json.dumps(long.to_dict())))
    assert again == long
    assert "synthetic-64-long" in PRESET_NAMES


def test_long_preset_from_the_command_line(capsys):
    cfg, dry = resolve_config(["--preset", "synthetic-64-long", "--dry-run"])
    assert dry and cfg == run_preset("synthetic-64-long")
    assert main(["--preset", "synthetic-64-long", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["max_steps"] == cfg.train.max_steps


def test_unknown_preset_lists_the_long_one():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*synthetic-64-long"):
        run_preset("nope")
