"""Data-side costs: the DeepFashion pose encoding at 256 px, one training sample of DeepFashion and
CelebA-HQ edges (process CPU time on one core), training samples per second through a DataLoader
for every dataset kind with 1 and 4 workers (wall time), and the exemplar-list tool
(`dynast.data.pairs`) at 100,000 images on synthetic label arrays (docs/data.md).

    python -m benchmarks.bench_data [--parts pose,samples,loader,pairs] [--pose-samples 200]
        [--loader-samples 40] [--workers 1,4] [--kinds synthetic,folder,...] [--size 256]
        [--csv PATH]
        [--pairs-images 100000]

The loader rows read each kind's training split at 256 px with its preset's data settings from a
tree of the real files' sizes (`benchmarks.data_trees`), batches of 5 (the release recipe's per
process), and are appended to benchmarks/results/data.csv with the CPU's model and bf16 flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks import data_trees
from benchmarks.measure import ROOT, append_rows, environment
from dynast.data import build_dataset
from dynast.data.augment import Transform
from dynast.data.config import DATA_KINDS
from dynast.data.pairs import PairsOptions, build_lists, features_in_chunks
from dynast.data.pose_encoding import encode_pose
from train.precision import cpu_bf16

PARTS = ("pose", "samples", "loader", "pairs")
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "data.csv"
COLUMNS = [
    "timestamp", "cpu", "native_bf16", "torch", "commit", "kind", "image_size", "batch",
    "workers", "samples", "samples_per_s", "cpu_ms_per_sample",
]  # fmt: skip
LOADER_BATCH = 5


def bench_pose(samples: int, size: int = 256) -> float:
    rng = np.random.default_rng(0)
    poses = [data_trees.random_pose(rng, size) for _ in range(samples)]
    transform = Transform.plain(size)
    encode_pose(*poses[0], size, size, transform)  # warm-up
    # CPU time of this process: the figure that matters for a loader worker, and robust to other
    # jobs sharing the machine.
    started = time.process_time()
    for candidate, subset in poses:
        encode_pose(candidate, subset, size, size, transform)
    return (time.process_time() - started) / samples


def cpu_per_sample(dataset: Dataset, samples: int) -> float:
    """Process CPU seconds per `dataset[i]`, after one untimed read."""
    dataset[0]
    started = time.process_time()
    for i in range(samples):
        dataset[i % len(dataset)]
    return (time.process_time() - started) / samples


def bench_deepfashion_sample(samples: int) -> float:
    """CPU seconds per training sample of a DeepFashion tree of 256 px JPEGs: two photos
    decoded and resized, two pose files parsed, two encodings (target and exemplar)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = data_trees.write_deepfashion(Path(tmp))
        return cpu_per_sample(build_dataset(cfg, "train"), samples)


