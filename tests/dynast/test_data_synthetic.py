"""The synthetic dataset: determinism, disjoint splits, shapes and ranges, learnable layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dynast.data.config as data_config
from dynast.data import DataConfig, SyntheticDataset, build_dataset
from dynast.data.appearance import random_appearance
from dynast.data.layout import CORE, HALF_AXIS, INRADIUS, MAX_OBJECTS
from dynast.data.textures import photo_textures_available

needs_photos = pytest.mark.skipif(not photo_textures_available(), reason="needs scikit-image")
TEXTURES = ["procedural", pytest.param("photo", marks=needs_photos)]


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("textures", TEXTURES)
def test_pair_is_a_function_of_seed_split_index(textures: str) -> None:
    cfg = DataConfig(textures=textures, seed=3)
    first, second = SyntheticDataset(cfg, "train"), SyntheticDataset(cfg, "train")
    for index in (0, 5, 9_999):
        assert _equal(first[index], second[index]), index
    # Order of access does not matter: a fresh dataset asked for 5 directly gives the same pair.
    later = [first[i] for i in range(6)][5]
    assert _equal(later, SyntheticDataset(cfg, "train")[5])
    assert _equal(first[-1], first[len(first) - 1])


def test_splits_and_seeds_give_different_pairs() -> None:
    train = SyntheticDataset(DataConfig(textures="procedural"), "train")
    test = SyntheticDataset(DataConfig(textures="procedural"), "test")
    other_seed = SyntheticDataset(DataConfig(textures="procedural", seed=1), "train")
    train_targets = [train[i]["target"] for i in range(8)]
    for i in range(8):
        for t in train_targets:
            assert not torch.equal(test[i]["target"], t)
        assert not torch.equal(other_seed[i]["target"], train_targets[i])


@pytest.mark.parametrize(
    "size,classes,textures",
    [
        pytest.param(64, 8, "procedural", id="S64-K8"),
        pytest.param(37, 5, "photo", marks=needs_photos, id="S37-K5-photo"),
        pytest.param(50, 2, "procedural", id="S50-K2"),
        pytest.param(24, 20, "procedural", id="S24-K20"),
    ],
)
def test_shapes_dtypes_ranges(size: int, classes: int, textures: str) -> None:
    cfg = DataConfig(image_size=size, num_classes=classes, textures=textures, test_length=7)
    dataset = build_dataset(cfg, "test")
    assert len(dataset) == 7
    for index in (0, 6):
        s = dataset[index]
        assert s["index"] == index
        for key in ("semantic", "exemplar_semantic"):
            assert s[key].shape == (classes, size, size) and s[key].dtype == torch.float32
            assert torch.equal(s[key].sum(0), torch.ones(size, size))  # one-hot
        for key in ("exemplar", "target"):
            assert s[key].shape == (3, size, size) and s[key].dtype == torch.float32
            assert s[key].min() >= -1 and s[key].max() <= 1
            assert s[key].std() > 0.05  # painted, not blank
        for key, semantic in (("label", "semantic"), ("exemplar_label", "exemplar_semantic")):
            assert s[key].shape == (size, size) and s[key].dtype == torch.int64
            assert torch.equal(s[semantic].argmax(0), s[key])
        assert s["has_target"].dtype == torch.bool and s["has_target"].shape == ()
        assert bool(s["has_target"])
    with pytest.raises(IndexError, match="out of range"):
        dataset[7]


def test_every_target_class_is_in_the_exemplar_with_a_fair_area() -> None:
    size, k = 64, 8
    dataset = SyntheticDataset(DataConfig(image_size=size, num_classes=k), "train")
    # The layout guarantees each class a disc of radius >= min(CORE, min inradius * smallest
    # half-axis) cells, on a grid of at most ceil(sqrt(k)) cells a side.
    cell = size / math.ceil(math.sqrt(min(k - 1, MAX_OBJECTS) + 1))
    radius = min(CORE, min(INRADIUS.values()) * HALF_AXIS[0]) * cell
    least = 0.8 * math.pi * radius**2  # allowance for pixelation of the disc
    for index in range(40):
        s = dataset[index]
        target_classes = set(s["label"].unique().tolist())
        assert target_classes == set(s["exemplar_label"].unique().tolist())
        assert 0 in target_classes and len(target_classes) >= 1 + math.ceil((k - 1) / 2)
        for label in (s["label"], s["exemplar_label"]):
            counts = torch.bincount(label.flatten(), minlength=k)
            assert counts[counts > 0].min() >= least, (index, counts)
        assert not torch.equal(s["label"], s["exemplar_label"])


def test_appearance_is_distinct_per_class_and_varies_per_sample() -> None:
    k = 8
    hues = []
    for index in range(20):
        rng = np.random.default_rng(index)
        colours = random_appearance(rng, np.arange(1, k), k, 64).colours[:, 0]  # [K, 3]
        gaps = np.abs(colours[:, None] - colours[None]).max(-1) + np.eye(k)
        assert gaps.min() > 0.03  # no two classes share a colour within a sample
        hues.append(colours[1])
    assert np.std(hues, axis=0).max() > 0.15  # class 1 is not one fixed colour


def test_target_and_exemplar_share_the_appearance() -> None:
    s = SyntheticDataset(DataConfig(textures="procedural"), "test")[3]
    for cls in s["label"].unique().tolist():
        in_target = s["target"][:, s["label"] == cls].mean(1)
        in_exemplar = s["exemplar"][:, s["exemplar_label"] == cls].mean(1)
        others = [
            s["exemplar"][:, s["exemplar_label"] == c].mean(1)
            for c in s["exemplar_label"].unique().tolist()
            if c != cls
        ]
        # A class looks more like itself in the exemplar than any other class does.
        distance = (in_target - in_exemplar).abs().sum()
        assert all(distance < (in_target - o).abs().sum() for o in others), cls


def test_loader_batches_samples() -> None:
    dataset = SyntheticDataset(DataConfig(image_size=32, train_length=5), "train")
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["semantic"].shape == (3, 8, 32, 32)
    assert batch["exemplar"].shape == (3, 3, 32, 32)
    assert batch["has_target"].tolist() == [True, True, True]
    assert batch["index"].tolist() == [0, 1, 2]


def test_auto_textures_resolve_to_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_config, "photo_textures_available", lambda: False)
    assert DataConfig().textures == "procedural"
    with pytest.raises(ValueError, match="scikit-image"):
        DataConfig(textures="photo")
    monkeypatch.setattr(data_config, "photo_textures_available", lambda: True)
    assert DataConfig().textures == "photo"
    assert DataConfig(kind="folder", root="x").textures == "auto"  # not read for folders
