"""`python -m eval.generate` / `dynast-generate`: run a trained generator and write its images.

  python -m eval.generate --model RUN_OR_DIR --out OUT [--force] [--count N] [--format png|jpg]
                          [--targets] [--visualize] [--explore] [--batch-size 8] [--cpu]
  python -m eval.generate --model DIR --out OUT --preset deepfashion-256 --data.root DIR
                          [--data.field VALUE ...]
  python -m eval.generate --model DIR --out OUT --semantic LABEL.png --exemplar PHOTO.jpg
                          --exemplar-semantic LABEL.png

--model: a save_pretrained folder, a training run folder (its final/ or newest checkpoint) or one
checkpoint folder of a run. Inputs: the test pairs of a dataset (--preset NAME takes a training
preset's data, --data.field VALUE sets any data field as in training; otherwise the run's own data
config when --model is inside a run folder, else the synthetic data at the model's size, or
--data-root for a folder dataset), or one semantic map plus one exemplar.

Writes OUT/images/<name>.<png|jpg> (names: the pair index, six digits, or --name for one pair);
with --targets the ground truths to OUT/targets/<name>.png (always PNG: they are the real set);
with --visualize, per attention block, the warped exemplar (OUT/warps/), the confidence map
(OUT/conf/) and the number of kept candidates per position (OUT/kept/, scaled by the block's
candidate count) as images, and OUT/panels/<name>.png with everything side by side, labelled;
with --explore, OUT/explore/<name>.html, the correspondence explorer of each pair (eval.explore),
and OUT/explore/index.html linking them when there are several; and OUT/generation.json
recording how the images were made. OUT must be new or empty: `--force` replaces a folder whole
(never a training run folder, nor one holding the inputs), so every file in OUT comes from one
call. The images are written beside it (`.OUT.partial`) and swapped in when all are done.
Several GPUs: `accelerate launch -m eval.generate ...` splits the pairs between processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from dynast.config import DynaSTConfig
from dynast.data import DataConfig, build_dataset
from dynast.data.folder import read_image, read_label
from dynast.data.presets import preset_data
from dynast.data.sample import Sample, build_sample
from dynast.generator import Generator
from dynast.io import load_generator, resolve_generator_dir
from dynast.output_folder import check_output_folder, clear, staging_path, swap_in
from dynast.overrides import apply_overrides
from dynast.run_layout import RUN_CONFIG_FILE
from eval.attention_export import AttentionRecorder, last_blocks, scale_attention
from eval.explore import explore_page, index_page
from eval.model_input import CLASSES, input_kind
from eval.provenance import environment, now
from eval.visualize import (
    block_label,
    candidate_counts,
    heat_pixels,
    sample_panel,
    semantic_pixels,
    to_pixels,
)
from kernels.files import write_atomically

FORMATS = {"png": "PNG", "jpg": "JPEG"}
FORMAT_NOTE = (
    "note: writing JPEG. The file format moves FID (JPEG artefacts: one CelebA-HQ FID went from "
    "14.3 to 16.95 between PNG and JPEG outputs); compare numbers only at one format. "
    "`python -m eval calc` records the format with every result."
)


# ---------------------------------------------------------------------------------------------
# inputs


def find_run_config(model_dir: Path) -> tuple[Path, dict] | None:
    """The run's config.json ({"model", "data", "train"}) above a generator folder, if any:
    <run>/final, <run>/checkpoints/checkpoint_N/generator or the run folder itself."""
    for folder in [model_dir, *list(model_dir.parents)[:3]]:
        path = folder / RUN_CONFIG_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict) and "data" in data and "model" in data:
                return path, data
    return None


def parse_data_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """`--data.field VALUE` / `--data.field=VALUE` tokens -> [(field, value)], as training takes
    them; anything else is an error naming the token."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if not name.startswith("--data.") or len(name) == len("--data."):
            raise ValueError(
                f"unknown argument {token!r}: data fields are set with --data.field VALUE "
                "(e.g. --data.root DIR); see --help"
            )
        if not eq:
            if i + 1 >= len(tokens):
                raise ValueError(f"{name}: missing value")
            value = tokens[i + 1]
            i += 1
        pairs.append((name[len("--data.") :], value))
        i += 1
    return pairs


