"""Time the generator and discriminator of a preset: forward, forward+backward, and one training
step shaped like the real one (G forward+backward, D forward+backward on real and fake).

Prints a table; losses are simple stand-ins (means of the outputs) so the numbers measure the
networks, not the loss code. Example:

    python -m benchmarks.model_step --preset synthetic-64-narrow --batch 8 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from dynast.config import PRESETS, preset
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator


def _time(fn: Callable[[], None], repeats: int) -> tuple[float, float, float]:
    """(median wall s, min wall s, min process CPU s). On a shared machine the wall time swells
    with other jobs' load; CPU time over threads bounds what the step costs on idle cores."""
    fn()  # warm-up: allocator, oneDNN primitive caches
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), min(walls), min(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="synthetic-64-narrow", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    cfg = preset(args.preset)
    size = args.image_size or cfg.image_size
    torch.manual_seed(0)
    g, d = Generator(cfg), MultiscaleDiscriminator(cfg)
    b, cs = args.batch, cfg.semantic_nc
    semantic = torch.rand(b, cs, size, size)
    exemplar = torch.rand(b, 3, size, size) * 2 - 1
    exemplar_semantic = torch.rand(b, cs, size, size)
    real = torch.rand(b, 3, size, size) * 2 - 1

    def g_forward() -> None:
        with torch.no_grad():
            g(semantic, exemplar, exemplar_semantic)

    def g_forward_backward() -> None:
        out = g(semantic, exemplar, exemplar_semantic, with_warps=True)
        loss = out.image.mean() + sum(w.mean() for w in out.warps)
        loss.backward()

    def train_step() -> None:
        out = g(semantic, exemplar, exemplar_semantic, with_warps=True)
        fake_logits = d(semantic, out.image)
        g_loss = out.image.mean() + sum(w.mean() for w in out.warps)
        g_loss = g_loss - sum(scale[-1].mean() for scale in fake_logits)
        g_loss.backward()
        d_fake = d(semantic, out.image.detach())
        d_real = d(semantic, real)
        d_loss = sum(f[-1].mean() - r[-1].mean() for f, r in zip(d_fake, d_real, strict=True))
        d_loss.backward()

    rows = [
        ("G forward (no grad)", g_forward),
        ("G forward+backward (warps)", g_forward_backward),
        ("train step (G fwd+bwd, D fwd+bwd)", train_step),
    ]
    g_params = sum(p.numel() for p in g.parameters())
    d_params = sum(p.numel() for p in d.parameters())
    print(
        f"preset {cfg.name}, image {size}x{size}, batch {b}, threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}; G {g_params / 1e6:.3f} M params, D {d_params / 1e6:.3f} M"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min) before: {load:.2f} on {os.cpu_count()} CPUs")
    print(f"{'what':<36} {'median s':>10} {'min s':>10} {'min cpu s':>10}")
    for name, fn in rows:
        median, best, cpu = _time(fn, args.repeats)
        print(f"{name:<36} {median:>10.3f} {best:>10.3f} {cpu:>10.3f}")


if __name__ == "__main__":
    main()
