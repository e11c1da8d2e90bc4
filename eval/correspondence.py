"""Correspondence accuracy of a generator on the synthetic dataset, per scale.

For every attention block, the best match of a query position is the first of its top-k (the key
with the largest attention score). The accuracy of a block is the fraction of query positions of
its grid whose best match lands on an exemplar position of the same class (classes read at grid
cell centres: `dynast.data.correspondence_accuracy`), averaged over pairs. "Per scale" reports the
last block of each scale: the final matches of that scale. The synthetic data knows every pixel's
class in both images, which is what makes this measurable.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dynast.config import DynaSTConfig
from dynast.data import DataConfig, build_dataset, correspondence_accuracy
from dynast.generator import Generator
from dynast.io import load_generator, resolve_generator_dir
from eval.device import resolve_device
from eval.provenance import append_results, check_results_file, environment, now


@dataclass(frozen=True)
class CorrespondenceResult:
    """Mean accuracy per attention block (coarsest first) and per scale (its last block)."""

    block_sizes: tuple[tuple[int, int], ...]
    per_block: tuple[float, ...]
    per_scale: dict[str, float]
    count: int

    def to_dict(self) -> dict[str, object]:
        return {
            "per_scale": self.per_scale,
            "per_block": [
                {"block": j, "size": f"{h}x{w}", "accuracy": a}
                for j, ((h, w), a) in enumerate(zip(self.block_sizes, self.per_block, strict=True))
            ],
            "count": self.count,
        }


def correspondence_by_block(
    generator: Generator, batches: Iterable[dict], device: torch.device, total: int | None = None
) -> CorrespondenceResult:
    """Run `generator` on sample batches and measure every block's best-match accuracy."""
    cfg: DynaSTConfig = generator.config
    sums: list[float] | None = None
    sizes: list[tuple[int, int]] = []
    count = 0
    with torch.no_grad(), tqdm(total=total, desc="correspondence", unit="pair", leave=False) as bar:
        for batch in batches:
            output = generator(
                batch["semantic"].to(device),
                batch["exemplar"].to(device),
                batch["exemplar_semantic"].to(device),
            )
            sizes = list(output.block_sizes)
            if sums is None:
                sums = [0.0] * len(sizes)
            for j, (topk, grid) in enumerate(zip(output.topks, sizes, strict=True)):
                accuracy = correspondence_accuracy(
                    topk[..., 0], batch["label"], batch["exemplar_label"], grid
                )
                sums[j] += float(accuracy.sum())
            count += batch["semantic"].shape[0]
            bar.update(batch["semantic"].shape[0])
    if sums is None or count == 0:
        raise ValueError("correspondence accuracy: no pairs were given")
    per_block = tuple(s / count for s in sums)
    per_scale = {}
    for j, (h, w) in enumerate(sizes):
        if (j + 1) % cfg.blocks_per_scale == 0:
            per_scale[f"{h}x{w}"] = per_block[j]
    return CorrespondenceResult(tuple(sizes), per_block, per_scale, count)


def run_corr(args: argparse.Namespace) -> int:
    """`python -m eval corr`: print the accuracies and append a JSON line to --results."""
    if args.count < 1:
        raise ValueError(f"--count: expected >= 1, got {args.count}")
    if args.results is not None:
        check_results_file(args.results)
    device = resolve_device(args.device)
    model_dir = resolve_generator_dir(args.model)
    generator = load_generator(model_dir, device=device)
    cfg = generator.config
    data = DataConfig(
        kind="synthetic",
        num_classes=cfg.semantic_nc,
        image_size=cfg.image_size,
        seed=args.data_seed,
    )
    dataset = build_dataset(data, "test")
    count = min(args.count, len(dataset))
    loader = DataLoader(
        Subset(dataset, range(count)), batch_size=args.batch_size, num_workers=args.workers
    )
    result = correspondence_by_block(generator, loader, device, total=count)

    print(f"correspondence accuracy of {model_dir} on {count} synthetic test pairs")
    print("scale     accuracy")
    for scale, accuracy in result.per_scale.items():
        print(f"{scale:<9} {accuracy:.4f}")
    if args.results is not None:
        record = {
            "time": now(),
            "command": "corr",
            "model": str(model_dir.resolve()),
            "model_config": cfg.to_dict(),
            "data": data.to_dict(),
            "metrics": {"correspondence": result.to_dict()},
            "count": count,
            "implementation": (
                "top-1 of each block's top-k vs class maps at grid cell centres "
                "(dynast.data.correspondence_accuracy); per scale = last block of the scale"
            ),
            "device": str(device),
            "batch_size": args.batch_size,
            "environment": environment(),
        }
        append_results(args.results, record)
    return 0
