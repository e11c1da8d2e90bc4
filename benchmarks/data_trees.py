"""Trees of every dataset kind, in their original layouts, with files of the real datasets' sizes
and random content: what the data and precision benchmarks read (no dataset can be downloaded).

At `size` 256 (the presets' image size):
- DeepFashion (CoCosNet's preparation): 256 x 256 JPEG photos of noise, standing poses;
- CelebAMask-HQ: 1024 px photos, 13 part masks of 512 px;
- ADE20K (ADEChallengeData2016): 683 x 512 photos, label maps of blocks of 150 classes, 0 and the
  ignore value 255;
- the plain folder format: 256 px photos and label maps of 151 classes.
Another `size` scales every file by size / 256 (smoke runs).

Each writer returns the DataConfig of the kind's training preset (its load size, flips and
reference probabilities) at `size`, pointing at the tree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from dynast.data import DataConfig
from dynast.data.edge_encoding import INNER_PARTS
from train.config import run_preset

# Preset whose data settings each kind takes.
PRESET_OF_KIND = {
    "deepfashion": "deepfashion-256",
    "celebahq-edge": "celebahq-edge-256",
    "ade20k": "ade20k-256",
}
FOLDER_CLASSES = 151


def random_pose(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """18 keypoints of a standing figure with jitter, 2 of them missing."""
    base = np.array(
        [(0.5, 0.1), (0.5, 0.2), (0.4, 0.2), (0.35, 0.35), (0.33, 0.5), (0.6, 0.2),
         (0.65, 0.35), (0.67, 0.5), (0.45, 0.5), (0.45, 0.7), (0.45, 0.9), (0.55, 0.5),
         (0.55, 0.7), (0.55, 0.9), (0.48, 0.08), (0.52, 0.08), (0.45, 0.1), (0.55, 0.1)]
    )  # fmt: skip
    xy = (base + rng.normal(0, 0.02, base.shape)) * size
    candidate = np.column_stack([xy, np.full(18, 0.9), np.arange(18)])
    subset = np.arange(18)
    subset[rng.choice(18, 2, replace=False)] = -1
    return candidate, subset


def _preset_data(kind: str, root: Path, size: int) -> DataConfig:
    data = run_preset(PRESET_OF_KIND[kind]).data
    load = None if data.load_size is None else data.load_size * size // data.image_size
    return dataclasses.replace(data, root=str(root), image_size=size, load_size=load)


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def write_deepfashion(root: Path, *, count: int = 8, size: int = 256) -> DataConfig:
    """`count` photos of `count // 2` people; train = all, val = the first two; self pairs within
    each person, reference lines of two other people's photos."""
    rng = np.random.default_rng(0)
    keys = []
    for n in range(count):
        below = f"WOMEN/Dresses/id_{n // 2:08d}/0{n % 2 + 1}_1_front"
        (root / "img" / below).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{below}.jpg", quality=90)
        candidate, subset = random_pose(rng, size)
        (root / "pose" / below).parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(root / "pose" / f"{below}_candidate.txt", candidate)
        np.savetxt(root / "pose" / f"{below}_subset.txt", np.r_[subset, 10, 16][None])
        keys.append(f"img/{below}.jpg")
    others = [f"{keys[i]},{keys[(i + 2) % count]},{keys[(i + 4) % count]}" for i in range(count)]
    _write_lines(root / "train.txt", keys)
    _write_lines(root / "val.txt", keys[:2])
    _write_lines(
        root / "deepfashion_self_pair.txt", [f"{k},{keys[i ^ 1]}" for i, k in enumerate(keys)]
    )
    _write_lines(root / "deepfashion_ref.txt", others)
    _write_lines(root / "deepfashion_ref_test.txt", others[:2])
    return _preset_data("deepfashion", root, size)


