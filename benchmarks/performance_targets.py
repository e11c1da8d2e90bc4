"""The performance targets, met or not, from the CSVs one `benchmarks/device_session.sh` run wrote.

    python -m benchmarks.performance_targets $OUT

Reads train_step.csv, optimizer_step.csv, attention.csv and generate.csv from the folder (a
missing file or row leaves its cells "not measured") and prints one line per target: the measured
figure, the target and whether it is met. "met" is only ever printed from measured numbers. The
roofline floor of the generator step comes from `benchmarks/results/step_cost.csv` (written on
the CPU by `python -m benchmarks.step_cost`, no GPU needed).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.attention_cost import shape_cost
from kernels.shapes import preset_shapes

NOT_MEASURED = "not measured"
STEP_COST_CSV = Path(__file__).resolve().parent / "results" / "step_cost.csv"


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


def step_floor_ms(path: Path = STEP_COST_CSV) -> float | None:
    """The roofline floor of the deepfashion-256 generator step (256 px, batch 8, bf16, eager
    normalisation, NCHW) in ms: the sum over the newest step_cost run's phases and categories."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if (r["config"], r["image_size"], r["batch"], r["amp"], r["norm"], r["layout"])
            == ("deepfashion-256", "256", "8", "bf16", "eager", "NCHW")
        ]
    if not rows:
        return None
    newest = max(r["timestamp"] for r in rows)
    return sum(float(r["floor_ms"]) for r in rows if r["timestamp"] == newest)


def floor_rows(train: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    """The fastest generator step (fused, with or without compile) against its roofline floor:
    the step `benchmarks/step_cost.py` models (generator forward and backward with its losses)."""
    common = {"image_size": "256", "batch": "8", "work": "g_step"}
    timed = [
        (ms, backend)
        for backend in ("triton", "triton+compile")
        if (ms := _ms(_last(train, backend=backend, **common)))
    ]
    floor = step_floor_ms()
    figure, ok = NOT_MEASURED, None
    if timed and floor:
        ms, backend = min(timed)
        figure, ok = (
            f"{ms / floor:.2f}x ({backend} {ms:.1f} ms, floor {floor:.1f} ms)",
            ms <= 2 * floor,
        )
    return [("generator step 256 b8 vs its roofline floor", figure, "<= 2x the floor",
             _verdict(ok))]  # fmt: skip


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
    out.append(every_scale_row(attn))
    for preset, tokens in (("deepfashion-256", 1024), ("deepfashion-512", 4096)):
        dense = next(s for s in preset_shapes(preset) if s.block == "dense")
        speedup(dense.describe(), 3, f"dense fwd+bwd at {tokens:,} tokens vs reference")
    out.append(dense_4096_row(attn))
    return out


def every_scale_row(attn: list[dict[str, str]]) -> tuple[str, str, str, str]:
    """Candidate fwd+bwd against the reference at every sparse block of deepfashion-256 (the
    gather kernel, or the tile forward where it was timed and is faster): met when every block
    is measured and each is at least 15x."""
    ratios = []
    for shape in preset_shapes("deepfashion-256"):
        if shape.block == "dense":
            continue
        both = {"shape": shape.describe(), "pass": "both"}
        fused = [m for i in ("fused", "fused-tile") if (m := _ms(_last(attn, impl=i, **both)))]
        ref = _ms(_last(attn, impl="reference", **both))
        ratios.append((shape.label, _ratio(ref, min(fused)) if fused else None))
    measured = [(label, r) for label, r in ratios if r is not None]
    figure = NOT_MEASURED
    if measured:
        figure = ", ".join(f"{label} {r:.1f}x" for label, r in measured)
    ok = None if len(measured) < len(ratios) else all(r >= 15 for _, r in measured)
    if measured and any(r < 15 for _, r in measured):
        ok = False
    return ("candidate fwd+bwd vs reference, every scale", figure, ">= 15x at each", _verdict(ok))


def dense_4096_row(attn: list[dict[str, str]]) -> tuple[str, str, str, str]:
    """The dense block's fused fwd+bwd at 4,096 tokens (deepfashion-512): its time, and its peak
    memory against the same at 1,024 tokens (deepfashion-256), the ratio the tiled backward's
    scratch budget is chosen for (docs/kernels-dense.md); the 4,096-token forward's peak is shown
    beside it."""
    shapes = [
        next(s for s in preset_shapes(p) if s.block == "dense").describe()
        for p in ("deepfashion-256", "deepfashion-512")
    ]
    small, big = (_last(attn, shape=s, impl="fused", **{"pass": "both"}) for s in shapes)
    fwd = _last(attn, shape=shapes[1], impl="fused", **{"pass": "fwd"})
    figure, ok = NOT_MEASURED, None
    if small and big and small.get("peak_mb") and big.get("peak_mb"):
        ratio, ms = float(big["peak_mb"]) / float(small["peak_mb"]), _ms(big)
        figure = f"peak {float(big['peak_mb']):.0f} MB, {ratio:.2f}x the 1,024-token one"
        if fwd and fwd.get("peak_mb"):
            figure += f" ({float(big['peak_mb']) / float(fwd['peak_mb']):.1f}x its forward's)"
        figure += f"; {ms:.2f} ms ({big['gpu']})"
        ok = ratio <= 4.2 and ms <= 15.7
    return ("dense fwd+bwd at 4,096 tokens, fused", figure, "peak <= 4.2x 1,024's, <= 15.7 ms",
            _verdict(ok))  # fmt: skip


def memory_rows(opt: list[dict[str, str]]) -> list[tuple[str, str, str, str]]:
    row = _last(opt, backend="triton", image_size="512", batch="4", part="step")
    figure = NOT_MEASURED
    if row:
        figure = f"fits: peak {float(row['peak_mb']) / 1024:.1f} GiB, step {_ms(row):.0f} ms"
        ok = float(row["peak_mb"]) * 2**20 <= 80e9
    else:
        ok = None
    out = [("512 px training, batch 4, full step (fused)", figure, "fits 80 GB", _verdict(ok))]
    row = _last(opt, backend="triton", image_size="256", batch="1", part="step")
    figure, ok = NOT_MEASURED, None
    if row and row.get("peak_mb"):
        gib = float(row["peak_mb"]) / 1024
        figure, ok = f"peak {gib:.1f} GiB, step {_ms(row):.0f} ms", gib < 8
    out.append(("256 px training, batch 1, full step (fused)", figure, "< 8 GiB", _verdict(ok)))
    return out


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
    out = [("generation throughput 256 px bf16", figure, "measured",
            _verdict(None if fused is None else True))]  # fmt: skip
    release = _last(gen, backend="release", image_size="256")
    ours = [r for r in gen if r.get("image_size") == "256" and r.get("backend") != "release"]
    fastest = max(ours, key=lambda r: float(r["images_per_s"] or 0)) if ours else None
    figure, ok = NOT_MEASURED, None
    if release and fastest and release.get("images_per_s") and fastest.get("images_per_s"):
        ours_rate, theirs = float(fastest["images_per_s"]), float(release["images_per_s"])
        figure = (
            f"{ours_rate / theirs:.2f}x ({fastest['backend']} {fastest['amp']} {ours_rate:.1f} "
            f"images/s, release {release['amp']} {theirs:.1f})"
        )
        ok = ours_rate >= 3 * theirs
    out.append(("generation 256 px, dynast fastest vs the release", figure, ">= 3x", _verdict(ok)))
    return out


SECTIONS: list[tuple[str, Callable]] = [
    ("train_step.csv", step_rows),
    ("train_step.csv", floor_rows),
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
