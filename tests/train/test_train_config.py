"""Training configs: presets, dotted command-line overrides, strict JSON round trip, validation."""

from __future__ import annotations

import json

import pytest

from dynast.config import PRESETS
from dynast.overrides import apply_overrides, diff, field_names, parse_text
from train.config import RESUMABLE_CHANGES, LossWeights, RunConfig, TrainConfig, run_preset
from train.main import main, parse_overrides, resolve_config


def test_every_model_preset_has_a_training_preset_that_round_trips():
    for name in PRESETS:
        cfg = run_preset(name)
        assert cfg.model.name == name
        assert cfg.model.image_size == cfg.data.image_size
        again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*synthetic-64"):
        run_preset("nope")


def test_overrides_set_nested_fields_of_every_type_together():
    cfg = apply_overrides(
        run_preset("synthetic-64"),
        [
            ("model.ngf", "8"),
            ("model.image_size", "32"),  # validated together with data.image_size below
            ("data.image_size", "32"),
            ("model.dense_scale", "0.5"),
            ("train.loss.gan", "2.5"),
            ("train.vgg_weights", "/some/file.pth"),
            ("train.mixed_precision", "bf16"),
            ("data.match_pair_sizes", "false"),
        ],
    )
    assert (cfg.model.ngf, cfg.model.image_size, cfg.data.image_size) == (8, 32, 32)
    assert cfg.model.dense_scale == 0.5 and cfg.train.loss.gan == 2.5
    assert cfg.train.vgg_weights == "/some/file.pth" and cfg.train.mixed_precision == "bf16"
    assert cfg.data.match_pair_sizes is False
    cleared = apply_overrides(cfg, [("model.dense_scale", "none"), ("train.vgg_weights", "null")])
    assert cleared.model.dense_scale is None and cleared.train.vgg_weights is None
    assert sorted(diff(cfg.to_dict(), cleared.to_dict())) == [
        "model.dense_scale",
        "train.vgg_weights",
    ]


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("model.nope", "1")], r"--model.nope: unknown field 'nope' of DynaSTConfig"),
        ([("train.loss", "1")], r"--train.loss: train.loss is a group"),
        ([("train.lr.x", "1")], r"--train.lr.x: train.lr is not a group"),
        ([("train.max_steps", "ten")], r"--train.max_steps: expected an integer, got 'ten'"),
        ([("train.max_steps", "0")], r"train.max_steps must be a positive integer"),
        ([("train.mixed_precision", "fp8")], r"train.mixed_precision must be one of"),
        ([("data.match_pair_sizes", "maybe")], r"expected true/false"),
        ([("model.image_size", "32")], r"model.image_size \(32\) must equal data.image_size"),
        ([("model.semantic_nc", "5")], r"model.semantic_nc \(5\) must equal"),
    ],
)
def test_bad_overrides_name_the_field(pairs, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(run_preset("synthetic-64"), pairs)


def test_parse_text_types():
    assert parse_text("3", int | None, "x") == 3
    assert parse_text("None", int | None, "x") is None
    assert parse_text("1e-3", float, "x") == 1e-3
    assert parse_text("1,2", tuple[int, int], "x") == (1, 2)
    assert parse_text("yes", bool, "x") is True
    with pytest.raises(ValueError, match="x: expected 2 comma-separated values"):
        parse_text("1", tuple[int, int], "x")


def test_from_dict_is_strict():
    data = run_preset("synthetic-64").to_dict()
    data["train"]["loss"]["typo"] = 1.0
    with pytest.raises(ValueError, match=r"config.train.loss: unknown field\(s\) \['typo'\]"):
        RunConfig.from_dict(data)
    data = run_preset("synthetic-64").to_dict()
    data["model"]["ngf"] = "wide"
    with pytest.raises(ValueError, match=r"config\.model\.ngf: expected an integer"):
        RunConfig.from_dict(data)


def test_train_config_validation_and_lr_decay():
    with pytest.raises(ValueError, match=r"train.adam_beta2 must be in \[0, 1\)"):
        TrainConfig(adam_beta2=1.0)
    with pytest.raises(ValueError, match=r"train.decay_steps \(20\) exceeds max_steps \(10\)"):
        TrainConfig(max_steps=10, decay_steps=20)
    with pytest.raises(ValueError, match=r"train\.loss\.warp must be"):
        LossWeights(warp=-1.0)
    cfg = TrainConfig(max_steps=10, decay_steps=4)
    assert [cfg.lr_factor(s) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25]
    assert TrainConfig().lr_factor(10_000) == 1.0


def test_command_line_named_flags_and_dotted_overrides():
    cfg, dry = resolve_config(
        [
            "--max-steps",
            "7",
            "--output-dir",
            "somewhere",
            "--mixed-precision",
            "bf16",
            "--vgg-weights",
            "w.pth",
            "--model.ngf=8",
            "--train.batch_size",
            "3",
            "--dry-run",
        ]
    )
    assert dry
    assert (cfg.train.max_steps, cfg.train.output_dir, cfg.train.batch_size) == (7, "somewhere", 3)
    assert (cfg.train.mixed_precision, cfg.train.vgg_weights, cfg.model.ngf) == ("bf16", "w.pth", 8)
    cfg, dry = resolve_config(["--preset", "deepfashion-256"])
    assert cfg.model.name == "deepfashion-256" and cfg.model.semantic_nc == 20 and not dry
    assert parse_overrides(["--a.b", "1", "--c.d=x=y"]) == [("a.b", "1"), ("c.d", "x=y")]
    with pytest.raises(ValueError, match="unknown argument '--bogus'"):
        parse_overrides(["--bogus", "1"])
    with pytest.raises(ValueError, match=r"--a\.b: missing value"):
        parse_overrides(["--a.b"])


def test_main_dry_run_prints_config_and_bad_input_exits_2(capsys, tmp_path):
    out_dir = tmp_path / "never-created"
    assert main(["--dry-run", "--output-dir", str(out_dir), "--train.seed", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["seed"] == 5 and printed["model"]["name"] == "synthetic-64"
    assert not out_dir.exists()
    assert main(["--dry-run", "--train.seed", "-1"]) == 2
    assert "error: " in capsys.readouterr().err


def test_field_names_cover_every_group():
    names = field_names(run_preset("synthetic-64"))
    assert {"model.ngf", "data.num_classes", "train.max_steps", "train.loss.warp"} <= set(names)


def test_a_step_count_on_the_command_line_replaces_an_epoch_based_run_length():
    from train.main import resolve_config

    by_epochs, _ = resolve_config(["--preset", "deepfashion-256"])
    assert (by_epochs.train.max_epochs, by_epochs.train.decay_epochs) == (100, 20)
    for flag in (["--max-steps", "7"], ["--train.max_steps", "7"]):
        cfg, _ = resolve_config(["--preset", "deepfashion-256", *flag])
        assert (cfg.train.max_steps, cfg.train.max_epochs, cfg.train.decay_epochs) == (7, 0, 0)
    both, _ = resolve_config(
        ["--preset", "deepfashion-256", "--max-steps", "7", "--train.max_epochs", "3",
         "--train.decay_epochs", "1"]
    )  # fmt: skip
    assert (both.train.max_epochs, both.train.schedule(10)[0]) == (3, 30)


def test_compile_switch_is_a_bool_set_from_the_command_line_and_resumable():
    assert TrainConfig().compile is False
    with pytest.raises(ValueError, match=r"train\.compile must be true or false"):
        TrainConfig(compile="yes")
    cfg, _ = resolve_config(["--train.compile", "true", "--dry-run"])
    assert cfg.train.compile is True
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.train.compile is True
    plain = cfg.to_dict()
    del plain["train"]["compile"]  # a run folder written before the switch existed
    assert RunConfig.from_dict(plain).train.compile is False
    assert cfg.changes_from(RunConfig.from_dict(plain)) == ["train.compile"]
    from train.config import RESUMABLE_CHANGES

    assert "train.compile" in RESUMABLE_CHANGES


def test_checkpoint_activations_is_a_resumable_switch_refused_with_compile():
    assert TrainConfig().checkpoint_activations is False
    assert "train.checkpoint_activations" in RESUMABLE_CHANGES
    with pytest.raises(ValueError, match=r"train\.checkpoint_activations must be true or false"):
        TrainConfig(checkpoint_activations="yes")
    with pytest.raises(ValueError, match="cannot both be on"):
        TrainConfig(checkpoint_activations=True, compile=True)