def preset_data_config(args: argparse.Namespace, cfg: DynaSTConfig, model_dir: Path) -> DataConfig:
    """--preset NAME (a training preset's data: kind, sizes, options) and --data.* overrides,
    like training; without --preset the overrides apply to the run's data config (else synthetic
    data at the model's size). The image size follows the model unless --data.image_size."""
    if args.preset is not None:
        base = preset_data(args.preset)
    else:
        run = find_run_config(model_dir)
        base = (
            DataConfig.from_dict(run[1]["data"])
            if run is not None
            else DataConfig(num_classes=cfg.semantic_nc, image_size=cfg.image_size)
        )
    pairs = [(f"data.{name}", value) for name, value in args.data_overrides]
    if args.data_root is not None:
        pairs.append(("data.root", args.data_root))
    if not any(name == "image_size" for name, _ in args.data_overrides):
        pairs.append(("data.image_size", str(cfg.image_size)))
    holder = _DataHolder(base)
    return apply_overrides(holder, pairs).data


@dataclass(frozen=True)
class _DataHolder:
    """Lets the training override parser (dotted names from a root dataclass) set data.*."""

    data: DataConfig


def data_config(args: argparse.Namespace, cfg: DynaSTConfig, model_dir: Path) -> DataConfig:
    """Which dataset's test pairs to generate: --preset / --data.*, else --data-root, else the
    run's, else synthetic."""
    if getattr(args, "preset", None) is not None or getattr(args, "data_overrides", None):
        return preset_data_config(args, cfg, model_dir)
    if args.data_root is not None:
        return DataConfig(
            kind="folder",
            root=args.data_root,
            num_classes=cfg.semantic_nc,
            image_size=cfg.image_size,
        )
    run = None if args.synthetic else find_run_config(model_dir)
    if run is not None:
        path, data = run
        try:
            return DataConfig.from_dict(data["data"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: its 'data' section is not a DataConfig: {error}") from error
    return DataConfig(
        kind="synthetic",
        num_classes=cfg.semantic_nc,
        image_size=cfg.image_size,
        seed=args.data_seed,
    )


def read_semantic(path: Path, size: int, num_classes: int) -> np.ndarray:
    """A label map as class indices [size, size]: a class-index PNG (the folder format) or a
    .npy [H, W] integer array; nearest resize."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"{path}: expected a [H, W] integer class map, got {array.dtype} {array.shape}"
            )
        if array.min() < 0 or array.max() >= num_classes:
            raise ValueError(f"{path}: class indices must lie in [0, {num_classes})")
        label = torch.from_numpy(array.astype(np.int64))[None, None].float()
        return F.interpolate(label, size=(size, size), mode="nearest")[0, 0].long().numpy()
    return read_label(path, size, num_classes)


class SinglePair(Dataset):
    """One (semantic map, exemplar) pair given as files, at the model's image size."""

    def __init__(self, args: argparse.Namespace, cfg: DynaSTConfig) -> None:
        for flag in ("exemplar", "exemplar_semantic"):
            if getattr(args, flag) is None:
                raise ValueError(f"--semantic needs --{flag.replace('_', '-')} too")
        paths = {k: Path(getattr(args, k)) for k in ("semantic", "exemplar", "exemplar_semantic")}
        for flag, path in paths.items():
            if not path.is_file():
                raise ValueError(f"--{flag.replace('_', '-')}: {path} does not exist")
        size, k = cfg.image_size, cfg.semantic_nc
        self.sample = build_sample(
            label=read_semantic(paths["semantic"], size, k),
            target=None,
            exemplar_label=read_semantic(paths["exemplar_semantic"], size, k),
            exemplar=read_image(paths["exemplar"], size),
            num_classes=k,
            index=0,
        )
        self.name = args.name or paths["semantic"].stem

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> Sample:
        if index != 0:
            raise IndexError(index)
        return self.sample


# ---------------------------------------------------------------------------------------------
# outputs


def write_image(path: Path, pixels: np.ndarray, fmt: str, quality: int) -> None:
    """Write uint8 [H, W, 3] through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": quality, "subsampling": 0} if fmt == "jpg" else {}
    write_atomically(
        path, lambda tmp: Image.fromarray(pixels).save(tmp, format=FORMATS[fmt], **options)
    )


@dataclass(frozen=True)
class OutputLayout:
    root: Path
    fmt: str
    quality: int

    def image(self, name: str) -> Path:
        return self.root / "images" / f"{name}.{self.fmt}"

    def target(self, name: str) -> Path:
        return self.root / "targets" / f"{name}.png"

    def block(self, kind: str, name: str, block: int, size: tuple[int, int]) -> Path:
        return self.root / kind / f"{name}_block{block}_{size[0]}x{size[1]}.png"

    def panel(self, name: str) -> Path:
        return self.root / "panels" / f"{name}.png"

    def explore(self, name: str) -> Path:
        return self.root / "explore" / f"{name}.html"


def write_batch(
    batch: Sample,
    output,
    names: list[str],
    layout: OutputLayout,
    cfg: DynaSTConfig,
    *,
    targets: bool,
    visualize: bool,
    kind: str = CLASSES,
    recorder: AttentionRecorder | None = None,
) -> None:
    """Write the generated images (and what was asked for) of one batch. `kind`: the semantic
    input's kind (eval.model_input), for its picture; `recorder`: the batch's attention, for the
    explorer pages (--explore)."""
    size = tuple(output.image.shape[-2:])
    counts = candidate_counts(cfg, output.block_sizes)
    for b, name in enumerate(names):
        generated = to_pixels(output.image[b])
        write_image(layout.image(name), generated, layout.fmt, layout.quality)
        has_target = bool(batch["has_target"][b])
        if targets and has_target:
            write_image(layout.target(name), to_pixels(batch["target"][b]), "png", 0)
        if recorder is not None:
            write_explore_page(batch, output, b, name, layout, cfg, kind, recorder)
        if not visualize:
            continue
        warps, confs, kept = [], [], []
        for j, block_size in enumerate(output.block_sizes):
            warp = to_pixels(output.warps[j][b])
            conf = heat_pixels(output.confs[j][b], 1.0)
            count = heat_pixels(output.kept[j][b], float(counts[j]))
            for kind, pixels in (("warps", warp), ("conf", conf), ("kept", count)):
                write_image(layout.block(kind, name, j, block_size), pixels, "png", 0)
            warps.append(to_pixels(output.warps[j][b], size))
            confs.append(heat_pixels(output.confs[j][b], 1.0, size))
            kept.append(heat_pixels(output.kept[j][b], float(counts[j]), size))
        picture = sample_panel(
            layout=semantic_pixels(batch["semantic"][b], kind),
            exemplar_layout=semantic_pixels(batch["exemplar_semantic"][b], kind),
            exemplar=to_pixels(batch["exemplar"][b]),
            output=generated,
            target=to_pixels(batch["target"][b]) if has_target else None,
            warps=warps,
            confs=confs,
            kept=kept,
            block_labels=[block_label(cfg, j, s) for j, s in enumerate(output.block_sizes)],
        )
        write_image(layout.panel(name), picture, "png", 0)


def write_explore_page(
    batch: Sample,
    output,
    b: int,
    name: str,
    layout: OutputLayout,
    cfg: DynaSTConfig,
    kind: str,
    recorder: AttentionRecorder,
) -> None:
    """The correspondence explorer of sample `b` of a batch (eval.explore)."""
    generator = recorder.generator
    page = explore_page(
        title=f"{cfg.name}: {name}",
        notes=[],
        kind=kind,
        semantic=batch["semantic"][b],
        exemplar_semantic=batch["exemplar_semantic"][b],
        exemplar=batch["exemplar"][b],
        image=output.image[b].float().cpu(),
        scales=scale_attention(generator, output, recorder, b),
        warps=[output.warps[j][b].float().cpu() for j in last_blocks(generator)],
    )
    path = layout.explore(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(page))


def write_explore_index(layout: OutputLayout, names: list[str]) -> None:
    """OUT/explore/index.html: a link and an output thumbnail per explorer page."""
    entries = []
    for name in names:
        with Image.open(layout.image(name)) as image:
            entries.append((name, f"{name}.html", np.asarray(image.convert("RGB"))))
    page = index_page(f"{len(names)} correspondence explorers", entries)
    write_atomically(layout.root / "explore" / "index.html", lambda tmp: tmp.write_text(page))


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynast-generate",
        description="Generate images with a trained DynaST generator (see the module docstring).",
    )
    parser.add_argument("--model", required=True, help="save_pretrained folder, run or checkpoint")
    parser.add_argument("--out", required=True, help="new (or empty) output folder")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty --out whole, once the new images are all written",
    )
    data = parser.add_argument_group("dataset pairs (default: the run's data, else synthetic)")
    data.add_argument("--data-root", default=None, help="a folder dataset (docs/data.md)")
    data.add_argument(
        "--preset",
        default=None,
        help="a training preset's data (e.g. deepfashion-256, with --data.root DIR); any "
        "--data.field VALUE overrides a field, as in training",
    )
    data.add_argument(
        "--synthetic", action="store_true", help="synthetic data even for a run folder"
    )
    data.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (0)")
    data.add_argument("--split", default="test", choices=("train", "test"))
    data.add_argument("--first", type=int, default=0, help="first pair index (0)")
    data.add_argument("--count", type=int, default=None, help="number of pairs (all)")
    single = parser.add_argument_group("one pair instead of a dataset")
    single.add_argument("--semantic", default=None, help="target class map (.png or .npy)")
    single.add_argument("--exemplar", default=None, help="exemplar photo")
    single.add_argument("--exemplar-semantic", default=None, help="exemplar class map")
    single.add_argument("--name", default=None, help="output name (default: --semantic's stem)")
    out = parser.add_argument_group("output")
    out.add_argument("--format", default="png", choices=sorted(FORMATS), help="png (default)")
    out.add_argument("--jpeg-quality", type=int, default=95, help="with --format jpg (95)")
    out.add_argument("--targets", action="store_true", help="also write the ground truths")
    out.add_argument(
        "--visualize", action="store_true", help="warps, confidence and kept-count maps, panels"
    )
    out.add_argument(
        "--explore", action="store_true", help="a correspondence explorer page per pair (HTML)"
    )
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--workers", type=int, default=0, help="DataLoader workers (0)")
    run.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    return parser


def _inputs(args: argparse.Namespace) -> list[str | None]:
    """The files and folders a call reads: a forced --out must not hold any of them."""
    roots = [value for name, value in args.data_overrides if name == "root"]
    singles = (args.semantic, args.exemplar, args.exemplar_semantic)
    return [args.model, args.data_root, *roots, *singles]


def generate(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.cpu)

    def say(message: str) -> None:
        if accelerator.is_main_process:
            print(message, file=sys.stderr)

    model_dir = resolve_generator_dir(args.model, say)
    generator: Generator = load_generator(model_dir, device=accelerator.device)
    cfg = generator.config

    if args.semantic is not None:
        dataset: Dataset = SinglePair(args, cfg)
        indices = [0]
        names = {0: dataset.name}
        kind = CLASSES
        data_description: dict[str, object] = {
            "kind": "single",
            "semantic": args.semantic,
            "exemplar": args.exemplar,
            "exemplar_semantic": args.exemplar_semantic,
        }
    else:
        dcfg = data_config(args, cfg, model_dir)
        if dcfg.num_classes != cfg.semantic_nc:
            raise ValueError(
                f"the data has {dcfg.num_classes} classes but the model reads {cfg.semantic_nc} "
                "semantic channels"
            )
        dataset = build_dataset(dcfg, args.split)
        stop = len(dataset) if args.count is None else min(len(dataset), args.first + args.count)
        if args.first >= stop:
            raise ValueError(
                f"--first {args.first}: the {args.split} split has {len(dataset)} pairs"
            )
        indices = list(range(args.first, stop))
        names = {i: f"{i:06d}" for i in indices}
        kind = input_kind(dcfg.kind)
        data_description = {"kind": dcfg.kind, "config": dcfg.to_dict(), "split": args.split}

    # Checked once the model and the pairs are known to be good, before anything is written.
    out = check_output_folder(args.out, "--out", force=args.force, inputs=_inputs(args))
    staging = staging_path(out)
    layout = OutputLayout(staging, args.format, args.jpeg_quality)
    if args.format == "jpg" and accelerator.is_main_process:
        print(FORMAT_NOTE, file=sys.stderr)
    if accelerator.is_main_process:
        clear(staging)  # left by an interrupted call; a failed one leaves OUT as it was
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()

    with accelerator.split_between_processes(indices) as mine:
        loader = DataLoader(
            Subset(dataset, mine), batch_size=args.batch_size, num_workers=args.workers
        )
        bar = tqdm(
            total=len(indices),
            desc="generate",
            unit="img",
            disable=not accelerator.is_local_main_process,
        )
        with torch.no_grad():
            for batch in loader:
                device = accelerator.device
                recorder = AttentionRecorder(generator) if args.explore else None
                with recorder or nullcontext():
                    output = generator(
                        batch["semantic"].to(device),
                        batch["exemplar"].to(device),
                        batch["exemplar_semantic"].to(device),
                        with_warps=args.visualize or args.explore,
                        with_sparsity=args.visualize,
                    )
                batch_names = [names[int(i)] for i in batch["index"]]
                write_batch(
                    batch, output, batch_names, layout, cfg,
                    targets=args.targets, visualize=args.visualize, kind=kind, recorder=recorder,
                )  # fmt: skip
                bar.update(len(batch_names) * accelerator.num_processes)
        bar.close()
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        record = {
            "time": now(),
            "model": str(model_dir.resolve()),
            "model_config": cfg.to_dict(),
            "data": data_description,
            "count": len(indices),
            "names": f"{names[indices[0]]} .. {names[indices[-1]]}",
            "format": args.format,
            "jpeg_quality": args.jpeg_quality if args.format == "jpg" else None,
            "size": [cfg.image_size, cfg.image_size],
            "targets": args.targets,
            "visualize": args.visualize,
            "explore": args.explore,
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "environment": environment(),
        }
        if args.explore and len(indices) > 1:
            write_explore_index(layout, [names[i] for i in indices])
        path = layout.root / "generation.json"
        write_atomically(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        swap_in(staging, out)
        print(f"wrote {len(indices)} images to {out / 'images'} ({args.format})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        args.data_overrides = parse_data_overrides(rest)
    except ValueError as error:
        parser.error(str(error))
    if args.batch_size < 1 or args.workers < 0 or args.first < 0:
        parser.error("--batch-size must be >= 1, --workers and --first >= 0")
    if args.count is not None and args.count < 1:
        parser.error("--count must be >= 1")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error("--jpeg-quality must be in [1, 100]")
    try:
        return generate(args)
    except (ValueError, OSError) as error:
        print(f"dynast-generate: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
