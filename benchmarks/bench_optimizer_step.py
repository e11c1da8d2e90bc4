"""Time a full optimiser step as `train/loop.py` runs it (generator, discriminator and VGG losses,
both Adam updates), with the fused kernels vs the reference, and break it down.

    python -m benchmarks.bench_optimizer_step                            # GPU: deepfashion-256, b8
    python -m benchmarks.bench_optimizer_step --batch 4 --size 512 --backends triton
    python -m benchmarks.bench_optimizer_step --tiny                     # CPU smoke run

The step is the loop's own code: `train.steps.generator_step` (generator forward with warps, the
discriminator as critic, VGG19 features of fake and real, every loss term at the release's
weights, backward, Adam) then `train.steps.discriminator_step` (hinge loss on fake and real,
backward, Adam), on one process with one micro-batch, in bf16 autocast on a GPU. VGG19 runs with
random weights (the time does not depend on their values, and the GPU machines hold no weights
file). Rows per backend:

- step: the whole optimiser step (what a training run spends per step, logging aside);
- g_step, d_step: its two halves;
- and the parts, timed alone: g_fwd_bwd (generator forward with warps and the backward of a
  stand-in loss, the `bench_train_step.py` step), vgg_fwd_bwd (features of fake and real, the
  backward into the image), d_critic_fwd_bwd (discriminator on fake and real in one call, as the
  generator step makes it, backward into the fake image), d_fwd_bwd (the discriminator step's
  forward on fake and real, backward), adam (both optimisers' updates).

The parts overlap the halves (g_step holds g_fwd_bwd, vgg_fwd_bwd, d_critic_fwd_bwd and the G
update): their sum against `step` shows what is left (loss terms, gradient scaling, syncs).
Median times, peak CUDA memory of one step; rows are printed and appended to a CSV.

The `step` rows also go to `--step-csv` (train_step.csv's columns) with work `full_step`, beside
the release's (`bench_release_step.py`) and the generator-only `g_step` rows of
`bench_train_step.py`; their peak memory on the CPU is the process's peak resident set. Default:
benchmarks/results/train_step.csv on a GPU, none on the CPU. `--checkpoint-activations` runs the
generator with activation checkpointing (`train.checkpoint_activations`; backend `BACKEND+ckpt`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor

from benchmarks.bench_train_step import (
    AMP,
    BACKENDS,
    StepInputs,
    backend_config,
    generator_loss,
    make_inputs,
)
from benchmarks.bench_train_step import COLUMNS as STEP_COLUMNS
from benchmarks.bench_train_step import DEFAULT_CSV as STEP_CSV
from benchmarks.measure import (
    add_csv_argument,
    append_rows,
    cell,
    csv_destination,
    device_and_backends,
    environment,
    first_line,
    is_out_of_memory,
    median_ms,
    peak_mb,
    step_peak_mb,
    write_rows,
)
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.config import PRESETS, DynaSTConfig, preset
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator
from dynast.vgg import VGG19Features
from train.config import LossWeights, TrainConfig
from train.steps import (
    LossSums,
    StepParts,
    discriminator_step,
    generator_step,
    global_weights,
)

ROOT = Path(__file__).resolve().parents[1]

PARTS = (
    "step",
    "g_step",
    "d_step",
    "g_fwd_bwd",
    "vgg_fwd_bwd",
    "d_critic_fwd_bwd",
    "d_fwd_bwd",
    "adam",
)
COLUMNS = [
    "timestamp", "gpu", "torch", "triton", "commit", "config", "image_size", "batch", "amp",
    "backend", "compile", "part", "status", "median_ms", "peak_mb",
]  # fmt: skip
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "optimizer_step.csv"


@dataclasses.dataclass(kw_only=True)
class StepSetup:
    parts: StepParts
    generator: Generator
    micro: list[dict[str, Tensor]]


def build(
    cfg: DynaSTConfig,
    size: int,
    batch: int,
    device: torch.device,
    amp: torch.dtype | None,
    compile_generator: bool,
    checkpoint_activations: bool = False,
) -> StepSetup:
    """Models, optimisers and one micro-batch, assembled as `train.loop.train` assembles them."""
    torch.manual_seed(0)
    generator = Generator(cfg).to(device)
    generator.checkpoint_activations = checkpoint_activations
    discriminator = MultiscaleDiscriminator(cfg).to(device)
    vgg = VGG19Features().to(device)
    tc = TrainConfig()  # the default optimisation settings, as the loop reads them
    betas = (tc.adam_beta1, tc.adam_beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=tc.lr * tc.g_lr_ratio, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=tc.lr * tc.d_lr_ratio, betas=betas)
    fp16 = amp == torch.float16
    scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
    scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
    run = torch.compile(generator) if compile_generator else generator

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    parts = StepParts(
        accelerator=accelerator,
        generator=run,
        discriminator=discriminator,
        d_inner=discriminator,
        opt_g=opt_g,
        opt_d=opt_d,
        scaler_g=scaler_g,
        scaler_d=scaler_d,
        vgg=vgg,
        weights=LossWeights(),
        autocast=autocast,
        blocks_per_scale=cfg.blocks_per_scale,
    )
    x = make_inputs(cfg, size, batch, device)
    micro = [
        {
            "semantic": x.semantic,
            "exemplar": x.exemplar,
            "exemplar_semantic": x.exemplar_semantic,
            "target": x.target,
            "has_target": torch.ones(batch, dtype=torch.bool, device=device),
        }
    ]
    return StepSetup(parts=parts, generator=generator, micro=micro)


def part_functions(setup: StepSetup) -> dict[str, Callable[[], object]]:
    p, micro = setup.parts, setup.micro
    batch = micro[0]
    sem, target = batch["semantic"], batch["target"]
    sums = LossSums()
    weights = global_weights(p.accelerator, micro)
    fake_image = torch.tanh(torch.randn_like(target)).requires_grad_()

    def g_step() -> list[Tensor]:
        return generator_step(p, micro, weights, sums)[1]

    fakes = [fake_image.detach()]

    def d_step() -> None:
        discriminator_step(p, micro, fakes, weights, sums)

    def step() -> None:
        made = generator_step(p, micro, weights, sums)[1]
        discriminator_step(p, micro, made, weights, sums)

    x = StepInputs(
        semantic=sem,
        exemplar=batch["exemplar"],
        exemplar_semantic=batch["exemplar_semantic"],
        target=target,
    )

    def g_fwd_bwd() -> None:
        with p.autocast():
            loss, _ = generator_loss(p.generator, x)
        loss.backward()

    def vgg_fwd_bwd() -> None:
        with p.autocast():
            fake = p.vgg(fake_image)
            with torch.no_grad():
                real = p.vgg(target)
            loss = sum(
                (a.float() - b.float()).abs().mean() for a, b in zip(fake, real, strict=True)
            )
        loss.backward()

    def d_critic_fwd_bwd() -> None:
        p.d_inner.requires_grad_(False)
        with p.autocast():
            # One call on fake and real, as generator_step makes it for feature matching.
            preds = p.d_inner(torch.cat([sem, sem]), torch.cat([fake_image, target]))
            loss = sum(scale[-1][: sem.shape[0]].float().mean() for scale in preds)
        loss.backward()
        p.d_inner.requires_grad_(True)

    def d_fwd_bwd() -> None:
        with p.autocast():
            preds = p.discriminator(torch.cat([sem, sem]), torch.cat([fakes[0], target]))
            loss = sum(scale[-1].float().mean() for scale in preds)
        loss.backward()

    def adam() -> None:
        p.opt_g.step()
        p.opt_d.step()

    g_params = list(setup.generator.parameters())
    for param in g_params:  # Adam needs gradients to update: keep one set in place
        param.grad = torch.zeros_like(param)
    for param in p.discriminator.parameters():
        param.grad = torch.zeros_like(param)
    return {
        "step": step,
        "g_step": g_step,
        "d_step": d_step,
        "g_fwd_bwd": g_fwd_bwd,
        "vgg_fwd_bwd": vgg_fwd_bwd,
        "d_critic_fwd_bwd": d_critic_fwd_bwd,
        "d_fwd_bwd": d_fwd_bwd,
        "adam": adam,
    }


def bench(
    cfg: DynaSTConfig,
    backend: str,
    compile_generator: bool,
    parts: list[str],
    size: int,
    batch: int,
    device: torch.device,
    amp: torch.dtype | None,
    warmup_ms: int,
    rep_ms: int,
    checkpoint_activations: bool = False,
) -> dict[str, tuple[str, float | None, float | None]]:
    """part -> (status, median ms, peak MiB) for one backend (peak resident set on the CPU for
    the whole `step`, None for the other parts there)."""
    results: dict[str, tuple[str, float | None, float | None]] = {}
    try:
        setup = build(
            backend_config(cfg, backend),
            size,
            batch,
            device,
            amp,
            compile_generator,
            checkpoint_activations,
        )
        functions = part_functions(setup)
    except Exception as err:  # a model that does not fit is a result: every part reports it
        status = "oom" if is_out_of_memory(err) else f"error {first_line(err)}"
        return dict.fromkeys(parts, (status, None, None))
    for part in parts:
        fn = functions[part]
        try:
            ms = median_ms(fn, device, warmup_ms=warmup_ms, rep_ms=rep_ms)
            if part == "step":
                peak = step_peak_mb(fn, device)
            else:
                peak = peak_mb(fn, device, above_live=False)
            results[part] = ("ok", ms, peak)
        except Exception as err:  # reported as a row, see above
            status = "oom" if is_out_of_memory(err) else f"error {first_line(err)}"
            results[part] = (status, None, None)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="deepfashion-256")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke run")
    parser.add_argument("--size", type=int, default=None, help="image size (default the preset's)")
    parser.add_argument("--batch", type=int, default=None, help=f"default 8 ({TINY_BATCH} tiny)")
    parser.add_argument(
        "--backends", default=None, help="triton,torch (default: both on a GPU, torch on a CPU)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the generator")
    parser.add_argument(
        "--checkpoint-activations",
        action="store_true",
        help="activation checkpointing in the generator (train.checkpoint_activations)",
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"what to time, some of {','.join(PARTS)}"
    )
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="default bf16 on GPU")
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument("--warmup", type=int, default=100, help="warm-up per timing, ms")
    parser.add_argument("--rep", type=int, default=500, help="measurement per timing, ms")
    add_csv_argument(parser, DEFAULT_CSV)
    parser.add_argument(
        "--step-csv",
        type=Path,
        default=None,
        help="the step rows as work full_step (default on a GPU: benchmarks/results/"
        "train_step.csv; on the CPU only when given)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device, backends = device_and_backends(
            args.device,
            args.backends,
            tiny=args.tiny,
            known=BACKENDS,
            gpu_work="the full optimiser step",
        )
    except ValueError as e:
        print(f"bench_optimizer_step: error: {e}", file=sys.stderr)
        return 2
    on_gpu = device.type == "cuda"
    parts = args.parts.split(",")
    if not parts or any(p not in PARTS for p in parts):
        print(
            f"bench_optimizer_step: --parts must list some of {PARTS}, got {args.parts!r}",
            file=sys.stderr,
        )
        return 2
    if args.batch is not None and args.batch < 1:
        print(f"bench_optimizer_step: --batch must be positive, got {args.batch}", file=sys.stderr)
        return 2
    cfg = tiny_model_config() if args.tiny else preset(args.preset)
    size = args.size or (TINY_SIZE if args.tiny else cfg.image_size)
    batch = args.batch or (TINY_BATCH if args.tiny else 8)
    amp_name = args.amp or ("bf16" if on_gpu else "none")
    env = environment(device)
    print(
        f"{env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"config {cfg.name} | {size} px | batch {batch} | amp {amp_name} | compile {args.compile}"
    )
    results = {
        b: bench(
            cfg,
            b,
            args.compile,
            parts,
            size,
            batch,
            device,
            AMP[amp_name],
            args.warmup,
            args.rep,
            args.checkpoint_activations,
        )
        for b in backends
    }
    # Row labels: the backend, and what the run adds to it.
    label = {b: b + ("+ckpt" if args.checkpoint_activations else "") for b in backends}
    print(
        f"{'part':<17}"
        + "".join(f" {b + ' ms':>12} {'peak MB':>9}" for b in backends)
        + "  x torch"
    )
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for part in parts:
        line = f"{part:<17}"
        for b in backends:
            status, ms, peak = results[b][part]
            shown = cell(ms, ".2f") if status == "ok" else status[:12]
            line += f" {shown:>12} {cell(peak, '.0f'):>9}"
            rows.append(
                {
                    "timestamp": stamp,
                    **env,
                    "config": cfg.name,
                    "image_size": size,
                    "batch": batch,
                    "amp": amp_name,
                    "backend": label[b],
                    "compile": args.compile,
                    "part": part,
                    "status": status,
                    "median_ms": ms,
                    "peak_mb": peak,
                }
            )
        base, fused = results.get("torch", {}).get(part), results.get("triton", {}).get(part)
        if base and fused and base[1] and fused[1]:
            line += f"  {base[1] / fused[1]:.2f}x"
        print(line)
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), COLUMNS, rows)
    step_csv = args.step_csv or (STEP_CSV if on_gpu else None)
    full_steps = [full_step_row(r) for r in rows if r["part"] == "step"]
    if step_csv is not None and full_steps:
        append_rows(step_csv, STEP_COLUMNS, full_steps)
        print(f"appended {len(full_steps)} full_step rows to {step_csv}")
    return 1 if any(r["status"].startswith("error") for r in rows) else 0


def full_step_row(row: dict[str, object]) -> dict[str, object]:
    """A `step` row of this script as a train_step.csv row of work `full_step`."""
    backend = str(row["backend"]) + ("+compile" if row["compile"] else "")
    kept = {k: v for k, v in row.items() if k in STEP_COLUMNS}
    return {**kept, "backend": backend, "work": "full_step", "image_rel_rms": None}


if __name__ == "__main__":
    sys.exit(main())
