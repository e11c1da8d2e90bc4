"""The SPADE modulation at the generator's sizes: the eager chain, the fused Triton kernels and
what `torch.compile` makes of the chain, forward and forward + backward.

    python -m benchmarks.bench_norm                                   # GPU: deepfashion-256, bf16
    python -m benchmarks.bench_norm --impls eager,fused --batch 4
    python -m benchmarks.bench_norm --channels-last                   # NHWC maps
    python -m benchmarks.bench_norm --tiny                            # CPU smoke run

One row per scale of the preset (C_v channels at that scale's resolution), implementation and
pass. The question is whether a fused kernel or the compiler cuts the traffic of these
memory-bound chains; the figures answer it against the compulsory bytes, what any implementation
must move: forward, x, gamma and beta read and the output written (4 maps); forward + backward, 5
maps more (x, gamma and dout read, dx and dgamma written; dbeta is dout). GB/s are on those bytes,
and "% copy" relates them to a device copy of the same maps measured in the same run. `rel RMS`:
the output against the eager chain's (and dx against its dx, for `both`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.measure import (
    add_csv_argument,
    cell,
    csv_destination,
    environment,
    first_line,
    median_ms,
    rel_rms,
    run_device,
    write_rows,
)
from dynast.config import PRESETS, preset
from kernels import norm
from kernels.norm.reference import reference_spade_modulation

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("eager", "fused", "compiled")
PASSES = ("fwd", "both")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Maps of compulsory traffic per pass (module docstring).
MAPS = {"fwd": 4, "both": 9}
COLUMNS = [
    "timestamp", "gpu", "torch", "triton", "commit", "config", "batch", "channels", "height",
    "width", "layout", "dtype", "impl", "pass", "status", "median_ms", "compulsory_mb", "gb_s",
    "pct_of_copy", "rel_rms",
]  # fmt: skip
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "norm.csv"
# --tiny: two small scales, batch 2 (a CPU smoke run in seconds, on the interpreter for fused).
TINY_SCALES = ((16, 8), (8, 16))
TINY_BATCH = 2
HEADER = (
    f"{'C':>4} {'HxW':>9} {'impl':<9} {'pass':<5} {'ms':>9} {'GB/s':>8} {'% copy':>7} "
    f"{'rel RMS':>9}  status"
)


def _function(impl: str) -> Callable[..., Tensor]:
    if impl == "eager":
        return lambda x, g, b: norm.spade_modulation(x, g, b, backend="torch")
    if impl == "fused":
        return lambda x, g, b: norm.spade_modulation(x, g, b, backend="triton")
    return torch.compile(reference_spade_modulation, dynamic=False)


def _run(fn: Callable[..., Tensor], maps: list[Tensor], dout: Tensor, backward: bool) -> Tensor:
    out = fn(*maps)
    if backward:
        out.backward(dout)
    return out


def bench_scale(
    channels: int,
    size: int,
    args: argparse.Namespace,
    device: torch.device,
    impls: list[str],
    passes: list[str],
) -> list[dict[str, object]]:
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device="cpu").manual_seed(channels * 1000 + size)
    shape = (args.batch, channels, size, size)
    raw = [torch.randn(shape, generator=gen) for _ in range(4)]
    raw[1].mul_(0.5)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    maps = [t.to(device, dtype).contiguous(memory_format=layout).requires_grad_() for t in raw[:3]]
    dout = raw[3].to(device, dtype).contiguous(memory_format=layout)
    map_bytes = maps[0].numel() * maps[0].element_size()
    copy_ms = median_ms(
        lambda: maps[0].detach().clone(), device, warmup_ms=args.warmup, rep_ms=args.rep
    )
    copy_gbs = 2 * map_bytes / copy_ms / 1e6
    rows = []
    reference_out: dict[str, Tensor] = {}
    for impl in impls:
        fn = _function(impl)  # one compile of the chain serves both passes
        for pass_name in passes:
            backward = pass_name == "both"
            status, ms, rel = "ok", None, None
            try:
                out = _run(fn, maps, dout, backward)
                check = maps[0].grad if backward else out
                if impl == "eager":
                    reference_out[pass_name] = check.detach().clone()
                elif pass_name in reference_out:
                    rel = rel_rms(check, reference_out[pass_name])
                ms = median_ms(
                    lambda fn=fn, backward=backward: _run(fn, maps, dout, backward),
                    device,
                    warmup_ms=args.warmup,
                    rep_ms=args.rep,
                    reset=maps,
                )
            except Exception as err:  # one implementation failing is a row, not the end
                status = f"error {first_line(err)}"
            for t in maps:
                t.grad = None
            compulsory = MAPS[pass_name] * map_bytes
            gbs = compulsory / ms / 1e6 if ms else None
            pct = 100 * gbs / copy_gbs if gbs else None
            rows.append(
                {
                    "channels": channels,
                    "height": size,
                    "width": size,
                    "layout": "nhwc" if args.channels_last else "nchw",
                    "impl": impl,
                    "pass": pass_name,
                    "status": status,
                    "median_ms": ms,
                    "compulsory_mb": compulsory / 1e6,
                    "gb_s": gbs,
                    "pct_of_copy": pct,
                    "rel_rms": rel,
                }
            )
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="deepfashion-256")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--impls", default=None, help="some of eager,fused,compiled (default: all on a GPU)"
    )
    parser.add_argument("--passes", default="fwd,both", help="some of fwd,both")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on GPU")
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="maps in the channels_last layout (NHWC)"
    )
    parser.add_argument("--tiny", action="store_true", help="small CPU sizes (a smoke run)")
    parser.add_argument("--warmup", type=int, default=25, help="warm-up per timing, ms")
    parser.add_argument("--rep", type=int, default=200, help="measurement per timing, ms")
    add_csv_argument(parser, DEFAULT_CSV)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = run_device(args.device, tiny=args.tiny, gpu_work="the model's normalisations")
    except ValueError as err:
        print(f"bench_norm: error: {err}", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    impls = (args.impls or ("eager,fused,compiled" if device.type == "cuda" else "eager")).split(
        ","
    )
    passes = args.passes.split(",")
    bad = [i for i in impls if i not in IMPLS] + [p for p in passes if p not in PASSES]
    if bad or args.batch < 1:
        print(
            f"bench_norm: error: --impls must list some of {IMPLS}, --passes some of {PASSES}, "
            f"--batch a positive count; got {args.impls!r}, {args.passes!r}, {args.batch}",
            file=sys.stderr,
        )
        return 2
    if args.tiny:
        scales, config_name, args.batch = TINY_SCALES, "tiny", TINY_BATCH
    else:
        cfg = preset(args.preset)
        sizes = [cfg.coarsest_size * 2**s for s in range(cfg.num_scales)]
        scales, config_name = tuple(zip(cfg.value_channels, sizes, strict=True)), cfg.name
    env = environment(device)
    print(
        f"{env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"config {config_name} | batch {args.batch} | {args.dtype}"
        + (" | channels_last" if args.channels_last else "")
    )
    print(HEADER)
    rows = []
    for channels, size in scales:
        for row in bench_scale(channels, size, args, device, impls, passes):
            print(
                f"{channels:>4} {f'{size}x{size}':>9} {row['impl']:<9} {row['pass']:<5} "
                f"{cell(row['median_ms'], '.3f'):>9} {cell(row['gb_s'], '.1f'):>8} "
                f"{cell(row['pct_of_copy'], '.1f'):>7} {cell(row['rel_rms'], '.2e'):>9}  "
                f"{row['status']}"
            )
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rows.append(
                {
                    "timestamp": stamp,
                    **env,
                    "config": config_name,
                    "batch": args.batch,
                    "dtype": args.dtype,
                    **row,
                }
            )
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), COLUMNS, rows)
    return 1 if any(str(r["status"]).startswith("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
