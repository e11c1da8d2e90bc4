"""Time a generator training step (forward + backward) with the fused kernels vs the reference.

    python -m benchmarks.bench_train_step --preset deepfashion-256 --batch 8 \
        --sizes 256
    python -m benchmarks.bench_train_step --batch 1 --sizes 512                # does it fit?
    python -m benchmarks.bench_train_step --tiny                               # CPU, seconds
    python -m benchmarks.bench_train_step --config run/config.json --sizes 64 --batch 2 --device cpu

One step is the generator's forward with warped exemplars, a stand-in for its loss (L1 to a target
plus the warp loss with the release's weight 1000; no VGG and no discriminator, which do not
depend on the attention backend) and the backward; the optimiser step is left out. The model is
built twice with the same seed, once per `attention_backend` ("triton": the fused kernels,
"torch": the reference), and fed the same random inputs. Reported per image size and backend:
median step time, peak CUDA memory (all of it: weights, gradients, activations; a step that does
not fit is reported "oom"), and the generated image's relative RMS difference from the reference
backend's (a sanity check, not a test: a top-k near-tie may route a sparse block differently).
Sizes other than the config's image size run the same model, its positional map interpolated.
Rows are printed and appended to a CSV, with work `g_step` (the CSV also holds `full_step` rows,
whole optimiser steps of dynast and of the release; see COLUMNS). `--compile` wraps the
generator in `torch.compile` (the attention then runs through the custom ops of
`kernels.custom_ops`); its rows name the backend
`triton+compile` / `torch+compile`, and the compilation happens in the warm-up, outside the timing.
`--channels-last` puts the weights and inputs in the channels_last layout (rows `BACKEND+cl`),
`--cudnn-benchmark` lets cuDNN time its convolution algorithms in the warm-up (`BACKEND+bench`).
The backend `triton+norm` is `triton` with `norm_backend="triton"` too: the positional
normalisations and SPADE modulations as the fused kernels of `kernels.norm.fused`.

Without CUDA the default run (deepfashion-256 at 256 and 512 px) is refused: `--tiny` runs the
benchmarks' tiny model on the CPU, `--device cpu` any other model there. A GPU run appends to
benchmarks/results/train_step.csv unless `--csv` names another file; a CPU run writes a CSV only
with `--csv`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.measure import (
    add_csv_argument,
    cell,
    csv_destination,
    environment,
    first_line,
    is_out_of_memory,
    median_ms,
    peak_mb,
    rel_rms,
    run_device,
    write_rows,
)
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.config import PRESETS, DynaSTConfig, preset
from dynast.generator import Generator

ROOT = Path(__file__).resolve().parents[1]

BACKENDS = ("triton", "triton+norm", "torch")


def backend_config(cfg: DynaSTConfig, backend: str) -> DynaSTConfig:
    """`cfg` with the backends one of BACKENDS names: the attention backend, and with `+norm` the
    fused normalisation kernels too."""
    attention, _, norm = backend.partition("+")
    return dataclasses.replace(
        cfg, attention_backend=attention, norm_backend="triton" if norm else "torch"
    )


AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
WARP_WEIGHT = 1000.0  # docs/method.md section 5
# `work`: what a row times. `g_step` is this script's step (the generator's forward and backward
# with a stand-in loss); `full_step` a whole optimiser step, G and D with every loss term and both
# updates (`bench_optimizer_step.py` for dynast, `bench_release_step.py` for the release).
COLUMNS = [
    "timestamp", "gpu", "torch", "triton", "commit", "config", "image_size", "batch", "amp",
    "backend", "work", "status", "median_ms", "peak_mb", "image_rel_rms",
]  # fmt: skip
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "train_step.csv"
HEADER = (
    f"{'size':>5} {'backend':<16} {'ms':>10} {'x torch':>7} {'peak MB':>10} {'rel RMS':>9}  status"
)


def load_config(preset_name: str | None, config_path: Path | None) -> DynaSTConfig:
    """A preset by name, or a config JSON (e.g. a run folder's config.json: either the model
    config itself or a file holding it under "model")."""
    if config_path is None:
        return preset(preset_name or "deepfashion-256")
    try:
        data = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"--config {config_path}: cannot read a JSON model config ({err})"
        ) from err
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    return DynaSTConfig.from_dict(data)


def model_source_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """The exclusive `--preset` / `--config` pair `load_config` reads; the group is returned so a
    script can add its own sources to it."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="default deepfashion-256")
    source.add_argument("--config", type=Path, help="model config JSON instead of a preset")
    return source


@dataclasses.dataclass(kw_only=True)
class StepInputs:
    semantic: Tensor
    exemplar: Tensor
    exemplar_semantic: Tensor
    target: Tensor


def to_channels_last(x: StepInputs) -> StepInputs:
    """The same inputs in the channels_last layout (NHWC strides, the same values)."""
    return StepInputs(
        **{
            f.name: getattr(x, f.name).contiguous(memory_format=torch.channels_last)
            for f in dataclasses.fields(x)
        }
    )


def make_inputs(cfg: DynaSTConfig, size: int, batch: int, device: torch.device) -> StepInputs:
    gen = torch.Generator().manual_seed(0)

    def draw(channels: int, low: float, high: float) -> Tensor:
        x = torch.rand(batch, channels, size, size, generator=gen) * (high - low) + low
        return x.to(device)

    return StepInputs(
        semantic=draw(cfg.semantic_nc, 0, 1),
        exemplar=draw(3, -1, 1),
        exemplar_semantic=draw(cfg.semantic_nc, 0, 1),
        target=draw(3, -1, 1),
    )