def write_celebahq(root: Path, *, count: int = 4, size: int = 256) -> DataConfig:
    """`count` faces (photos of 4 x `size`, the 13 inner part masks at 2 x `size`: CelebAMask-HQ's
    1024 / 512 at 256); train = all, val = the first; references are the other faces."""
    rng = np.random.default_rng(0)
    (root / "CelebA-HQ-img").mkdir(parents=True)
    masks = root / "CelebAMask-HQ-mask-anno/0"
    masks.mkdir(parents=True)
    photo, half = 4 * size, 2 * size
    yy, xx = np.mgrid[0:photo, 0:photo] * 1024 / photo
    for n in range(count):
        smooth = (np.sin(xx / (40 + 10 * n)) + np.cos(yy / 55)) * 60 + 128
        pixels = np.clip(smooth[..., None] + rng.normal(0, 8, (photo, photo, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"CelebA-HQ-img/{n}.jpg")
        for k, part in enumerate(INNER_PARTS):
            mask = np.zeros((half, half), dtype=np.uint8)
            box = np.array([100 + 10 * k, 300 + 5 * k, 120 + 8 * k, 320 - 4 * k]) * half // 512
            mask[box[0] : box[1], box[2] : box[3]] = 255
            Image.fromarray(mask).convert("RGB").save(masks / f"{n:05d}_{part}.png")
    refs = [f"{n}.jpg,{(n + 1) % count}.jpg,{(n + 2) % count}.jpg" for n in range(count)]
    _write_lines(root / "train.txt", [str(n) for n in range(count)])
    _write_lines(root / "val.txt", ["0"])
    _write_lines(root / "celebahq_ref.txt", refs)
    _write_lines(root / "celebahq_ref_test.txt", refs[:1])
    return _preset_data("celebahq-edge", root, size)


def ade_labels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A scene-like map: an 8 x 8 grid of random classes 0..150 upsampled, a band of 255."""
    coarse = rng.integers(0, 151, size=(8, 8), dtype=np.uint8)
    rows = np.arange(height) * 8 // height
    cols = np.arange(width) * 8 // width
    label = coarse[np.ix_(rows, cols)]
    label[height - height // 10 :] = 255
    return label


def write_ade20k(root: Path, *, count: int = 8, size: int = 256) -> DataConfig:
    """`count` training and two validation scenes (683 x 512 at `size` 256) in the official
    layout."""
    rng = np.random.default_rng(0)
    height, width = 512 * size // 256, 683 * size // 256
    names = {"training": [], "validation": []}
    for sub, prefix, n_images in (("training", "train", count), ("validation", "val", 2)):
        (root / "images" / sub).mkdir(parents=True)
        (root / "annotations" / sub).mkdir(parents=True)
        for n in range(1, n_images + 1):
            name = f"ADE_{prefix}_{n:08d}"
            pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / sub / f"{name}.jpg", quality=90)
            labels = Image.fromarray(ade_labels(rng, height, width))
            labels.save(root / "annotations" / sub / f"{name}.png")
            names[sub].append(f"{name}.jpg")
    train = names["training"]
    _write_lines(
        root / "ade20k_ref.txt",
        [f"{t},{train[(i + 1) % count]},{train[(i + 2) % count]}" for i, t in enumerate(train)],
    )
    _write_lines(
        root / "ade20k_ref_test.txt", [f"{v},{train[i]}" for i, v in enumerate(names["validation"])]
    )
    return _preset_data("ade20k", root, size)


def write_folder(root: Path, *, count: int = 8, size: int = 256) -> DataConfig:
    """`count` photos with label maps of FOLDER_CLASSES classes; pairs i -> i + 1."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"p{n}.png")
        labels = ade_labels(rng, size, size)
        labels[labels >= FOLDER_CLASSES] = 0
        Image.fromarray(labels).save(root / "labels" / f"p{n}.png")
    pairs = ["target,exemplar", *(f"p{n},p{(n + 1) % count}" for n in range(count))]
    for split in ("train", "test"):
        _write_lines(root / f"pairs_{split}.csv", pairs)
    return DataConfig(kind="folder", root=str(root), num_classes=FOLDER_CLASSES, image_size=size)


def synthetic(size: int = 256) -> DataConfig:
    """The built-in synthetic data (8 classes) at `size`."""
    return DataConfig(image_size=size)


WRITERS = {
    "deepfashion": write_deepfashion,
    "celebahq-edge": write_celebahq,
    "ade20k": write_ade20k,
    "folder": write_folder,
}


def data_config(kind: str, root: Path, size: int = 256) -> DataConfig:
    """The DataConfig of `kind` at `size`; writes its tree under `root` (not for synthetic)."""
    if kind == "synthetic":
        return synthetic(size)
    return WRITERS[kind](root, size=size)
