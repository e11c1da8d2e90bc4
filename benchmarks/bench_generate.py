"""Generation throughput: images per second of the generator's inference forward, fused kernels
vs the reference, as `python -m eval.generate` runs it (no gradients, eval mode, no warps).

    python -m benchmarks.bench_generate                            # GPU: deepfashion-256, bf16
    python -m benchmarks.bench_generate --batch 32 --compile
    python -m benchmarks.bench_generate --tiny                     # CPU smoke run

Inputs are random tensors of the preset's shapes already on the device: the figure is the model's
throughput, without image decoding or writing (which `eval.generate` overlaps with a DataLoader
and does on the CPU). Per backend: median time of a batch, images per second, peak CUDA memory,
and the image's relative RMS difference from the reference backend's. Rows are printed and
appended to a CSV.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.bench_train_step import AMP, BACKENDS, backend_config, make_inputs
from benchmarks.measure import (
    add_csv_argument,
    cell,
    csv_destination,
    device_and_backends,
    environment,
    first_line,
    is_out_of_memory,
    median_ms,
    peak_mb,
    rel_rms,
    write_rows,
)
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.config import PRESETS, preset
from dynast.generator import Generator

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = [
    "timestamp", "gpu", "torch", "triton", "commit", "config", "image_size", "batch", "amp",
    "backend", "compile", "status", "median_ms", "images_per_s", "peak_mb", "image_rel_rms",
]  # fmt: skip
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "generate.csv"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="deepfashion-256")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke run")
    parser.add_argument("--size", type=int, default=None, help="image size (default the preset's)")
    parser.add_argument("--batch", type=int, default=None, help=f"default 16 ({TINY_BATCH} tiny)")
    parser.add_argument(
        "--backends", default=None, help="triton,torch (default: both on a GPU, torch on a CPU)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="default bf16 on GPU")
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="warm-up per timing, ms")
    parser.add_argument("--rep", type=int, default=1000, help="measurement per timing, ms")
    add_csv_argument(parser, DEFAULT_CSV)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device, backends = device_and_backends(
            args.device,
            args.backends,
            tiny=args.tiny,
            known=BACKENDS,
            gpu_work="generation",
        )
    except ValueError as e:
        print(f"bench_generate: error: {e}", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda"
    if args.batch is not None and args.batch < 1:
        print(f"bench_generate: --batch must be positive, got {args.batch}", file=sys.stderr)
        return 2
    cfg = tiny_model_config() if args.tiny else preset(args.preset)
    size = args.size or (TINY_SIZE if args.tiny else cfg.image_size)
    batch = args.batch or (TINY_BATCH if args.tiny else 16)
    amp_name = args.amp or ("bf16" if on_gpu else "none")
    amp = AMP[amp_name]
    env = environment(device)
    print(
        f"{env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"config {cfg.name} | {size} px | batch {batch} | amp {amp_name} | compile {args.compile}"
    )
    x = make_inputs(cfg, size, batch, device)
    results = {}
    for backend in backends:
        torch.manual_seed(0)
        try:
            model = Generator(backend_config(cfg, backend)).to(device)
            model.eval()
            run = torch.compile(model) if args.compile else model

            @torch.no_grad()
            def generate(run=run) -> torch.Tensor:
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    return run(x.semantic, x.exemplar, x.exemplar_semantic).image

            image = generate().float()
            ms = median_ms(generate, device, warmup_ms=args.warmup, rep_ms=args.rep)
            peak = peak_mb(generate, device, above_live=False)
            results[backend] = ("ok", ms, peak, image)
        except Exception as err:  # a batch that does not fit is a result, reported as a row
            status = "oom" if is_out_of_memory(err) else f"error {first_line(err)}"
            results[backend] = (status, None, None, None)
        finally:
            if on_gpu:
                torch.cuda.empty_cache()

    heads = ("ms/batch", 10), ("images/s", 10), ("x torch", 8), ("peak MB", 9), ("rel RMS", 9)
    print(f"{'backend':<8} " + " ".join(f"{h:>{w}}" for h, w in heads) + "  status")
    base = results.get("torch")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for backend, (status, ms, peak, image) in results.items():
        rate = batch / (ms / 1e3) if ms else None
        speedup = base[1] / ms if base and base[1] and ms and backend != "torch" else None
        diff = None
        if base and base[3] is not None and image is not None and backend != "torch":
            diff = rel_rms(image, base[3])
        print(
            f"{backend:<8} {cell(ms, '.2f'):>10} {cell(rate, '.1f'):>10} {cell(speedup, '.2f'):>8} "
            f"{cell(peak, '.0f'):>9} {cell(diff, '.2e'):>9}  {status}"
        )
        rows.append(
            {
                "timestamp": stamp,
                **env,
                "config": cfg.name,
                "image_size": size,
                "batch": batch,
                "amp": amp_name,
                "backend": backend,
                "compile": args.compile,
                "status": status,
                "median_ms": ms,
                "images_per_s": rate,
                "peak_mb": peak,
                "image_rel_rms": diff,
            }
        )
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), COLUMNS, rows)
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