def bench_celebahq_sample(samples: int) -> float:
    """CPU seconds per self-reference training sample of CelebAMask-HQ-sized files (1024 px
    photos, 512 px masks of 13 parts) at load 286 / crop 256 with flips: one photo and its edge
    encoding, viewed under two draws."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = data_trees.write_celebahq(Path(tmp))
        cfg = dataclasses.replace(cfg, real_reference_probability=0.0)
        return cpu_per_sample(build_dataset(cfg, "train"), samples)


@dataclass(frozen=True)
class LoaderRate:
    samples_per_s: float  # wall time, after the workers' start-up
    cpu_ms_per_sample: float  # CPU time of this process and its workers, start-up included


def loader_rate(dataset: Dataset, workers: int, samples: int, batch: int) -> LoaderRate:
    """Training samples through a DataLoader with `workers` processes: per second of wall time
    after the first batch of each worker (their start-up) has arrived, and CPU time per sample of
    every process (robust to other jobs on the machine; the workers' time is read once they
    have exited)."""
    warm = max(workers, 1)
    batches = warm + -(-samples // batch)
    order = [i % len(dataset) for i in range(batches * batch)]

    def cpu_s() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    cpu_started = cpu_s()
    iterator = iter(DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers))
    for _ in range(warm):
        next(iterator)
    started = time.perf_counter()
    counted = sum(len(item["index"]) for item in iterator)
    wall = time.perf_counter() - started
    del iterator  # joins the workers, so their CPU time is counted
    return LoaderRate(counted / wall, (cpu_s() - cpu_started) / len(order) * 1e3)


def bench_loaders(
    kinds: Sequence[str], workers: Sequence[int], samples: int, size: int = 256
) -> list[dict[str, object]]:
    cpu = cpu_bf16()
    env = environment(torch.device("cpu"))
    rows = []
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            dataset = build_dataset(data_trees.data_config(kind, Path(tmp), size), "train")
            for count in workers:
                rate = loader_rate(dataset, count, samples, LOADER_BATCH)
                print(
                    f"loader {kind:<14} {size} px, {count} worker(s): "
                    f"{rate.samples_per_s:6.1f} samples/s, {rate.cpu_ms_per_sample:7.1f} ms CPU "
                    "per sample"
                )
                rows.append({
                    "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "cpu": cpu.model, "native_bf16": cpu.native, "torch": env["torch"],
                    "commit": env["commit"], "kind": kind, "image_size": size,
                    "batch": LOADER_BATCH, "workers": count, "samples": samples,
                    "samples_per_s": round(rate.samples_per_s, 2),
                    "cpu_ms_per_sample": round(rate.cpu_ms_per_sample, 1),
                })  # fmt: skip
    return rows


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


def _list(text: str, known: Sequence[str], flag: str) -> list[str]:
    items = [item for item in text.split(",") if item]
    unknown = [item for item in items if item not in known]
    if not items or unknown:
        raise SystemExit(
            f"error: {flag} takes a comma-separated list of {list(known)}, got {text!r}"
        )
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--pose-samples", type=int, default=200)
    parser.add_argument("--loader-samples", type=int, default=40, help="timed per row")
    parser.add_argument("--workers", default="1,4", help="DataLoader worker counts")
    parser.add_argument("--kinds", default=",".join(DATA_KINDS), help="dataset kinds")
    parser.add_argument("--size", type=int, default=256, help="image size of the loader rows")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="loader rows go here")
    parser.add_argument("--pairs-images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=8)
    args = parser.parse_args(argv)
    parts = _list(args.parts, PARTS, "--parts")
    kinds = _list(args.kinds, DATA_KINDS, "--kinds")
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        workers = []
    if not workers or min(workers) < 0:
        raise SystemExit(f"error: --workers takes worker counts such as 1,4, got {args.workers!r}")
    if args.size < 32 or args.loader_samples < 1:
        raise SystemExit("error: --size must be at least 32 and --loader-samples at least 1")
    torch.set_num_threads(1)
    # More workers than cores is what the rows measure, not a mistake.
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    import cv2

    cv2.setNumThreads(1)
    if "pose" in parts:
        per_sample = bench_pose(args.pose_samples)
        print(f"pose encoding 256 px: {per_sample * 1e3:.2f} ms CPU per encoding (one core)")
    if "samples" in parts:
        sample = bench_deepfashion_sample(max(args.pose_samples // 4, 8))
        print(
            f"deepfashion training sample 256 px: {sample * 1e3:.2f} ms CPU per sample "
            f"({1 / sample:.0f} samples/s per core)"
        )
        celeba = bench_celebahq_sample(max(args.pose_samples // 20, 4))
        print(
            f"celebahq-edge training sample (1024 px photo, 13 masks, load 286): "
            f"{celeba * 1e3:.1f} ms CPU per sample ({1 / celeba:.0f} samples/s per core)"
        )
    if "loader" in parts:
        print(f"CPU: {cpu_bf16().describe()}; {os.cpu_count()} cores")
        rows = bench_loaders(kinds, workers, args.loader_samples, args.size)
        append_rows(args.csv, COLUMNS, rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    if "pairs" in parts:
        features_s, search_s = bench_pairs(args.pairs_images, args.classes)
        print(
            f"pairs at {args.pairs_images} images, {args.classes} classes: features "
            f"{features_s:.1f} s, search {search_s:.1f} s CPU (one core)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
