"""DataConfig: defaults, strict dict round trip, validation messages."""

from __future__ import annotations

import pytest

from dynast.data import DataConfig, build_dataset
from dynast.data.config import SYNTHETIC_TEST_LENGTH, SYNTHETIC_TRAIN_LENGTH


def test_defaults_and_round_trip() -> None:
    cfg = DataConfig()
    assert (cfg.kind, cfg.num_classes, cfg.image_size) == ("synthetic", 8, 64)
    assert cfg.textures in ("photo", "procedural")  # "auto" is resolved
    assert cfg.length("train") == SYNTHETIC_TRAIN_LENGTH
    assert cfg.length("test") == SYNTHETIC_TEST_LENGTH
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    folder = DataConfig(kind="folder", root="/data/x", test_length=3)
    assert DataConfig.from_dict(folder.to_dict()) == folder
    assert folder.length("train") is None and folder.length("test") == 3


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ValueError, match="unknown DataConfig keys: colour, size"):
        DataConfig.from_dict({"size": 3, "colour": 1, "seed": 2})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "images"}, "kind must be one of"),
        ({"root": "/x"}, "root='/x' is only read by kind='folder'"),
        ({"num_classes": 1}, "num_classes must be an integer in"),
        ({"num_classes": 8.0}, "num_classes must be an int"),
        ({"image_size": 4}, "image_size must be an integer >= 8"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"train_length": 0}, "train_length must be a positive integer"),
        ({"test_length": True}, "test_length must be a positive integer"),
        ({"textures": "fancy"}, "textures must be one of"),
        ({"match_pair_sizes": 1}, "match_pair_sizes must be a bool"),
    ],
)
def test_bad_values_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DataConfig(**kwargs)


def test_bad_split_is_named() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset(DataConfig(), "val")


def test_folder_root_is_needed_when_the_dataset_is_built() -> None:
    cfg = DataConfig(kind="folder")  # a preset still to be completed
    with pytest.raises(ValueError, match=r"DataConfig\.root is required for kind='folder'"):
        build_dataset(cfg, "train")
