"""Exemplar lists for a folder dataset: for each image, the k most similar other images.

    python -m dynast.data.pairs --root DIR [--k 5] [--test-fraction 0.1] [--seed 0]
        [--grid 4] [--layout-weight 1.0] [--num-classes K] [--out DIR] [--force]
    (also `dynast-pairs`)

Every image of root/images/ that has a label map in root/labels/ takes part. Similarity of two
label maps (deterministic, no learned features): the cosine similarity of their class histograms
(the fraction of pixels of each class) plus `layout_weight` times the cosine similarity of their
coarse layouts (the class histogram of each cell of a grid x grid partition, concatenated). Both
are L2-normalised vectors, so one matrix product over the concatenated, weighted features gives
the sum; it runs in blocks of queries against all candidates, with the top k kept per block
(ties: the lower name first). The split is a seeded permutation: a `test_fraction` of the images
become test targets; the exemplar candidates of every target are training images (as CoCosNet's
test exemplars come from the training set), never the target itself.

Writes into --out (default: the root), atomically:
    pairs_train.csv, pairs_test.csv           `target,exemplar` with each target's best match:
                                              the folder format's pair lists, ready to train
    exemplars_train.csv, exemplars_test.csv   `target,exemplar_1,...,exemplar_k`, best first
Lists already there are renamed to `<name>.previous`, or `<name>.previous-2`, `-3`, ... when that
name is taken, so a hand-made list set aside by a first run is never replaced by a later run's
backup; a list written again unchanged keeps no copy (--force: replaced without a copy).
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from ..output_folder import set_aside
from .folder import (
    IMAGE_DIR,
    IMAGE_SUFFIXES,
    INFO_FILE,
    LABEL_DIR,
    LABEL_SUFFIX,
    index_files,
    read_info,
    write_atomically,
    write_pairs,
)
from .labels import centre_indices

# Labels are read at this size for the features: enough for coarse histograms, cheap.
FEATURE_SIZE = 64
BLOCK = 1024


@dataclass(frozen=True)
class PairsOptions:
    k: int = 5
    test_fraction: float = 0.1
    seed: int = 0
    grid: int = 4
    layout_weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"--k must be a positive integer, got {self.k!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must be in [0, 1), got {self.test_fraction!r}")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"--grid must be a positive integer, got {self.grid!r}")
        if not self.layout_weight >= 0.0:
            raise ValueError(f"--layout-weight must be >= 0, got {self.layout_weight!r}")


def label_features(labels: np.ndarray, num_classes: int, grid: int, layout_weight: float) -> Tensor:
    """[N, S, S] integer label maps -> [N, K + grid*grid*K] float32 features: the L2-normalised
    class histogram, then the L2-normalised cell histograms times sqrt(layout_weight), so that
    <f_i, f_j> = cos(hist_i, hist_j) + layout_weight * cos(layout_i, layout_j)."""
    n, height, width = labels.shape
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise ValueError(f"label values must lie in [0, {num_classes})")
    cell_y = np.minimum(np.arange(height) * grid // height, grid - 1)
    cell_x = np.minimum(np.arange(width) * grid // width, grid - 1)
    cell = (cell_y[:, None] * grid + cell_x[None, :]).astype(np.int64)  # [S, S]
    flat = torch.from_numpy(
        (cell[None] * num_classes + labels.astype(np.int64)).reshape(n, -1)
        + np.arange(n, dtype=np.int64)[:, None] * (grid * grid * num_classes)
    )
    counts = torch.bincount(flat.flatten(), minlength=n * grid * grid * num_classes)
    layout = counts.reshape(n, grid * grid * num_classes).float()
    histogram = layout.reshape(n, grid * grid, num_classes).sum(1)
    histogram = torch.nn.functional.normalize(histogram, dim=1)
    layout = torch.nn.functional.normalize(layout, dim=1) * float(np.sqrt(layout_weight))
    return torch.cat([histogram, layout], dim=1).contiguous()


def nearest(
    queries: Tensor,
    candidates: Tensor,
    k: int,
    *,
    exclude: Tensor | None = None,
    progress: bool = True,
) -> np.ndarray:
    """For every query row, the indices of the k candidate rows of largest inner product, best
    first, ties to the lower index. `exclude[i]`: a candidate index query i must not get (its own
    image), -1 for none. Returns int64 [Q, k]."""
    if k > candidates.shape[0] - (1 if exclude is not None else 0):
        raise ValueError(
            f"--k {k}: only {candidates.shape[0]} exemplar candidates"
            + (" (the target itself excluded)" if exclude is not None else "")
        )
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    extra = min(k + 8, candidates.shape[0])  # room to resolve ties by index
    with tqdm(total=queries.shape[0], desc="pairs", unit="img", disable=not progress) as bar:
        for start in range(0, queries.shape[0], BLOCK):
            stop = min(start + BLOCK, queries.shape[0])
            scores = queries[start:stop] @ candidates.T  # [b, M]
            if exclude is not None:
                rows = torch.arange(stop - start)
                own = exclude[start:stop]
                keep = own >= 0
                scores[rows[keep], own[keep]] = -torch.inf
            top, index = torch.topk(scores, extra, dim=1)
            for r in range(stop - start):
                # Sort the short list by (score desc, index asc): deterministic ties.
                ranked = np.lexsort((index[r].numpy(), -top[r].numpy()))
                out[start + r] = index[r].numpy()[ranked[:k]]
            bar.update(stop - start)
    return out


def read_label_small(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        label = np.asarray(image).astype(np.int64)
    if label.ndim != 2:
        raise ValueError(f"{path}: label maps must be single-channel, got shape {label.shape}")
    rows = centre_indices(label.shape[0], FEATURE_SIZE)
    cols = centre_indices(label.shape[1], FEATURE_SIZE)
    return label[np.ix_(rows, cols)].astype(np.uint16)


def split_names(names: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) names, each in name order; the test set is a seeded random subset."""
    count = round(len(names) * test_fraction)
    permutation = np.random.default_rng(seed).permutation(len(names))
    test = set(permutation[:count].tolist())
    train_names = [n for i, n in enumerate(names) if i not in test]
    test_names = [n for i, n in enumerate(names) if i in test]
    return train_names, test_names


