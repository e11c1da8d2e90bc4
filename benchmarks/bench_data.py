"""Data-side costs on one CPU core: the DeepFashion pose encoding at 256 px, and the exemplar-list
tool (`dynast.data.pairs`) at 100,000 images on synthetic label arrays (docs/data.md).

    python -m benchmarks.bench_data [--pose-samples 200] [--pairs-images 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dynast.data import DataConfig
from dynast.data.augment import Transform
from dynast.data.celebahq_edge import CelebAHQEdgeDataset
from dynast.data.deepfashion import DeepFashionDataset
from dynast.data.edge_encoding import INNER_PARTS
from dynast.data.pairs import PairsOptions, build_lists, features_in_chunks
from dynast.data.pose_encoding import encode_pose


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


def bench_pose(samples: int, size: int = 256) -> float:
    rng = np.random.default_rng(0)
    poses = [random_pose(rng, size) for _ in range(samples)]
    transform = Transform.plain(size)
    encode_pose(*poses[0], size, size, transform)  # warm-up
    # CPU time of this process: the figure that matters for a loader worker, and robust to other
    # jobs sharing the machine.
    started = time.process_time()
    for candidate, subset in poses:
        encode_pose(candidate, subset, size, size, transform)
    return (time.process_time() - started) / samples


def bench_deepfashion_sample(samples: int, size: int = 256) -> float:
    """CPU seconds per training sample of a DeepFashion tree of size x size JPEGs: two photos
    decoded and resized, two pose files parsed, two encodings (target and exemplar)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        keys = []
        for n in range(8):
            below = f"WOMEN/Dresses/id_{n // 2:08d}/0{n % 2 + 1}_1_front"
            (root / "img" / below).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "img" / f"{below}.jpg", quality=90)
            candidate, subset = random_pose(rng, size)
            (root / "pose" / below).parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(root / "pose" / f"{below}_candidate.txt", candidate)
            np.savetxt(root / "pose" / f"{below}_subset.txt", np.r_[subset, 10, 16][None])
            keys.append(f"img/{below}.jpg")
        (root / "train.txt").write_text("\n".join(keys) + "\n")
        pairs = [f"{keys[i]},{keys[i ^ 1]}" for i in range(8)]
        (root / "deepfashion_self_pair.txt").write_text("\n".join(pairs) + "\n")
        (root / "deepfashion_ref.txt").write_text("\n".join(pairs) + "\n")
        cfg = DataConfig(kind="deepfashion", root=tmp, num_classes=20, image_size=size)
        dataset = DeepFashionDataset(cfg, "train")
        dataset[0]
        started = time.process_time()
        for i in range(samples):
            dataset[i % len(dataset)]
        return (time.process_time() - started) / samples


def bench_celebahq_sample(samples: int) -> float:
    """CPU seconds per training sample of CelebAMask-HQ-sized files (1024 px photos, 512 px
    masks of 13 parts) at load 286 / crop 256 with flips: two photos, two edge encodings."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        (root / "CelebA-HQ-img").mkdir()
        yy, xx = np.mgrid[0:1024, 0:1024]
        for n in range(4):
            smooth = (np.sin(xx / (40 + 10 * n)) + np.cos(yy / 55)) * 60 + 128
            pixels = np.clip(smooth[..., None] + rng.normal(0, 8, (1024, 1024, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"CelebA-HQ-img/{n}.jpg")
            masks = root / "CelebAMask-HQ-mask-anno/0"
            masks.mkdir(parents=True, exist_ok=True)
            for k, part in enumerate(INNER_PARTS):
                mask = np.zeros((512, 512), dtype=np.uint8)
                mask[100 + 10 * k : 300 + 5 * k, 120 + 8 * k : 320 - 4 * k] = 255
                Image.fromarray(mask).convert("RGB").save(masks / f"{n:05d}_{part}.png")
        (root / "train.txt").write_text("0\n1\n2\n3\n")
        cfg = DataConfig(
            kind="celebahq-edge", root=tmp, num_classes=15, image_size=256, load_size=286,
            flip=True,
        )  # fmt: skip
        dataset = CelebAHQEdgeDataset(cfg, "train")
        dataset[0]
        started = time.process_time()
        for i in range(samples):
            dataset[i % len(dataset)]
        return (time.process_time() - started) / samples


def synthetic_labels(count: int, classes: int, size: int = 64) -> np.ndarray:
    """Blocky label maps: a 4x4 grid of random classes upsampled (as scene layouts are)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, classes, size=(count, 4, 4), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)


def bench_pairs(count: int, classes: int) -> tuple[float, float]:
    labels = synthetic_labels(count, classes)
    options = PairsOptions(k=5, test_fraction=0.1, grid=4)
    started = time.process_time()
    features = features_in_chunks(labels, classes, options)
    middle = time.process_time()
    build_lists([f"{i:06d}" for i in range(count)], features, options, progress=False)
    return middle - started, time.process_time() - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pose-samples", type=int, default=200)
    parser.add_argument("--pairs-images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    per_sample = bench_pose(args.pose_samples)
    print(f"pose encoding 256 px: {per_sample * 1e3:.2f} ms CPU per encoding (one core)")
    sample = bench_deepfashion_sample(max(args.pose_samples // 4, 8))
    print(
        f"deepfashion training sample 256 px: {sample * 1e3:.2f} ms CPU per sample "
        f"({1 / sample:.0f} samples/s per core)"
    )
    celeba = bench_celebahq_sample(max(args.pose_samples // 20, 4))
    print(
        f"celebahq-edge training sample (1024 px photo, 13 masks, load 286): {celeba * 1e3:.1f} "
        f"ms CPU per sample ({1 / celeba:.0f} samples/s per core)"
    )
    features_s, search_s = bench_pairs(args.pairs_images, args.classes)
    print(
        f"pairs at {args.pairs_images} images, {args.classes} classes: features "
        f"{features_s:.1f} s, search {search_s:.1f} s CPU (one core)"
    )


if __name__ == "__main__":
    main()
