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


def write_deepfashion(root: Path, seed: int = 0) -> Path:
    """Six images of three people; train = images 0-3 (backslashes, as CoCosNet's lists),
    val = images 4-5. Self pairs: 0 <-> 1; image 2 falls back to its ref line's last entry,
    another person (3 is of id 2 -> same; 2 -> image 4 of id 3: a mismatch)."""
    rng = np.random.default_rng(seed)
    keys = []
    for below, joints in DF_IMAGES:
        write_jpeg(root / "img" / below, rng, DF_WIDTH, DF_HEIGHT)
        write_keypoints(root / "pose" / Path(below).with_suffix(""), joints)
        keys.append(f"img/{below}")
    win = [k.replace("/", "\\") for k in keys]
    (root / "train.txt").write_text("\n".join(win[:4]) + "\n")
    (root / "val.txt").write_text("\n".join(keys[4:]) + "\n")
    (root / "deepfashion_self_pair.txt").write_text(
        f"{win[0]},{win[1]}\n{win[1]},{win[0]}\n{keys[3]},{keys[2]}\n"
    )
    (root / "deepfashion_ref.txt").write_text(
        "\n".join(
            [
                f"{keys[0]},{keys[2]},{keys[3]}",
                f"{keys[1]},{keys[3]}",
                f"{keys[2]},{keys[5]},{keys[4]}",
                f"{keys[3]},{keys[0]}",
            ]
        )
        + "\n"
    )
    (root / "deepfashion_ref_test.txt").write_text(
        f"{keys[4]},{keys[5]},{keys[0]}\n{keys[5]},{keys[4]}\n"
    )
    return root