def features_in_chunks(
    labels: Sequence[np.ndarray] | np.ndarray,
    num_classes: int,
    options: PairsOptions,
    chunk: int = 4096,
) -> Tensor:
    """label_features over [S, S] maps `chunk` at a time (bounded memory at 100,000 images)."""
    parts = []
    for start in range(0, len(labels), chunk):
        stack = np.stack([np.asarray(m) for m in labels[start : start + chunk]])
        parts.append(label_features(stack, num_classes, options.grid, options.layout_weight))
    return torch.cat(parts)


def build_lists(
    names: list[str], features: Tensor, options: PairsOptions, progress: bool
) -> dict[str, list[tuple[str, list[str]]]]:
    """split -> [(target, [k exemplar names])] from features [N, D] in `names` order."""
    train_names, test_names = split_names(names, options.test_fraction, options.seed)
    position = {n: i for i, n in enumerate(names)}
    train_rows = torch.tensor([position[n] for n in train_names], dtype=torch.long)
    candidates = features[train_rows]
    lists = {}
    for split, targets in (("train", train_names), ("test", test_names)):
        if not targets:
            lists[split] = []
            continue
        rows = torch.tensor([position[n] for n in targets], dtype=torch.long)
        exclude = torch.arange(len(targets)) if split == "train" else None
        found = nearest(features[rows], candidates, options.k, exclude=exclude, progress=progress)
        lists[split] = [
            (target, [train_names[j] for j in found[i]]) for i, target in enumerate(targets)
        ]
    return lists


def write_exemplars(path: Path, rows: list[tuple[str, list[str]]], k: int) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["target", *(f"exemplar_{i + 1}" for i in range(k))])
            writer.writerows([target, *found] for target, found in rows)

    write_atomically(path, write)


def make_pairs(
    root: Path,
    out: Path,
    options: PairsOptions,
    *,
    num_classes: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Write the lists for the folder dataset at `root` into `out`; returns pairs per split."""
    root, out = Path(root), Path(out)
    for folder in (IMAGE_DIR, LABEL_DIR):
        if not (root / folder).is_dir():
            raise FileNotFoundError(
                f"{root / folder}: not found (expected the folder format: {IMAGE_DIR}/ and "
                f"{LABEL_DIR}/, docs/data.md)"
            )
    outputs = [
        out / f"{stem}_{split}.csv"
        for stem in ("pairs", "exemplars")
        for split in ("train", "test")
    ]
    info = read_info(root / INFO_FILE)
    labels_index = index_files(root / LABEL_DIR, (LABEL_SUFFIX,))
    images_index = index_files(root / IMAGE_DIR, IMAGE_SUFFIXES)
    names = sorted(n for n in labels_index if n in images_index)
    if len(names) < 2:
        raise ValueError(f"{root}: need at least 2 images with label maps, found {len(names)}")
    labels = [
        read_label_small(labels_index[n][0])
        for n in tqdm(names, desc="labels", unit="img", disable=not progress)
    ]
    largest = max(int(m.max()) for m in labels)
    if num_classes is None:
        num_classes = info.num_classes if info is not None else largest + 1
    if largest >= num_classes:
        raise ValueError(
            f"{root / LABEL_DIR}: class index {largest} is out of range for "
            f"num_classes={num_classes}"
        )
    features = features_in_chunks(labels, num_classes, options)
    lists = build_lists(names, features, options, progress)
    # Lists already there (the synthetic export's, or hand-made ones) are kept beside the new
    # ones rather than lost.
    existing = [] if force else [path for path in outputs if path.exists()]
    kept = {path: set_aside(path, ".previous") for path in existing}
    for split, rows in lists.items():
        write_pairs(out / f"pairs_{split}.csv", [(t, found[0]) for t, found in rows])
        write_exemplars(out / f"exemplars_{split}.csv", rows, options.k)
    for path, backup in kept.items():
        if path.is_file() and filecmp.cmp(path, backup, shallow=False):
            backup.unlink()  # written again unchanged: the copy would only pile up
    return {split: len(rows) for split, rows in lists.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynast.data.pairs",
        description="Exemplar lists (k most similar images) for a folder dataset (docs/data.md).",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder dataset")
    parser.add_argument("--out", type=Path, default=None, help="where to write (the root)")
    parser.add_argument("--k", type=int, default=5, help="exemplar candidates per image (5)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="test share (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (0)")
    parser.add_argument("--grid", type=int, default=4, help="layout grid cells per side (4)")
    parser.add_argument("--layout-weight", type=float, default=1.0, help="layout term (1.0)")
    parser.add_argument("--num-classes", type=int, default=None, help="(dataset.json / max+1)")
    parser.add_argument(
        "--force", action="store_true", help="replace existing lists without keeping .previous"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        options = PairsOptions(
            k=args.k,
            test_fraction=args.test_fraction,
            seed=args.seed,
            grid=args.grid,
            layout_weight=args.layout_weight,
        )
        counts = make_pairs(
            args.root,
            args.out or args.root,
            options,
            num_classes=args.num_classes,
            force=args.force,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        print(f"dynast-pairs: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote exemplar lists for {counts['train']} train + {counts['test']} test images to "
        f"{args.out or args.root} in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
