"""DynaSTConfig: presets, derived channel widths, strict dict round trip, validation errors."""

from __future__ import annotations

import json
import math

import pytest

from dynast.config import DEFAULT_PRESET, PRESETS, DynaSTConfig, preset


def test_presets_and_default():
    assert set(PRESETS) == {
        "deepfashion-256",
        "deepfashion-512",
        "celebahq-edge-256",
        "ade20k-256",
        "synthetic-64",
        "synthetic-64-narrow",
    }
    assert DEFAULT_PRESET == "synthetic-64"
    assert DynaSTConfig() == preset("synthetic-64-narrow")
    assert (preset("synthetic-64").ngf, preset("synthetic-64").init_gain) == (16, 0.3)
    synthetic = preset("synthetic-64")
    assert synthetic.output_from_warp and synthetic.region_gate  # the default run's model
    narrowed = {"ngf": 8, "init_gain": 0.02, "output_from_warp": False, "region_gate": False}
    assert {**synthetic.to_dict(), **narrowed} == {
        **DynaSTConfig().to_dict(),
        "name": "synthetic-64",
    }
    for name, cfg in PRESETS.items():
        assert cfg.name == name
    assert preset("celebahq-edge-256").semantic_nc == 15
    assert preset("ade20k-256").semantic_nc == 151
    assert preset("synthetic-64").image_size == 64
    assert preset("synthetic-64").semantic_nc == 8
    big = preset("deepfashion-512")
    assert (big.image_size, big.semantic_nc) == (512, 20)
    assert {**big.to_dict(), "image_size": 256, "name": "deepfashion-256"} == preset(
        "deepfashion-256"
    ).to_dict()


def test_unknown_preset_lists_names():
    with pytest.raises(ValueError, match="deepfashion-256") as err:
        preset("deepfashion-1024")
    assert "synthetic-64" in str(err.value)


def test_released_widths_per_scale():
    """docs/method.md section 2: C_v 512/256/128/64, C_qk 640/320/160/80, C_p 128/64/32/16."""
    cfg = preset("deepfashion-256")
    assert cfg.semantic_nc == 20
    assert cfg.coarsest_size == 32
    assert cfg.value_channels == (512, 256, 128, 64)
    assert cfg.pos_channels == (128, 64, 32, 16)
    assert cfg.qk_channels == (640, 320, 160, 80)
    assert cfg.prune_channels == (128, 64, 32, 16)
    assert (cfg.blocks_per_scale, cfg.topk, cfg.num_scales) == (2, 4, 4)
    assert (cfg.ndf, cfg.disc_layers, cfg.num_discriminators) == (64, 4, 2)


def test_attention_scales_follow_the_release():
    cfg = preset("deepfashion-256")
    scale, prune = cfg.attention_scales(0)
    assert math.isclose(scale, 1 / math.sqrt(640))
    assert math.isclose(prune, 1 / 128)
    for s in (1, 2, 3):
        assert cfg.attention_scales(s) == (100.0, 1.0)
    custom = DynaSTConfig(dense_scale=0.5, dense_prune_scale=2.0, sparse_scale=10.0)
    assert custom.attention_scales(0) == (0.5, 2.0)
    assert custom.attention_scales(2) == (10.0, 1.0)


def test_max_multiplier_caps_widths():
    cfg = DynaSTConfig(ngf=8, max_multiplier=2, pos_unit=3, prune_unit=5)
    assert cfg.value_channels == (16, 16, 16, 8)
    assert cfg.pos_channels == (6, 6, 6, 3)
    assert cfg.prune_channels == (10, 10, 10, 5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    cfg = PRESETS[name]
    assert DynaSTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_from_dict_is_strict_and_fills_defaults():
    with pytest.raises(ValueError, match=r"unknown DynaSTConfig keys: \['bogus', 'ngf_typo'\]"):
        DynaSTConfig.from_dict({"ngf": 8, "bogus": 1, "ngf_typo": 2})
    assert DynaSTConfig.from_dict({"ngf": 8}) == DynaSTConfig(ngf=8)
    with pytest.raises(ValueError, match="expects a dict"):
        DynaSTConfig.from_dict([("ngf", 8)])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"image_size": 60}, "divisible by 2\\*\\*\\(num_scales - 1\\) = 8", id="size"),
        pytest.param({"image_size": 8}, "at least 2 pixels", id="too-small"),
        pytest.param({"topk": 65}, "topk \\(65\\) exceeds the 64 tokens", id="topk"),
        pytest.param({"ngf": 0}, "ngf must be a positive integer", id="ngf"),
        pytest.param(
            {"blocks_per_scale": 1.5}, "blocks_per_scale must be a positive integer", id="bps"
        ),
        pytest.param({"semantic_nc": True}, "semantic_nc must be a positive integer", id="bool"),
        pytest.param({"warp_over": "some"}, "warp_over must be one of", id="warp"),
        pytest.param({"attention_backend": "cuda"}, "attention_backend must be one of", id="be"),
        pytest.param({"norm_backend": "fused"}, "norm_backend must be one of", id="norm"),
        pytest.param({"sparse_scale": 0.0}, "sparse_scale must be a finite number > 0", id="scale"),
        pytest.param({"dense_scale": -1.0}, "dense_scale must be a finite number > 0", id="dense"),
        pytest.param(
            {"init_gain": float("inf")}, "init_gain must be a finite number > 0", id="gain"
        ),
        pytest.param({"name": ""}, "name must be a non-empty string", id="name"),
    ],
)
def test_validation_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        DynaSTConfig(**overrides)


def test_config_is_frozen():
    cfg = DynaSTConfig()
    with pytest.raises(AttributeError):
        cfg.ngf = 32  # type: ignore[misc]


def test_a_config_saved_without_tie_finest_fusion_loads_untied():
    """Folders written before the field existed hold a fusion block of their own (`fuse.2`):
    the field's default keeps them loading as saved; the released presets set it."""
    saved = preset("deepfashion-256").to_dict()
    del saved["tie_finest_fusion"]
    assert DynaSTConfig.from_dict(saved).tie_finest_fusion is False
    assert preset("deepfashion-256").tie_finest_fusion is True
    assert preset("synthetic-64").tie_finest_fusion is False
    with pytest.raises(ValueError, match="tie_finest_fusion must be true or false"):
        DynaSTConfig(tie_finest_fusion="yes")