def generator_loss(model: Generator, x: StepInputs) -> tuple[Tensor, Tensor]:
    """(loss, image): L1 to the target plus the weighted warp L1 at every block."""
    result = model(x.semantic, x.exemplar, x.exemplar_semantic, with_warps=True)
    loss = F.l1_loss(result.image.float(), x.target)
    for warp in result.warps:
        pooled = F.adaptive_avg_pool2d(x.target, warp.shape[-2:])
        loss = loss + WARP_WEIGHT * F.l1_loss(warp.float(), pooled)
    return loss, result.image


def bench_backend(
    cfg: DynaSTConfig,
    backend: str,
    x: StepInputs,
    device: torch.device,
    amp: torch.dtype | None,
    warmup_ms: int,
    rep_ms: int,
    compile_generator: bool = False,
    channels_last: bool = False,
) -> tuple[str, float | None, float | None, Tensor | None]:
    """(status, median ms, peak MiB, image of one forward) for one backend; the generator
    wrapped in `torch.compile` with `compile_generator` (compiled in the warm-up), its weights
    and the inputs in channels_last with `channels_last`."""
    torch.manual_seed(0)
    try:
        eager = Generator(backend_config(cfg, backend)).to(device)
        if channels_last:
            eager = eager.to(memory_format=torch.channels_last)
            x = to_channels_last(x)
        params = list(eager.parameters())
        model = torch.compile(eager) if compile_generator else eager
        autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)

        def step() -> None:
            with autocast:
                loss, _ = generator_loss(model, x)
            loss.backward()

        with torch.no_grad(), autocast:
            image = generator_loss(model, x)[1].float()
        ms = median_ms(step, device, warmup_ms=warmup_ms, rep_ms=rep_ms, reset=params)
        for p in params:
            p.grad = None
        peak = peak_mb(step, device, above_live=False)
        return "ok", ms, peak, image
    except Exception as err:  # a step that does not fit is a result, reported as a row
        status = "oom" if is_out_of_memory(err) else f"error {first_line(err)}"
        return status, None, None, None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = model_source_arguments(parser)
    source.add_argument(
        "--tiny", action="store_true", help="the benchmarks' tiny model on the CPU, seconds"
    )
    parser.add_argument(
        "--sizes", default=None, help="image sizes, comma-separated (default: the config's, x2)"
    )
    parser.add_argument("--batch", type=int, default=None, help=f"default 1 ({TINY_BATCH} tiny)")
    parser.add_argument(
        "--backends",
        default=None,
        help="some of triton,triton+norm,torch (default: triton,torch on a GPU, torch on a CPU)",
    )
    parser.add_argument(
        "--amp", choices=sorted(AMP), default=None, help="autocast dtype (default bf16 on GPU)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the generator (rows name the backend BACKEND+compile)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="weights and inputs in channels_last (rows name the backend BACKEND+cl)",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="torch.backends.cudnn.benchmark on (rows name the backend BACKEND+bench)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="warm-up per timing, ms")
    parser.add_argument("--rep", type=int, default=1000, help="measurement per timing, ms")
    add_csv_argument(parser, DEFAULT_CSV)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = tiny_model_config() if args.tiny else load_config(args.preset, args.config)
        sizes = [int(s) for s in (args.sizes or "").split(",") if s] or (
            [TINY_SIZE] if args.tiny else [cfg.image_size, 2 * cfg.image_size]
        )
        batch = args.batch if args.batch is not None else (TINY_BATCH if args.tiny else 1)
        if batch < 1:
            raise ValueError(f"--batch must be positive, got {batch}")
        if args.backends is not None:
            backends = args.backends.split(",")
            if not all(backends) or any(b not in BACKENDS for b in backends):
                raise ValueError(f"--backends must list some of {BACKENDS}, got {args.backends!r}")
        device = run_device(args.device, tiny=args.tiny, gpu_work="a generator training step")
        on_gpu = device.type == "cuda"
        if args.backends is None:
            backends = ["triton", "torch"] if on_gpu else ["torch"]
    except ValueError as err:
        print(f"bench_train_step: error: {err}", file=sys.stderr)
        return 2
    amp_name = args.amp or ("bf16" if on_gpu else "none")
    suffix = "".join(
        name
        for name, on in (
            ("+compile", args.compile),
            ("+cl", args.channels_last),
            ("+bench", args.cudnn_benchmark),
        )
        if on
    )
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    env = environment(device)
    print(
        f"{env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"config {cfg.name} | batch {batch} | amp {amp_name}"
    )
    print(HEADER)
    rows = []
    for size in sizes:
        x = make_inputs(cfg, size, batch, device)
        results = {}
        for backend in backends:
            label = backend + suffix
            results[label] = bench_backend(
                cfg,
                backend,
                x,
                device,
                AMP[amp_name],
                args.warmup,
                args.rep,
                args.compile,
                args.channels_last,
            )
        base_label = "torch" + suffix
        base = results.get(base_label)
        for backend, (status, ms, peak, image) in results.items():
            speedup = diff = None
            if base and backend != base_label and base[1] and ms:
                speedup = base[1] / ms
            if base and backend != base_label and base[3] is not None and image is not None:
                diff = rel_rms(image, base[3])
            print(
                f"{size:>5} {backend:<16} {cell(ms, '.2f'):>10} {cell(speedup, '.2f'):>7} "
                f"{cell(peak, '.1f'):>10} {cell(diff, '.2e'):>9}  {status}"
            )
            rows.append(
                {
                    "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **env,
                    "config": cfg.name,
                    "image_size": size,
                    "batch": batch,
                    "amp": amp_name,
                    "backend": backend,
                    "work": "g_step",
                    "status": status,
                    "median_ms": ms,
                    "peak_mb": peak,
                    "image_rel_rms": diff,
                }
            )
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), COLUMNS, rows)
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
