"""The performance targets, met or not, from the CSVs one `benchmarks/device_session.sh` run wrote.

    python -m benchmarks.performance_targets $OUT

Reads train_step.csv, optimizer_step.csv, attention.csv and generate.csv from the folder (a
missing file or row leaves its cells "not measured") and prints one line per target: the measured
figure, the target and whether it is met. "met" is only ever printed from measured numbers. Two
rows compare with the release: the full step against the release's, and the 512 px step's memory
with activation checkpointing.
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
    """The newest row whose columns equal `match` (rows are appended in time order). A
    train_step.csv row without a `work` column (written before it existed) is a `g_step` row."""
    found = [
        r
        for r in rows
        if all((r.get(k) or ("g_step" if k == "work" else None)) == v for k, v in match.items())
    ]
    return found[-1] if found else None


def _ms(row: dict[str, str] | None) -> float | None:
    return float(row["median_ms"]) if row and row.get("median_ms") else None


def _ratio(base: float | None, fast: float | None) -> float | None:
    return base / fast if base and fast else None


def _verdict(ok: bool | None) -> str:
    return NOT_MEASURED if ok is None else ("met" if ok else "not met")


def step_rows(train: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    common = {"image_size": "256", "batch": "8", "work": "g_step"}
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


def release_rows(train: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    """dynast's fastest full step against the release's (its fp16 amp), 256 px batch 8, and the
    512 px batch 4 full step with activation checkpointing: train_step.csv's full_step rows."""
    common = {"image_size": "256", "batch": "8", "work": "full_step"}
    release = _last(train, backend="release", **common)
    ours = [
        r
        for r in train
        if r.get("work") == "full_step" and r.get("image_size") == "256" and r.get("batch") == "8"
        and r.get("backend") != "release" and r.get("median_ms")
    ]  # fmt: skip
    fastest = min(ours, key=_ms) if ours else None
    ratio = _ratio(_ms(release), _ms(fastest))
    figure = NOT_MEASURED
    if ratio is not None:
        figure = (
            f"{ratio:.2f}x ({fastest['backend']} {fastest['amp']} {_ms(fastest):.1f} ms, "
            f"release {release['amp']} {_ms(release):.1f} ms)"
        )
    out = [("full step 256 b8, dynast fastest vs the release", figure, ">= 3x",
            _verdict(None if ratio is None else ratio >= 3))]  # fmt: skip
    row = _last(train, image_size="512", batch="4", work="full_step", backend="triton+ckpt")
    figure, ok = NOT_MEASURED, None
    if row and row.get("peak_mb"):
        gib = float(row["peak_mb"]) / 1024  # a "24 GB" card holds 24 GiB
        figure, ok = f"peak {gib:.1f} GiB, step {_ms(row):.0f} ms", gib < 24
    out.append(("512 px batch 4 full step, activation checkpointing", figure, "< 24 GiB",
                _verdict(ok)))  # fmt: skip
    return out


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
    ("train_step.csv", release_rows),
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
