"""The performance targets, met or not, from the CSVs one `benchmarks/device_session.sh` run wrote.

    python -m benchmarks.performance_targets $OUT

Reads train_step.csv, optimizer_step.csv, attention.csv and generate.csv from the folder (a
missing file or row leaves its cells "not measured") and prints one line per target: the measured
figure, the target and whether it is met. "met" is only ever printed from measured numbers.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.attention_cost import shape_cost
from kernels.shapes import preset_shapes

NOT_MEASURED = "not measured"


def read_rows(folder: Path, name: str) -> list[dict[str, str]]:
    path = folder / name
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("status") == "ok"]


def _last(rows: list[dict[str, str]], **match: str) -> dict[str, str] | None:
    """The newest row whose columns equal `match` (rows are appended in time order)."""
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def _ms(row: dict[str, str] | None) -> float | None:
    return float(row["median_ms"]) if row and row.get("median_ms") else None


def _ratio(base: float | None, fast: float | None) -> float | None:
    return base / fast if base and fast else None


def _verdict(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else ("met" if ok else "not met")


def step_rows(train: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    common = {"image_size": "256", "batch": "8"}
    fused = _ms(_last(train, backend="triton", **common))
    compiled = _ms(_last(train, backend="triton+compile", **common))
    ref = _ms(_last(train, backend="torch", **common))
    out = []
    for label, ms in (("fused", fused), ("fused+compile", compiled)):
        ratio = _ratio(ref, ms)
        figure = NOT_MEASURED if ratio is None else f"{ratio:.2f}x ({ms:.1f} / {ref:.1f} ms)"
        ok = None if ratio is None else ratio >= 3 and ms <= 160
        out.append((f"training step 256 b8, {label} vs reference", figure, ">= 3x, <= 160 ms",
                    _verdict(ok)))  # fmt: skip
    return out


def optimizer_rows(opt: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    common = {"image_size": "256", "batch": "8", "part": "step"}
    fused, ref = (_ms(_last(opt, backend=b, **common)) for b in ("triton", "torch"))
    figure = NOT_MEASURED
    if fused:
        parts = []
        for part in ("g_step", "d_step", "g_fwd_bwd", "vgg_fwd_bwd", "d_critic_fwd_bwd", "adam"):
            ms = _ms(_last(opt, backend="triton", image_size="256", batch="8", part=part))
            if ms:
                parts.append(f"{part} {ms:.1f}")
        ratio = _ratio(ref, fused)
        figure = f"{fused:.1f} ms" + (f" ({ratio:.2f}x ref)" if ratio else "")
        figure += f"; {', '.join(parts)}" if parts else ""
    return [("full optimiser step 256 b8 (G+D+VGG)", figure, "measured, with breakdown",
             _verdict(None if fused is None else True))]  # fmt: skip


def attention_rows(attn: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    out = []
    inner = next(s for s in preset_shapes("deepfashion-256") if s.label == "inner-256x256")
    row = _last(attn, shape=inner.describe(), impl="fused", **{"pass": "fwd"})
    figure, ok = NOT_MEASURED, None
    if row and row.get("copy_gbps"):
        sec, copy = float(row["median_ms"]) / 1e3, float(row["copy_gbps"])
        batch, element = int(row["batch"]), 4 if row["dtype"] == "float32" else 2
        listed = shape_cost(inner, batch, element, "fwd", "list").bytes / sec / 1e9 / copy
        derived = shape_cost(inner, batch, element, "fwd", "derived").bytes / sec / 1e9 / copy
        figure = f"{listed:.1%} of copy (list bytes), {derived:.1%} (derived bytes)"
        ok = derived >= 0.40
    out.append(("inner 256x256 candidate fwd", figure, ">= 40% (derived bytes)", _verdict(ok)))

    def speedup(shape_text: str, target: float, label: str) -> None:
        fused = _ms(_last(attn, shape=shape_text, impl="fused", **{"pass": "both"}))
        ref = _ms(_last(attn, shape=shape_text, impl="reference", **{"pass": "both"}))
        ratio = _ratio(ref, fused)
        figure = NOT_MEASURED if ratio is None else f"{ratio:.2f}x ({fused:.2f} / {ref:.2f} ms)"
        ok = None if ratio is None else ratio >= target
        out.append((label, figure, f">= {target:g}x", _verdict(ok)))

    speedup(inner.describe(), 15, "inner 256x256 candidate fwd+bwd vs reference")
    for preset, tokens in (("deepfashion-256", 1024), ("deepfashion-512", 4096)):
        dense = next(s for s in preset_shapes(preset) if s.block == "dense")
        speedup(dense.describe(), 3, f"dense fwd+bwd at {tokens:,} tokens vs reference")
    return out


def memory_rows(opt: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    row = _last(opt, backend="triton", image_size="512", batch="4", part="step")
    figure = NOT_MEASURED
    if row:
        figure = f"fits: peak {float(row['peak_mb']) / 1024:.1f} GiB, step {_ms(row):.0f} ms"
        ok = float(row["peak_mb"]) * 2**20 <= 80e9
    else:
        ok = None
    return [("512 px training, batch 4, full step (fused)", figure, "fits 80 GB", _verdict(ok))]


def generate_rows(gen: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    fused, ref = (_last(gen, backend=b, image_size="256") for b in ("triton", "torch"))
    figure = NOT_MEASURED
    if fused:
        figure = f"{float(fused['images_per_s']):.1f} images/s fused"
        if ref:
            figure += f", {float(ref['images_per_s']):.1f} reference"
    return [("generation throughput 256 px bf16", figure, "measured",
             _verdict(None if fused is None else True))]  # fmt: skip


SECTIONS: list[tuple[str, Callable]] = [
    ("train_step.csv", step_rows),
    ("optimizer_step.csv", optimizer_rows),
    ("attention.csv", attention_rows),
    ("optimizer_step.csv", memory_rows),
    ("generate.csv", generate_rows),
]


def summary(folder: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, build in SECTIONS:
        rows.extend(build(read_rows(folder, name)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: performance_targets.py FOLDER (the device session's $OUT)", file=sys.stderr)
        return 2
    rows = summary(Path(args[0]))
    width = max(len(r[0]) for r in rows)
    for what, figure, target, verdict in rows:
        print(f"{what:<{width}}  {verdict:<12}  target {target:<26}  {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
