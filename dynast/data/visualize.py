"""Grids of pairs, to look at data before training.

CLI: python -m dynast.data.visualize --out grid.png [--root DIR] [--split test] [--count 6]
draws target layout, target, exemplar layout and exemplar for the first pairs of a split, from
the synthetic generator or (with --root) from a folder dataset.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .build import build_dataset
from .config import DataConfig
from .folder import image_pixels, write_png
from .palette import semantic_to_rgb
from .sample import Sample


def pair_grid(samples: Sequence[Sample], *, zoom: int = 2, gap: int = 2) -> np.ndarray:
    """One row per sample: target layout, target (grey if absent), exemplar layout, exemplar;
    each tile upscaled by `zoom` (nearest), white gaps. Returns [H, W, 3] uint8."""
    if not samples:
        raise ValueError("pair_grid needs at least one sample")
    rows = []
    for s in samples:
        layouts = semantic_to_rgb(torch.stack([s["semantic"], s["exemplar_semantic"]]))
        target = s["target"] if bool(s["has_target"]) else torch.zeros_like(s["target"])
        tiles = [layouts[0], target, layouts[1], s["exemplar"]]
        rows.append([image_pixels(t).repeat(zoom, 0).repeat(zoom, 1) for t in tiles])
    th, tw = rows[0][0].shape[:2]
    grid = np.full((len(rows) * (th + gap) + gap, 4 * (tw + gap) + gap, 3), 255, dtype=np.uint8)
    for r, tiles in enumerate(rows):
        for c, tile in enumerate(tiles):
            y, x = gap + r * (th + gap), gap + c * (tw + gap)
            grid[y : y + th, x : x + tw] = tile
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynast.data.visualize",
        description="Draw a grid of pairs (target layout, target, exemplar layout, exemplar).",
    )
    parser.add_argument("--out", required=True, type=Path, help="PNG file to write")
    parser.add_argument("--root", help="folder dataset to draw (default: synthetic data)")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--count", type=int, default=6, help="number of pairs (rows)")
    parser.add_argument("--first", type=int, default=0, help="index of the first pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--textures", default="auto", choices=("auto", "photo", "procedural"))
    parser.add_argument("--zoom", type=int, default=2, help="pixel repeat per tile")
    args = parser.parse_args(argv)
    if args.count < 1 or args.first < 0 or args.zoom < 1:
        parser.error("--count and --zoom must be >= 1 and --first >= 0")
    try:
        if args.root is None:
            cfg = DataConfig(
                seed=args.seed,
                image_size=args.image_size,
                num_classes=args.num_classes,
                textures=args.textures,
            )
        else:
            cfg = DataConfig(
                kind="folder",
                root=args.root,
                image_size=args.image_size,
                num_classes=args.num_classes,
            )
        dataset = build_dataset(cfg, args.split)
        stop = min(len(dataset), args.first + args.count)
        if stop <= args.first:
            raise ValueError(
                f"--first {args.first}: the {args.split} split has {len(dataset)} pairs"
            )
        grid = pair_grid([dataset[i] for i in range(args.first, stop)], zoom=args.zoom)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    write_png(args.out, grid)
    print(f"wrote {args.out}: pairs {args.first}..{stop - 1} of {args.split} ({cfg.kind})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
