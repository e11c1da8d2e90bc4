"""CelebA-HQ edges and ADE20K in their original layouts: the edge encoding checked against
contours and distances computed independently, ADE20K's two layouts, one-hot channels, pairing
rules, deterministic test pairs, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from _real_data import write_ade20k, write_celebahq
from PIL import Image
from scipy import ndimage
from skimage import feature

from dynast.data import DataConfig, build_dataset
from dynast.data.augment import Transform
from dynast.data.edge_encoding import INNER_PARTS, encode_edges


def celeba(root, **kwargs) -> DataConfig:
    return DataConfig(kind="celebahq-edge", root=str(root), num_classes=15, image_size=32, **kwargs)


def ade(root, **kwargs) -> DataConfig:
    return DataConfig(kind="ade20k", root=str(root), num_classes=151, image_size=32, **kwargs)


def contour(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour (inside the image) of the other value."""
    cross = ndimage.generate_binary_structure(2, 1)
    inner = mask & ~ndimage.binary_erosion(mask, cross, border_value=1)
    outer = ~mask & ndimage.binary_dilation(mask, cross)
    return inner | outer


def l1_distance(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    return (np.abs(yy[..., None] - ys) + np.abs(xx[..., None] - xs)).min(-1)


def test_edge_channels_by_hand(tmp_path):
    root = write_celebahq(tmp_path / "celeba")
    folder = root / "CelebAMask-HQ-mask-anno/0"
    photo = Image.open(root / "CelebA-HQ-img/5.jpg")
    parts = {p: None for p in INNER_PARTS}
    for name in ("skin", "nose", "hair"):
        parts[name] = Image.open(folder / f"00005_{name}.png")
    # Masks are 20 px, the load size 40: nearest doubles every pixel exactly.
    encoded = encode_edges(photo, parts, Transform.plain(40))
    assert encoded.shape == (15, 40, 40)
    masks = {
        name: np.kron(np.asarray(parts[name].convert("L")) == 255, np.ones((2, 2), bool))
        for name in ("skin", "nose", "hair")
    }
    contours = {name: contour(m) for name, m in masks.items()}
    union = contours["skin"] | contours["nose"] | contours["hair"]
    as_bytes = (encoded * 255).round().numpy()
    assert np.array_equal(as_bytes[14] == 255, union), "last channel: the part contours"
    skin = 1 + INNER_PARTS.index("skin")
    assert np.array_equal(as_bytes[skin], np.minimum(l1_distance(contours["skin"]) // 3, 255))
    missing = 1 + INNER_PARTS.index("l_brow")
    assert (as_bytes[missing] == 255).all(), "a missing part file is an empty part"
    # First channel: contours plus Canny (scikit-image defaults) outside the face parts, the
    # hair giving its pixels back.
    grey = np.array(photo.resize((40, 40), Image.Resampling.BILINEAR).convert("L"))
    inside = (masks["skin"] | masks["nose"]) & ~masks["hair"]
    expected = union | (feature.canny(grey) & ~inside)
    assert np.array_equal(as_bytes[0] == 255, expected)
    assert set(np.unique(as_bytes[[0, 14]])) <= {0, 255}


def test_celeba_pairs_and_determinism(tmp_path):
    root = write_celebahq(tmp_path / "celeba")
    train = build_dataset(celeba(root, load_size=36, flip=True), "train")
    assert len(train) == 3 and all(bool(train[i]["same_appearance"]) for i in range(3))
    sample = train[0]
    assert sample["semantic"].shape == (15, 32, 32) and (sample["label"] == -1).all()
    test = build_dataset(celeba(root), "test")
    assert test.items[0].easy == 5 and not bool(test[0]["same_appearance"])
    assert torch.equal(test[0]["exemplar"], test[0]["exemplar"])
    hard = build_dataset(
        celeba(root, real_reference_probability=1.0, hard_reference_probability=1.0), "train"
    )
    assert [item.hard for item in hard.items] == [4002, 5, 5]
    assert [item.easy for item in hard.items] == [2001, 5, 2001]
    assert not bool(hard[0]["same_appearance"])


def test_celeba_bad_layout_and_missing_image(tmp_path):
    root = write_celebahq(tmp_path / "celeba")
    (root / "CelebA-HQ-img/2001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2001.jpg: image not found .*train.txt:2"):
        build_dataset(celeba(root), "train")
    shutil.rmtree(root / "CelebAMask-HQ-mask-anno")
    with pytest.raises(ValueError, match="expected CelebA-HQ-img/, CelebAMask-HQ-mask-anno/"):
        build_dataset(celeba(root), "train")


@pytest.mark.parametrize("layout", ["official", "merged"])
def test_ade20k_layouts_one_hot_and_pairs(tmp_path, layout):
    root = write_ade20k(tmp_path / layout, layout)
    train = build_dataset(ade(root), "train")
    assert [item.name for item in train.items] == [
        "ADE_train_00000001.jpg", "ADE_train_00000002.jpg", "ADE_train_00000010.jpg"
    ]  # fmt: skip
    test = build_dataset(ade(root), "test")
    sample = test[0]
    label = sample["label"]
    assert sample["semantic"].shape == (151, 32, 32)
    # Value v lands in channel v: "unknown" (0) in channel 0, class 150 in channel 150.
    assert torch.equal(sample["semantic"].argmax(0), label)
    assert sample["semantic"].sum(0).eq(1).all() and (label == 150).any() and (label == 0).any()
    # Test exemplars come from the training images (first reference).
    assert test.items[0].easy == "ADE_train_00000010.jpg"
    images = root / ("images/training" if layout == "official" else "training")
    photo = Image.open(images / "ADE_train_00000010.jpg").convert("RGB")
    resized = np.array(photo.resize((32, 32), Image.Resampling.BICUBIC))
    expected = torch.from_numpy(resized).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    assert torch.equal(sample["exemplar"], expected)
    easy = build_dataset(ade(root, real_reference_probability=1.0), "train")
    assert not bool(easy[0]["same_appearance"]) and bool(train[0]["same_appearance"])


def test_ade20k_both_layouts_read_the_same_samples(tmp_path):
    official = build_dataset(ade(write_ade20k(tmp_path / "o", "official")), "test")
    merged = build_dataset(ade(write_ade20k(tmp_path / "m", "merged")), "test")
    for key in ("semantic", "exemplar", "target", "label"):
        assert torch.equal(official[1][key], merged[1][key])


def test_ade20k_bad_input(tmp_path):
    root = write_ade20k(tmp_path / "a", "official")
    label = root / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.full((30, 36), 151, dtype=np.uint8)).save(label)
    data = build_dataset(ade(root), "test")
    with pytest.raises(ValueError, match=r"ADE_val_00000002.png: class index 151 is out of range"):
        data[1]
    label.unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_val_00000002.png: label map not found"):
        build_dataset(ade(root), "test")
    (root / "ade20k_ref_test.txt").write_text("ADE_val_00000001.jpg\n")
    with pytest.raises(ValueError, match=r"ade20k_ref_test.txt:1: .* has no reference"):
        build_dataset(ade(root), "test")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(
        ValueError, match=r"not an ADE20K layout: expected images/ .* found: readme"
    ):
        build_dataset(ade(empty), "train")
