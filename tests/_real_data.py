"""Tiny fixtures of the real datasets, written in their exact original layouts (DeepFashion in
CoCosNet's preparation, CelebAMask-HQ, ADE20K official and merged), for the loader tests and the
one-step training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_jpeg(path: Path, rng: np.random.Generator, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Smooth colours: JPEG keeps them, and the photo's Canny edges stay few.
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-1.5, 1.5, size=(2, 3))
    pixels = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)


# ------------------------------------------------------------------------------- DeepFashion

# (path below img/, keypoints {COCO part index (0-based): (x, y)}) of the fixture's images.
# Image 0 has exactly one limb (parts 1 and 2: neck -> right shoulder) and part 3 missing; the
# others have a few more joints. Sizes 40 wide x 48 high (not square, not the model's size).
DF_WIDTH, DF_HEIGHT = 40, 48
DF_IMAGES = [
    ("WOMEN/Dresses/id_00000001/01_1_front.jpg", {1: (20.0, 10.0), 2: (12.0, 10.0)}),
    ("WOMEN/Dresses/id_00000001/01_2_side.jpg", {1: (18.0, 12.0), 2: (10.0, 14.0), 5: (26, 12)}),
    ("WOMEN/Dresses/id_00000002/02_1_front.jpg", {0: (20, 5), 1: (20, 14), 8: (16, 30)}),
    ("WOMEN/Dresses/id_00000002/02_3_back.jpg", {1: (21, 13), 2: (13, 13), 3: (11, 25)}),
    ("MEN/Denim/id_00000003/01_1_front.jpg", {1: (20, 12), 5: (28, 12), 6: (30, 24)}),
    ("MEN/Denim/id_00000003/01_4_full.jpg", {1: (19, 11), 11: (24, 30), 12: (25, 40)}),
]


def write_keypoints(base: Path, joints: dict[int, tuple[float, float]]) -> None:
    """OpenPose files: candidate rows (x, y, score, id), one subset row of 18 indices + 2."""
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate = []
    subset = -np.ones(20)
    for n, (part, (x, y)) in enumerate(sorted(joints.items())):
        candidate.append((x, y, 0.9, n))
        subset[part] = n
    subset[18], subset[19] = 10.0, len(joints)
    np.savetxt(f"{base}_candidate.txt", np.array(candidate, dtype=np.float64).reshape(-1, 4))
    np.savetxt(f"{base}_subset.txt", subset[None])


def write_deepfashion(root: Path, seed: int = 0, *, backslashes: str = "mixed") -> Path:
    """Six images of three people; train.txt = images 0-3, val.txt = images 5 then 4 (against
    natural order: the release keeps DeepFashion's list order).

    Training: self pairs 0 <-> 1 and 3 -> 2; image 2 falls back to the last entry of its ref line,
    image 4, another person (an identity mismatch). Test: image 4 has no self pair, its
    ref_test line lists 5 then 0 (the release's rule takes the last, 0); image 5 has the self
    pair 5 -> 4 and the ref_test line 0, 1 (the release's rule takes the partner, 4). So the
    self pair, the first and the last entry all differ.

    `backslashes`: "mixed" writes train.txt and the self pairs of images 0 and 1 with
    backslashes, every other item with slashes (dynast reads both; the release would miss those
    self pairs, as it compares the keys of the two lists as written); "all" writes every item with
    backslashes, as CoCosNet distributes the lists."""
    rng = np.random.default_rng(seed)
    keys = []
    for below, joints in DF_IMAGES:
        write_jpeg(root / "img" / below, rng, DF_WIDTH, DF_HEIGHT)
        write_keypoints(root / "pose" / Path(below).with_suffix(""), joints)
        keys.append(f"img/{below}")
    win = [k.replace("/", "\\") for k in keys]

    def write(name: str, lines: list[list[int]], mixed: list[str]) -> None:
        names = win if backslashes == "all" else mixed
        (root / name).write_text(
            "\n".join(",".join(names[i] for i in line) for line in lines) + "\n"
        )

    write("train.txt", [[0], [1], [2], [3]], win)
    write("val.txt", [[5], [4]], keys)
    write("deepfashion_self_pair.txt", [[0, 1], [1, 0], [3, 2], [5, 4]], win[:2] + keys[2:])
    write("deepfashion_ref.txt", [[0, 2, 3], [1, 3], [2, 5, 4], [3, 0]], keys)
    write("deepfashion_ref_test.txt", [[4, 5, 0], [5, 0, 1]], keys)
    return root


# ------------------------------------------------------------------------------- CelebA-HQ

CELEBA_NUMBERS = [5, 2001, 4002, 29922]  # mask folders 0, 1, 2, 14
CELEBA_SIZE = 40  # photos; masks are written at half size, as CelebAMask-HQ (1024 / 512)


def write_part(path: Path, box: tuple[int, int, int, int], size: int) -> None:
    """A 0/255 part mask (RGB, as CelebAMask-HQ's) with one filled rectangle (x0, y0, x1, y1)."""
    mask = np.zeros((size, size, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def write_celebahq(root: Path, seed: int = 0) -> Path:
    """Four faces; every face has a skin part and a nose, face 5 also hair; others missing.
    train.txt = 4002, 2001, 5 (the release natural-sorts it: 5, 2001, 4002); val.txt = 29922."""
    rng = np.random.default_rng(seed)
    half = CELEBA_SIZE // 2
    for n in CELEBA_NUMBERS:
        write_jpeg(root / "CelebA-HQ-img" / f"{n}.jpg", rng, CELEBA_SIZE, CELEBA_SIZE)
        folder = root / "CelebAMask-HQ-mask-anno" / str(n // 2000)
        write_part(folder / f"{n:05d}_skin.png", (4, 4, 16, 18), half)
        write_part(folder / f"{n:05d}_nose.png", (8, 8, 12, 12), half)
        if n == 5:
            write_part(folder / f"{n:05d}_hair.png", (2, 0, 18, 5), half)
    (root / "train.txt").write_text("4002\n2001\n5\n")
    (root / "val.txt").write_text("29922\n")
    (root / "celebahq_ref.txt").write_text(
        "5.jpg,2001.jpg,4002.jpg\n2001.jpg,5.jpg\n4002.jpg,2001.jpg,5.jpg\n"
    )
    (root / "celebahq_ref_test.txt").write_text("29922.jpg,5.jpg,2001.jpg\n")
    return root


# ------------------------------------------------------------------------------- ADE20K

ADE_TRAIN = ["ADE_train_00000002", "ADE_train_00000010", "ADE_train_00000001"]
ADE_VAL = ["ADE_val_00000001", "ADE_val_00000002"]


def ade_label(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Blocks of classes in 0..150 (0 = unknown), 150 included, and a band of the ignore value
    255 (as real ADE20K annotations have; CoCosNet reads it as 150) across the bottom left."""
    label = np.zeros((height, width), dtype=np.uint8)
    label[: height // 2, : width // 2] = rng.integers(1, 149)
    label[height // 2 :, width // 2 :] = 150
    label[: height // 2, width // 2 :] = rng.integers(1, 149)
    label[height * 3 // 4 :, : width // 2] = 255
    return label


def write_ade20k(root: Path, layout: str = "official", seed: int = 0) -> Path:
    """Three training and two validation photos (36 wide, 30 high) with label maps."""
    rng = np.random.default_rng(seed)
    for sub, names in (("training", ADE_TRAIN), ("validation", ADE_VAL)):
        for name in names:
            if layout == "official":
                image_dir, label_dir = root / "images" / sub, root / "annotations" / sub
            else:
                image_dir = label_dir = root / sub
            write_jpeg(image_dir / f"{name}.jpg", rng, 36, 30)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ade_label(rng, 36, 30)).save(label_dir / f"{name}.png")
    (root / "ade20k_ref.txt").write_text(
        "ADE_train_00000001.jpg,ADE_train_00000002.jpg,ADE_train_00000010.jpg\n"
        "ADE_train_00000002.jpg,ADE_train_00000010.jpg,ADE_train_00000001.jpg\n"
        "ADE_train_00000010.jpg,ADE_train_00000001.jpg\n"
    )
    (root / "ade20k_ref_test.txt").write_text(
        "ADE_val_00000001.jpg,ADE_train_00000010.jpg,ADE_train_00000002.jpg\n"
        "ADE_val_00000002.jpg,ADE_train_00000001.jpg\n"
    )
    return root
