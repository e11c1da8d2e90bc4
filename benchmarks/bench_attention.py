"""Benchmark of the dynamic attention operators at the sizes of the real models.

    python -m benchmarks.bench_attention                                    # GPU: both presets
    python -m benchmarks.bench_attention --preset deepfashion-256 --blocks inner --passes both
    python -m benchmarks.bench_attention --tiny                             # CPU, seconds

For each attention block of deepfashion-256 and of the same model at 512 pixels (kernels.shapes),
and each pass (fwd: inference forward; bwd: backward of a recorded forward; both: a training
forward + backward), it times:

- fused: the Triton kernels (`kernels.dense.fused` / `kernels.candidates.fused`) as the operators
  run them: candidate blocks derive their candidates in the kernel from the top-k their
  CandidateList holds (`$DYNAST_CANDIDATES`, default "derived");
- fused-derived, fused-list (candidate blocks only): the candidate kernels forced to derive the
  candidates, or to read the builder's materialised int32 list (built once, before the timing);
- fused-tile (candidate blocks only): the query-tile forward (`kernels.candidates.tile`, what
  `$DYNAST_CANDIDATE_FORWARD=tile` selects) on derived candidates, then the same backward;
- reference: the PyTorch reference (`kernels.dense.reference` / `kernels.candidates.reference`),
  the specification;
- compiled: `torch.compile` of the reference;
- flex: FlexAttention (dense forward only): out and conf are exact from two calls returning the
  log-sum-exp, over the kept keys and over all keys: conf = exp(lse_kept - lse_all),
  out = out_kept * conf. No warp, no top-k.

Every implementation is first checked against the reference run in fp32 (fp64 for fp32 inputs) on
a smaller batch: forward outputs, the top-k (by the scores it selects) and, when a backward pass
is timed, every input gradient; the worst relative RMS error is reported and a check over the
tolerance marks the rows "wrong" instead of timing them. Timing is the median of
`triton.testing.do_bench` on a GPU (a plain timer loop on the CPU); peak memory is the CUDA
allocator's peak above what was allocated before the call; TFLOP/s and GB/s divide the explicit
FLOP and byte model of benchmarks/attention_cost.py, the same for every implementation
(`--accounting`: the new compulsory bytes, "derived", by default; "list" the old ones); "% copy"
compares with a device-to-device copy measured in the same run. Rows are printed and appended to
a CSV: `--csv`, else benchmarks/results/attention.csv for a GPU run (a CPU run writes a CSV only
with `--csv`). Without CUDA the default run is refused: `--tiny` runs the tiny shapes on the CPU
(reference vs compiled reference, how the test suite exercises this script), `--device cpu` any
other choice.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.attention_cost import ACCOUNTINGS, PASSES, shape_cost
from benchmarks.measure import (
    add_csv_argument,
    append_rows,
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
from kernels.call import AttentionInputs, AttentionSettings
from kernels.candidates.reference import reference_candidate_attention
from kernels.dense.reference import reference_dynamic_attention
from kernels.runtime import interpreting
from kernels.shapes import (
    SHAPE_SETS,
    AttentionProblem,
    AttentionShape,
    make_problem,
    parse_shape,
    preset_shapes,
)

ROOT = Path(__file__).resolve().parents[1]

IMPLS = ("fused", "fused-derived", "fused-list", "fused-tile", "reference", "compiled", "flex")
# The candidate kernels with the candidates derived in the kernel, or the list read.
CANDIDATE_SOURCES = {"fused-derived": True, "fused-list": False}
# The candidate kernels with the query-tile forward, on derived candidates.
CANDIDATE_TILE = "fused-tile"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Worst relative RMS error allowed against the fp32/fp64 reference, per input dtype: a few times
# the rounding of one output element, so that a real bug (a wrong row, a missed key) fails.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "attention.csv"

# Output of an implementation: (out, conf, topk or None, warp or None), as the reference returns.
Outputs = tuple[Tensor, Tensor, Tensor | None, Tensor | None]
Impl = Callable[[AttentionProblem], Outputs]


@dataclass
class Row:
    """One CSV row (and one printed line)."""

    timestamp: str
    gpu: str
    torch: str
    triton: str
    commit: str
    preset: str
    op: str
    block: str
    shape: str
    batch: int
    dtype: str
    pass_: str
    impl: str
    status: str
    median_ms: float | None
    tflops: float | None
    gbps: float | None
    pct_copy: float | None
    peak_mb: float | None
    err: float | None
    copy_gbps: float
    flops: float
    bytes: float


CSV_COLUMNS = [f.name.rstrip("_") for f in fields(Row)]


# --------------------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------------------


def call_problem(fn: Callable[..., Outputs], problem: AttentionProblem) -> Outputs:
    """`fn` (an attention implementation with the reference's signature) on `problem`, its warp
    over the kept candidates as every benchmarked implementation computes it."""
    return fn(*problem.positional(), **problem.keywords(), warp_over="kept")


def _with_reference_signature(attention: Callable[..., Outputs]) -> Callable[..., Outputs]:
    """A fused backend entry, which takes the call type (`AttentionInputs`, `AttentionSettings`),
    called as the references are (`call_problem`)."""

    def call(q, k, v, q_prune, k_prune, *candidates, warp_values=None, **settings) -> Outputs:
        inputs = AttentionInputs(q, k, v, q_prune, k_prune, warp_values)
        return attention(inputs, *candidates, AttentionSettings(**settings))

    return call


def _reference_fn(shape: AttentionShape) -> Callable[..., Outputs]:
    if shape.block == "dense":
        return reference_dynamic_attention
    return reference_candidate_attention


def flex_dense_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_prune: Tensor,
    k_prune: Tensor,
    *,
    scale: float,
    prune_scale: float,
    topk: int = 0,
    warp_values: Tensor | None = None,
    warp_over: str = "kept",
    kernel_options: dict | None = None,
) -> Outputs:
    """Dense out and conf from two FlexAttention calls (topk, warp_values and warp_over are taken
    for a common signature and ignored: FlexAttention gives neither).

    The mask enters as a score_mod reading a precomputed [B, Nq, Nk] keep mask. With lse over the
    kept keys and over all keys, sum_kept p = exp(lse_kept - lse_all) = conf, and the kept-only
    softmax output times conf is sum_j p_j m_j v_j = out. A query with no kept key gets
    lse_kept = -inf, hence conf = 0 and out = 0."""
    from torch.nn.attention.flex_attention import flex_attention

    logits = torch.bmm(q_prune.float(), k_prune.float().transpose(1, 2))
    keep = prune_scale * logits > 0  # [B, Nq, Nk]

    def kept_only(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return torch.where(keep[b, q_idx, kv_idx], score, -float("inf"))

    heads = [x.unsqueeze(1) for x in (q, k, v)]  # [B, 1 head, N, C]
    if not torch.is_grad_enabled():  # FlexAttention on a CPU refuses inputs that require grad
        heads = [x.detach() for x in heads]
    flex = functools.partial(flex_attention, kernel_options=kernel_options)
    out_kept, lse_kept = _flex_with_lse(flex, *heads, kept_only, scale)
    _, lse_all = _flex_with_lse(flex, *heads, None, scale)
    conf = torch.exp(lse_kept - lse_all).squeeze(1)  # [B, Nq]
    out = torch.where(conf[..., None] > 0, out_kept.squeeze(1).float() * conf[..., None], 0.0)
    return out.to(v.dtype), conf.to(v.dtype), None, None


def _flex_with_lse(flex, q, k, v, score_mod, scale) -> tuple[Tensor, Tensor]:
    try:  # torch >= 2.9 asks for the log-sum-exp this way; `return_lse` is deprecated
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return flex(q, k, v, score_mod=score_mod, scale=scale, return_lse=True)
    out, aux = flex(q, k, v, score_mod=score_mod, scale=scale, return_aux=AuxRequest(lse=True))
    return out, aux.lse


def implementation(name: str, shape: AttentionShape, device: torch.device) -> Impl | None:
    """The callable timed as `name` for this block, or None where it does not apply."""
    if name == "reference":
        fn = _reference_fn(shape)
    elif name == "compiled":
        # Donated buffers let the compiled backward free its saved tensors, which forbids the
        # repeated backward over one graph that the "bwd" pass times.
        functorch_config = importlib.import_module("torch._functorch.config")
        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
        fn = torch.compile(_reference_fn(shape), dynamic=False)
    elif name == "fused":
        # The fused backends load Triton: imported only when asked for.
        if shape.block == "dense":
            from kernels.dense.fused import attention
        else:
            from kernels.candidates.fused import attention
        fn = _with_reference_signature(attention)
    elif name in CANDIDATE_SOURCES or name == CANDIDATE_TILE:
        if shape.block == "dense":
            return None
        from kernels.candidates.fused import attention

        if name == CANDIDATE_TILE:
            fn = _with_reference_signature(functools.partial(attention, derive=True, tile=True))
        else:
            derive = CANDIDATE_SOURCES[name]
            fn = _with_reference_signature(functools.partial(attention, derive=derive))
    elif name == "flex":
        if shape.block != "dense":
            return None
        # Compiled as a whole (mask and both calls): FlexAttention is only fused when compiled.
        # On the CPU it runs eagerly (the correctness tests use that).
        fn = flex_dense_attention
        if device.type == "cuda":
            return _flex_on_gpu()
    else:
        raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLS}")
    return lambda problem: call_problem(fn, problem)


# FlexAttention's default tiles run out of shared memory at Cqk 640 (its template pads the head
# dimension to 1024): on failure the next, smaller tiling is compiled, and the first that works
# is kept for the block.
FLEX_TILINGS = (
    None,
    {"BLOCK_M": 32, "BLOCK_N": 32, "num_stages": 1, "num_warps": 4},
    {"BLOCK_M": 16, "BLOCK_N": 16, "num_stages": 1, "num_warps": 4},
)


def _flex_on_gpu() -> Impl:
    state: dict = {}

    def run(problem: AttentionProblem) -> Outputs:
        if "fn" in state:
            return call_problem(state["fn"], problem)
        errors = []
        for options in FLEX_TILINGS:
            fn = torch.compile(
                functools.partial(flex_dense_attention, kernel_options=options), dynamic=False
            )
            try:
                result = call_problem(fn, problem)
            except Exception as err:  # Inductor raises many kinds
                errors.append(f"{options}: {first_line(err)}")
                torch._dynamo.reset()
                continue
            state["fn"] = fn
            return result
        raise RuntimeError("no FlexAttention tiling compiles: " + "; ".join(errors))

    return run


def passes_of(impl: str, passes: list[str]) -> list[str]:
    return ["fwd"] if impl == "flex" and "fwd" in passes else ([] if impl == "flex" else passes)


# --------------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------------


def _float_outputs(outputs: Outputs) -> list[Tensor]:
    out, conf, _, warp = outputs
    return [out, conf] if warp is None else [out, conf, warp]


def _selected_scores(problem: AttentionProblem, index: Tensor) -> Tensor:
    """Scores z of the keys `index` [B, Nq, k] picks, sorted per query (descending)."""
    b, nq, k = index.shape
    keys = torch.gather(
        problem.k.detach(), 1, index.reshape(b, nq * k, 1).expand(-1, -1, problem.k.shape[-1])
    ).reshape(b, nq, k, -1)
    z = problem.shape.scale * torch.einsum("bqc,bqkc->bqk", problem.q.detach(), keys)
    return z.sort(dim=-1, descending=True).values


@dataclass
class Gold:
    """The reference at high precision on the check problem, with the upstream gradients."""

    problem: AttentionProblem
    outputs: Outputs
    upstream: list[Tensor]
    grads: dict[str, Tensor]


def gold_run(check: AttentionProblem, with_grads: bool) -> Gold:
    precise = torch.float64 if check.q.dtype == torch.float32 else torch.float32
    named = {
        n: x.detach().to(precise).requires_grad_(with_grads)
        for n, x in check.float_inputs().items()
    }
    problem = AttentionProblem(
        shape=check.shape,
        candidates=check.candidates,
        warp_values=named.get("warp_values"),
        **{n: named[n] for n in ("q", "k", "v", "q_prune", "k_prune")},
    )
    outputs = call_problem(_reference_fn(check.shape), problem)
    gen = torch.Generator().manual_seed(7)
    upstream = [
        torch.randn(t.shape, generator=gen).to(device=t.device, dtype=precise)
        for t in _float_outputs(outputs)
    ]
    grads = {}
    if with_grads:
        torch.autograd.backward(_float_outputs(outputs), upstream)
        grads = {n: x.grad for n, x in named.items()}
    return Gold(problem, outputs, upstream, grads)


def check_error(
    impl: Impl, check: AttentionProblem, gold: Gold, *, with_grads: bool, complete: bool = True
) -> float:
    """Worst relative RMS error over the outputs, the top-k's scores and (`with_grads`) the
    gradients; infinite when an output or gradient is missing. Top-k indices may differ on
    near-ties, so they are compared by the scores of the keys they select (in high precision).
    `complete=False` (FlexAttention) compares out and conf alone."""
    inputs = check.float_inputs()
    for x in inputs.values():
        x.grad = None
    with torch.set_grad_enabled(with_grads):
        outputs = impl(check)
    errors = [rel_rms(outputs[i], gold.outputs[i]) for i in (0, 1)]
    if complete and any(
        (a is None) != (e is None) for a, e in zip(outputs, gold.outputs, strict=True)
    ):
        return math.inf
    if outputs[3] is not None:
        errors.append(rel_rms(outputs[3], gold.outputs[3]))
    if outputs[2] is not None:
        errors.append(
            rel_rms(
                _selected_scores(gold.problem, outputs[2]),
                _selected_scores(gold.problem, gold.outputs[2]),
            )
        )
    if with_grads:
        mine = _float_outputs(outputs)
        torch.autograd.backward(
            mine, [u.to(t.dtype) for u, t in zip(gold.upstream, mine, strict=True)]
        )
        for name, x in inputs.items():
            if x.grad is None:
                return math.inf  # a differentiable input got no gradient
            errors.append(rel_rms(x.grad, gold.grads[name]))
            x.grad = None
    return max(errors)


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------


def copy_bandwidth_gbps(device: torch.device, *, warmup_ms: int, rep_ms: int) -> float:
    """Device-to-device copy, bytes read plus bytes written per second: the memory roofline."""
    nbytes = 2**30 if device.type == "cuda" else 2**25
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup_ms=warmup_ms, rep_ms=rep_ms)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def pass_runner(
    impl: Impl, problem: AttentionProblem, pass_: str, seed: int = 3
) -> tuple[Callable[[], object], list[Tensor]]:
    """A zero-argument call doing one pass, and the tensors whose gradients it accumulates."""
    inputs = list(problem.float_inputs().values())
    if pass_ == "fwd":

        def forward() -> None:
            with torch.no_grad():
                impl(problem)

        return forward, []
    outputs = _float_outputs(impl(problem))
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=gen).to(t.device, t.dtype) for t in outputs]
    if pass_ == "both":
        return lambda: torch.autograd.backward(_float_outputs(impl(problem)), upstream), inputs
    return lambda: torch.autograd.backward(outputs, upstream, retain_graph=True), inputs


def _failure(impl: str, err: BaseException) -> str:
    """Row status of a failed call: running out of memory is a result (the reference at 512 px),
    so is a shape FlexAttention does not support; anything else is an error of this run."""
    if is_out_of_memory(err):
        return "oom"
    return f"unsupported {first_line(err)}" if impl == "flex" else f"error {first_line(err)}"


# --------------------------------------------------------------------------------------------------
# Table and CSV
# --------------------------------------------------------------------------------------------------


HEADER = (
    f"{'block':<16} {'pass':<4} {'impl':<13} {'ms':>9} {'x ref':>6} {'TFLOP/s':>8} {'GB/s':>8} "
    f"{'% copy':>6} {'peak MB':>9} {'mem/ref':>7} {'err':>8}  status"
)


def csv_records(rows: list[Row]) -> list[dict[str, object]]:
    return [dict(zip(CSV_COLUMNS, asdict(row).values(), strict=True)) for row in rows]


def append_csv(path: Path, rows: list[Row]) -> None:
    append_rows(path, CSV_COLUMNS, csv_records(rows))


def format_row(row: Row, ref: Row | None) -> str:
    speedup = ref.median_ms / row.median_ms if ref and ref.median_ms and row.median_ms else None
    memory = row.peak_mb / ref.peak_mb if ref and ref.peak_mb and row.peak_mb else None
    return (
        f"{row.shape.split()[0]:<16} {row.pass_:<4} {row.impl:<13} "
        f"{cell(row.median_ms, '.4f'):>9} {cell(speedup, '.2f'):>6} {cell(row.tflops, '.2f'):>8} "
        f"{cell(row.gbps, '.1f'):>8} {cell(row.pct_copy, '.1f'):>6} {cell(row.peak_mb, '.1f'):>9} "
        f"{cell(memory, '.3f'):>7} {cell(row.err, '.2e'):>8}  {row.status}"
    )


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    device: torch.device
    dtype: torch.dtype
    batch: int
    check_batch: int
    impls: tuple[str, ...]
    passes: tuple[str, ...]
    warmup_ms: int
    rep_ms: int
    accounting: str = "derived"


def bench_shape(
    preset: str, shape: AttentionShape, s: Settings, env: dict[str, str], copy_gbps: float
) -> list[Row]:
    """Check, then time, every implementation on one block; returns its rows."""
    problem = make_problem(
        shape, s.batch, device=s.device, dtype=s.dtype, seed=0, requires_grad=True
    )
    check = make_problem(
        shape, s.check_batch, device=s.device, dtype=s.dtype, seed=1, requires_grad=True
    )
    needs_grads = any(p != "fwd" for p in s.passes)
    gold = gold_run(check, needs_grads)
    element = torch.finfo(s.dtype).bits // 8
    rows = []
    for name in s.impls:
        impl = implementation(name, shape, s.device)
        impl_passes = passes_of(name, list(s.passes))
        if impl is None or not impl_passes:
            continue
        status, err = "ok", None
        try:
            flex = name == "flex"
            err = check_error(
                impl, check, gold, with_grads=needs_grads and not flex, complete=not flex
            )
            if err > TOLERANCE[s.dtype]:
                status = "wrong"
        except Exception as e:  # recorded as a row: an unsupported shape is a result too
            status = _failure(name, e)
        for pass_ in impl_passes:
            cost = shape_cost(shape, s.batch, element, pass_, s.accounting)
            ms = peak = None
            row_status = status
            if status == "ok":
                try:
                    run, reset = pass_runner(impl, problem, pass_)
                    ms = median_ms(
                        run, s.device, warmup_ms=s.warmup_ms, rep_ms=s.rep_ms, reset=reset
                    )
                    peak = peak_mb(run, s.device)
                    del run, reset
                except Exception as e:  # as above
                    row_status = _failure(name, e)
                    ms = peak = None
                if s.device.type == "cuda":
                    torch.cuda.empty_cache()
            sec = ms * 1e-3 if ms else None
            rows.append(
                Row(
                    timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **env,
                    preset=preset,
                    op="dense" if shape.block == "dense" else "candidate",
                    block=shape.block,
                    shape=shape.describe(),
                    batch=s.batch,
                    dtype=str(s.dtype).removeprefix("torch."),
                    pass_=pass_,
                    impl=name,
                    status=row_status,
                    median_ms=ms,
                    tflops=cost.flops / sec / 1e12 if sec else None,
                    gbps=cost.bytes / sec / 1e9 if sec else None,
                    pct_copy=100 * cost.bytes / sec / 1e9 / copy_gbps if sec else None,
                    peak_mb=peak,
                    err=err,
                    copy_gbps=copy_gbps,
                    flops=cost.flops,
                    bytes=cost.bytes,
                )
            )
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", action="append", default=[], choices=sorted(SHAPE_SETS))
    parser.add_argument(
        "--shape", action="append", default=[], help="explicit block, BLOCK:key=value,..."
    )
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny preset at batch 2: a CPU run in seconds"
    )
    parser.add_argument("--blocks", default="dense,inter,inner", help="block types to run")
    parser.add_argument("--passes", default=",".join(PASSES), help="fwd,bwd,both")
    parser.add_argument(
        "--impls",
        default=None,
        help=f"among {','.join(IMPLS)} (default: all on a GPU, reference,compiled on a CPU)",
    )
    parser.add_argument("--batch", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument(
        "--check-batch",
        type=int,
        default=2,
        help="batch of the correctness check (at most --batch)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on GPU, fp32 on CPU"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="default cuda; without CUDA the default run is refused (--tiny runs on the cpu)",
    )
    parser.add_argument(
        "--accounting",
        choices=ACCOUNTINGS,
        default="derived",
        help="compulsory bytes of benchmarks/attention_cost.py (derived: new; list: old)",
    )
    parser.add_argument("--warmup", type=int, default=25, help="warm-up per timing, ms")
    parser.add_argument("--rep", type=int, default=100, help="measurement per timing, ms")
    add_csv_argument(parser, DEFAULT_CSV)
    return parser


def _split(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(x for x in text.split(",") if x)
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"--{what} must list some of {allowed}, got {text!r}")
    return items


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        blocks = _split(args.blocks, ("dense", "inter", "inner"), "blocks")
        passes = _split(args.passes, PASSES, "passes")
        presets = args.preset + (["tiny"] if args.tiny else [])
        if not presets and not args.shape:
            presets = ["deepfashion-256", "deepfashion-512"]
        shapes = [(p, s) for p in presets for s in preset_shapes(p)]
        shapes += [("shape", parse_shape(spec)) for spec in args.shape]
        device = run_device(args.device, tiny=args.tiny, gpu_work="the attention blocks")
        on_gpu = device.type == "cuda"
        impls = _split(
            args.impls or ("fused,reference,compiled,flex" if on_gpu else "reference,compiled"),
            IMPLS,
            "impls",
        )
    except ValueError as err:
        print(f"bench_attention: error: {err}", file=sys.stderr)
        return 2
    shapes = [(p, s) for p, s in shapes if s.block in blocks]
    on_interpreter = interpreting()
    if any(i.startswith("fused") for i in impls) and not on_gpu and not on_interpreter:
        print(
            "bench_attention: error: the fused kernels need a CUDA device (or TRITON_INTERPRET=1); "
            "leave 'fused' out of --impls on a CPU",
            file=sys.stderr,
        )
        return 2
    batch = args.batch or (2 if args.tiny else 8)
    settings = Settings(
        device=device,
        dtype=DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")],
        batch=batch,
        check_batch=max(1, min(args.check_batch, batch)),
        impls=impls,
        passes=passes,
        warmup_ms=args.warmup,
        rep_ms=args.rep,
        accounting=args.accounting,
    )
    env = environment(device)
    copy_gbps = copy_bandwidth_gbps(device, warmup_ms=args.warmup, rep_ms=args.rep)
    print(
        f"{env['gpu']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
        f"{str(settings.dtype).removeprefix('torch.')} | batch {batch} | "
        f"device copy {copy_gbps:.1f} GB/s"
    )
    print(HEADER)
    rows: list[Row] = []
    for preset, shape in shapes:
        torch._dynamo.reset()  # a fresh compile cache per block: no recompile limit is reached
        print(f"# {preset}: {shape.describe()}", flush=True)
        new = bench_shape(preset, shape, settings, env, copy_gbps)
        for row in new:
            ref = next(
                (r for r in new if r.impl == "reference" and r.pass_ == row.pass_ and r.median_ms),
                None,
            )
            print(format_row(row, ref), flush=True)
        rows += new
    write_rows(csv_destination(args.csv, DEFAULT_CSV, device), CSV_COLUMNS, csv_records(rows))
    bad = [r for r in rows if r.status == "wrong" or r.status.startswith("error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
