"""Time the authors' training step: the yardstick dynast's full step is measured against.

    python -m benchmarks.bench_release_step --release-root PATH [--batch 8] [--size 256] [--amp]
    python -m benchmarks.bench_release_step --device cpu --size 128 --batch 1 --csv FILE   # CPU
    python -m benchmarks.bench_release_step --release-root PATH --work generate [--batch 16] [--amp]

Builds the release's generator, discriminator, VGG19 and losses with its DeepFashion training
options (`benchmarks.release_code`; random weights, a random VGG19 file) and times one full
optimiser step exactly as its `Pix2PixTrainer` runs it: `run_generator_one_step` (every generator
term, backward, Adam) then `run_discriminator_one_step`, with its fp16 autocast and loss scaler
under `--amp`. The batch is DeepFashion's as its training command makes it (every pair a self
reference). Reported: median step time and peak memory (all CUDA memory allocated on a GPU, the
process's peak resident set on the CPU). The row goes to `train_step.csv` with backend `release`
and work `full_step`, beside dynast's `full_step` rows from `bench_optimizer_step.py` (the same
work: G and D, every loss term, both optimiser updates) and its `g_step` rows.

`--work generate` times the release's test forward instead, `Pix2PixModel(data, "inference")`
as its test script calls it (no gradients, the generator alone, under its autocast with `--amp`),
at batch 16 unless `--batch` says otherwise: images per second, the yardstick of
`bench_generate.py`. Its row goes to `generate.csv` (backend `release`), beside dynast's.

Without CUDA the default (256 px, batch 8) is refused: pass `--device cpu`, or a `--size` of at
most 64. `--ngf` narrows the release's generator (its DeepFashion width is 64; the row's config
then names the width): a CPU smoke run in seconds with every module of the real one. On a GPU
the row goes to benchmarks/results/train_step.csv unless `--csv` says otherwise; on the CPU only
to an explicit `--csv`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import bench_generate, bench_train_step
from benchmarks.measure import (
    cell,
    csv_destination,
    environment,
    first_line,
    is_out_of_memory,
    median_ms,
    peak_rss_mb,
    step_peak_mb,
    write_rows,
)
from benchmarks.release_code import (
    DEEPFASHION_NGF,
    imported_release,
    random_vgg,
    release_batch,
    release_root,
    write_release_vgg,
)

CONFIG = "release-deepfashion"
TINY_SIZE = 64  # the smallest size the release's two-scale discriminator takes
WORKS = ("full_step", "generate")
DEFAULT_BATCH = {"full_step": 8, "generate": 16}  # bench_optimizer_step's and bench_generate's


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--release-root",
        default=None,
        help="the release's folder (default $DYNAST_RELEASE_ROOT, else ../shared/release-dynast)",
    )
    parser.add_argument(
        "--work",
        choices=WORKS,
        default="full_step",
        help="full_step: the training step (G then D); generate: the test forward",
    )
    parser.add_argument("--batch", type=int, default=None, help="default 8 (generate: 16)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 256)")
    parser.add_argument("--amp", action="store_true", help="the release's fp16 amp (CUDA only)")
    parser.add_argument(
        "--ngf", type=int, default=DEEPFASHION_NGF, help="generator width (the release: 64)"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up, ms")
    parser.add_argument("--rep", type=int, default=5000, help="measurement, ms")
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="rows are appended here (default on a GPU: benchmarks/results/train_step.csv)",
    )
    return parser


def _check(args: argparse.Namespace) -> torch.device:
    """The device to run on; ValueError naming the argument for a run that cannot be made."""
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise ValueError("--device cuda: no CUDA device here")
    if args.device is None and not cuda and (args.size is None or args.size > TINY_SIZE):
        raise ValueError(
            "no CUDA device: the default run (256 px, batch 8) is a GPU measurement; pass "
            f"--device cpu (with a small --size and --batch), or a --size of at most {TINY_SIZE}"
        )
    device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    if args.amp and device.type != "cuda":
        raise ValueError("--amp: the release's amp is torch.cuda.amp, it needs a CUDA device")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be positive, got {args.batch}")
    if args.ngf < 1:
        raise ValueError(f"--ngf must be positive, got {args.ngf}")
    size = args.size or 256
    if size < TINY_SIZE or size % 8:
        raise ValueError(
            f"--size must be a multiple of 8 and at least {TINY_SIZE} (the release's positional "
            f"map is size / 8, its discriminator needs {TINY_SIZE} px), got {size}"
        )
    return device


def bench(
    root: Path,
    size: int,
    batch: int,
    amp: bool,
    device: torch.device,
    *,
    ngf: int,
    seed: int,
    warmup_ms: int,
    rep_ms: int,
    work: str = "full_step",
) -> tuple[str, float | None, float | None]:
    """(status, median ms, peak MiB) of the release's full training step, or (`work`
    "generate") of its test forward on a batch."""
    try:
        with tempfile.TemporaryDirectory(prefix="release-vgg-") as folder:
            vgg_file = write_release_vgg(random_vgg(seed), Path(folder) / "vgg19.pth")
            with imported_release(root) as release:
                gpu = 0 if device.type == "cuda" else -1
                opt = release.deepfashion_options(
                    size=size, batch=batch, vgg_path=vgg_file, amp=amp, gpu=gpu, ngf=ngf
                )
                trainer = release.trainer(opt)
        # DeepFashion's training command draws no other reference: every pair is a self one.
        data = release_batch(size, (1.0,) * batch, seed, dtype=torch.float32)
        if work == "generate":
            # On the device already, like bench_generate's inputs: the figure is the model's.
            data = {name: value.to(device) for name, value in data.items()}
            model = trainer.pix2pix_model_on_one_gpu.eval()

            def step() -> None:
                model(data, mode="inference")
        else:

            def step() -> None:
                trainer.run_generator_one_step(data)
                trainer.run_discriminator_one_step(data)

        if device.type == "cuda":
            ms = median_ms(step, device, warmup_ms=warmup_ms, rep_ms=rep_ms)
            return "ok", ms, step_peak_mb(step, device)
        # On the CPU the timed steps give the peak too (each step is the same work).
        timed: list[float] = []
        peak = peak_rss_mb(
            lambda: timed.append(median_ms(step, device, warmup_ms=warmup_ms, rep_ms=rep_ms))
        )
        return "ok", timed[0], peak
    except Exception as err:  # a step that does not fit is a result, reported as a row
        return ("oom" if is_out_of_memory(err) else f"error {first_line(err)}"), None, None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = _check(args)
        root = release_root(args.release_root)
    except ValueError as err:
        print(f"bench_release_step: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"bench_release_step: error: --release-root: {err}", file=sys.stderr)
        return 2
    size = args.size or 256
    batch = args.batch or DEFAULT_BATCH[args.work]
    tracked = (
        bench_generate.DEFAULT_CSV if args.work == "generate" else bench_train_step.DEFAULT_CSV
    )
    csv_path = csv_destination(args.csv, tracked, device)
    env = environment(device)
    amp_name = "fp16" if args.amp else "none"
    print(
        f"{env['gpu']} | torch {env['torch']} | commit {env['commit']} | the release's "
        f"DeepFashion {args.work} | {size} px | batch {batch} | amp {amp_name}"
    )
    status, ms, peak = bench(
        root,
        size,
        batch,
        args.amp,
        device,
        ngf=args.ngf,
        seed=args.seed,
        warmup_ms=args.warmup,
        rep_ms=args.rep,
        work=args.work,
    )
    rate = batch / (ms / 1e3) if ms else None
    print(f"{'work':<10} {'backend':<8} {'ms':>10} {'images/s':>10} {'peak MB':>10}  status")
    shown = f"{cell(ms, '.1f'):>10} {cell(rate, '.1f'):>10} {cell(peak, '.0f'):>10}"
    print(f"{args.work:<10} {'release':<8} {shown}  {status}")
    row = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **env,
        "config": CONFIG if args.ngf == DEEPFASHION_NGF else f"{CONFIG}-ngf{args.ngf}",
        "image_size": size,
        "batch": batch,
        "amp": amp_name,
        "backend": "release",
        "status": status,
        "median_ms": ms,
        "peak_mb": peak,
        "image_rel_rms": None,
    }
    if args.work == "generate":
        row.update(compile=False, images_per_s=rate)
        columns = bench_generate.COLUMNS
    else:
        row["work"] = "full_step"
        columns = bench_train_step.COLUMNS
    write_rows(csv_path, columns, [row])
    return 1 if status.startswith("error") else 0


if __name__ == "__main__":
    sys.exit(main())
