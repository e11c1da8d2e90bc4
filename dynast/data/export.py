"""Write the synthetic dataset in the plain folder format, so it can be read back by the folder
loader, inspected, or shared.

    python -m dynast.data.export --out DIR [--count-train N] [--count-test N] [--seed S]
        [--image-size 64] [--num-classes 8] [--textures auto] [--force]

Pair i of a split becomes `<split>_<i>_target` and `<split>_<i>_exemplar` (images/*.png and
labels/*.png) and one row of pairs_<split>.csv; dataset.json records the generator's settings.
The folder is built under a temporary name beside DIR and renamed into place at the end, so DIR
is either the complete export or untouched. A non-empty DIR is refused unless --force, which
replaces it entirely.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from ..output_folder import swap_in
from .config import SPLITS, DataConfig
from .folder import (
    IMAGE_DIR,
    INFO_FILE,
    LABEL_DIR,
    DatasetInfo,
    image_pixels,
    pairs_file,
    write_info,
    write_label,
    write_pairs,
    write_png,
)
from .synthetic import SyntheticDataset


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: folder is not empty; pass --force to replace it")


def export_synthetic(
    cfg: DataConfig, out: Path, *, force: bool = False, progress: bool = True
) -> Path:
    """Write both splits of the synthetic dataset `cfg` (lengths from train_length /
    test_length) to `out` in the folder format. Returns `out`."""
    if cfg.kind != "synthetic":
        raise ValueError(f"export_synthetic needs DataConfig.kind='synthetic', got {cfg.kind!r}")
    out = Path(out).resolve()  # a name to build the staging folder's name beside it
    _check_destination(out, force)
    datasets = {split: SyntheticDataset(cfg, split) for split in SPLITS}
    staging = out.with_name(f".{out.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        bar = tqdm(
            total=sum(len(d) for d in datasets.values()),
            desc=f"export {out.name}",
            unit="pair",
            disable=not progress,
        )
        with bar:
            for split, dataset in datasets.items():
                digits = max(6, len(str(len(dataset) - 1)))
                pairs = []
                for i in range(len(dataset)):
                    sample = dataset[i]
                    names = (f"{split}_{i:0{digits}d}_target", f"{split}_{i:0{digits}d}_exemplar")
                    for name, image, label in (
                        (names[0], sample["target"], sample["label"]),
                        (names[1], sample["exemplar"], sample["exemplar_label"]),
                    ):
                        write_png(staging / IMAGE_DIR / f"{name}.png", image_pixels(image))
                        write_label(
                            staging / LABEL_DIR / f"{name}.png", label.numpy(), cfg.num_classes
                        )
                    pairs.append(names)
                    bar.update()
                write_pairs(pairs_file(staging, split), pairs)
        class_names = ("background", *(f"class_{c}" for c in range(1, cfg.num_classes)))
        source = {"generator": "dynast.data.synthetic", **cfg.to_dict()}
        write_info(staging / INFO_FILE, DatasetInfo(cfg.num_classes, class_names), source)
        _check_destination(out, force)  # again: something may have appeared meanwhile
        swap_in(staging, out, out.with_name(f".{out.name}.{os.getpid()}.old"))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dynast.data.export",
        description="Write the synthetic dataset in the plain folder format (docs/data.md).",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--count-train", type=int, default=1000, help="train pairs")
    parser.add_argument("--count-test", type=int, default=100, help="test pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=8, help="background included")
    parser.add_argument("--textures", default="auto", choices=("auto", "photo", "procedural"))
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = DataConfig(
            seed=args.seed,
            image_size=args.image_size,
            num_classes=args.num_classes,
            train_length=args.count_train,
            test_length=args.count_test,
            textures=args.textures,
        )
        export_synthetic(cfg, args.out, force=args.force, progress=not args.no_progress)
    except (ValueError, FileExistsError) as e:
        parser.error(str(e))
    print(
        f"wrote {args.out}: {args.count_train} train + {args.count_test} test pairs, "
        f"{cfg.image_size}px, {cfg.num_classes} classes, textures={cfg.textures}, seed={cfg.seed}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
