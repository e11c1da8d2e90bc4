"""CelebA-HQ edges and ADE20K in their original layouts: the edge encoding checked against
contours and distances computed independently, ADE20K's two layouts, one-hot channels, pairing
rules, deterministic test pairs, and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from _real_data import write_ade20k, write_celebahq
from _release_data import release_pairs
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


@pytest.mark.parametrize(
    "split,real,hard,choice",
    [("train", 0.0, 0.0, "self"), ("train", 1.0, 0.0, "easy"), ("train", 1.0, 1.0, "hard"),
     ("test", 0.0, 0.0, "easy")],
)  # fmt: skip
def test_celeba_order_and_exemplars_are_the_releases(tmp_path, split, real, hard, choice):
    """The release's own `celebahqedge` loader on the same tree: its sample order
    (`Pix2pixDataset.initialize`'s natural sort) and the exemplar its `__getitem__` reads
    (`get_ref`: test `val[0]`; training self, `val[0]` easy, `val[1]` = last entry hard)."""
    root = write_celebahq(tmp_path / "celeba")
    theirs = release_pairs("celebahqedge", root, split, real=real, hard=hard)
    data = build_dataset(
        celeba(root, real_reference_probability=real, hard_reference_probability=hard), split
    )
    exemplars = {"self": [i.number for i in data.items], "easy": [i.easy for i in data.items],
                 "hard": [i.hard for i in data.items]}[choice]  # fmt: skip
    ours = [(f"CelebA-HQ-img/{i.number}.jpg", f"CelebA-HQ-img/{e}.jpg", float(choice == "self"))
            for i, e in zip(data.items, exemplars, strict=True)]  # fmt: skip
    assert ours == theirs
    assert [bool(data[i]["same_appearance"]) for i in range(len(data))] == [
        self_ref == 1.0 for _, _, self_ref in theirs
    ]


def test_celeba_bad_layout_and_missing_image(tmp_path):
    root = write_celebahq(tmp_path / "celeba")
    (root / "val.txt").write_text("29922,5\n")
    with pytest.raises(ValueError, match=r"val.txt:1: expected one image number"):
        build_dataset(celeba(root), "test")
    (root / "celebahq_ref_test.txt").write_text("29922.jpg,face.jpg\n")
    (root / "val.txt").write_text("29922\n")
    with pytest.raises(ValueError, match=r"ref_test.txt:1: expected a CelebA-HQ image number"):
        build_dataset(celeba(root), "test")
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
    # CoCosNet's get_ref for training: val = [items[1], items[-1]], easy val[0], hard val[1].
    assert [(item.easy, item.hard) for item in easy.items] == [
        ("ADE_train_00000002.jpg", "ADE_train_00000010.jpg"),
        ("ADE_train_00000010.jpg", "ADE_train_00000001.jpg"),
        ("ADE_train_00000001.jpg", "ADE_train_00000001.jpg"),
    ]


def test_ade20k_both_layouts_read_the_same_samples(tmp_path):
    official = build_dataset(ade(write_ade20k(tmp_path / "o", "official")), "test")
    merged = build_dataset(ade(write_ade20k(tmp_path / "m", "merged")), "test")
    for key in ("semantic", "exemplar", "target", "label"):
        assert torch.equal(official[1][key], merged[1][key])


def test_ade20k_labels_as_cocosnet_reads_them(tmp_path):
    """CoCosNet's `get_label_tensor` and one-hot, written out independently: nearest resize,
    ToTensor (/ 255) times 255, 255 -> label_nc 150, `scatter_` into label_nc + 1 = 151
    channels. The fixture's maps hold 255."""
    root = write_ade20k(tmp_path / "a", "official")
    data = build_dataset(ade(root), "test")
    for index, name in enumerate(["ADE_val_00000001", "ADE_val_00000002"]):
        raw = Image.open(root / "annotations/validation" / f"{name}.png")
        assert 255 in np.asarray(raw)
        values = torch.from_numpy(np.array(raw.resize((32, 32), Image.Resampling.NEAREST)))
        label = values.float().div(255) * 255.0
        label[label == 255] = 150
        expected = torch.zeros(151, 32, 32).scatter_(0, label.long()[None], 1.0)
        sample = data[index]
        assert torch.equal(sample["semantic"], expected) and (label == 150).sum() > 0
        assert torch.equal(sample["label"], label.long())


@pytest.mark.parametrize("value", [151, 200, 254])
def test_ade20k_values_cocosnet_cannot_read_name_the_file_value_and_line(tmp_path, value):
    root = write_ade20k(tmp_path / "a", "official")
    label = root / "annotations/training/ADE_train_00000010.png"
    values = np.asarray(Image.open(label)).copy()
    values[3:5, 7] = value
    Image.fromarray(values).save(label)
    test = build_dataset(ade(root), "test")  # ADE_train_00000010 is the first test exemplar
    with pytest.raises(
        ValueError,
        match=rf"ADE_train_00000010.png: label value {value} at 2 pixel\(s\): ADE20K labels are "
        rf"0..150 or 255 \(read as 150\) \(referenced by .*ade20k_ref_test.txt:1\)",
    ):
        test[0]


def test_ade20k_bad_input(tmp_path):
    root = write_ade20k(tmp_path / "a", "official")
    label = root / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.full((30, 36), 300, dtype=np.uint16)).save(label)  # 16-bit grey
    data = build_dataset(ade(root), "test")
    with pytest.raises(ValueError, match=r"ADE_val_00000002.png: .* \(mode L or P\), got mode I"):
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
