"""The generator training step's cost model: FLOPs, bytes and launches of every operator it runs,
and the time each category could take at best on a given card.

    python -m benchmarks.step_cost                                      # deepfashion-256, batch 8
    python -m benchmarks.step_cost --size 512 --batch 4 --top 25
    python -m benchmarks.step_cost --tiny                               # seconds, for the tests

The step is `bench_train_step.py`'s (the generator's forward with warps, the stand-in loss, the
backward) under bf16 autocast. It runs on fake tensors (`FakeTensorMode`): no values, no device,
no memory, every operator and shape exactly as eager PyTorch dispatches them, so the whole
deepfashion-256 step at batch 8 is counted on a laptop in seconds. Every aten operator is
recorded with

- its FLOPs (`torch.utils.flop_counter`'s formulas: convolutions and matrix products; element-wise
  arithmetic is not counted, it is memory-bound),
- its bytes: every tensor it reads and writes, counted once per operator (what the operator
  moves at best: each eager operator is at least one kernel, which reads its inputs from and
  writes its outputs to device memory). Views move nothing and are left out, as are
  allocations that write nothing (`empty`),
- its floor: max(FLOPs / peak FLOP rate, bytes / bandwidth), the time it cannot beat on the card,

and put in a category by its name (convolution, attention, layout copy, normalisation, ...).

The attention runs through the operators registered in `kernels.custom_ops`, as under
`torch.compile`; their costs are those of the fused kernels in `benchmarks.attention_cost`
("derived" accounting: candidates derived from the previous top-k in the kernel).

What the sums say: the floors add up to the least time the eager step could take with every kernel
at the roofline; the measured step (docs/benchmarks-h200.md) divided by that sum says how far the
kernels run from it; the bytes of a category against its compulsory bytes say what fusing it can
save. The count of operators times `--host-us` is the host time eager dispatch needs: when it
exceeds the device floor the step is bound by the CPU (a CUDA graph or `torch.compile` helps).

Autocast follows the CPU's operator lists (the fake tensors live on the CPU), except for the
padding operators, which take CUDA's policy (the input's dtype; CPU autocast pads in fp32). CUDA's
lists also run a few element-wise operators (rsqrt, pow, exp, sum) in fp32; in this model those
act on per-pixel statistics ([B, 1, H, W]), a small share of the bytes. The default peak and
bandwidth are an H200's (see PEAK_TFLOPS, COPY_TBS).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from benchmarks.attention_cost import attention_cost
from benchmarks.bench_train_step import (
    AMP,
    generator_loss,
    load_config,
    make_inputs,
    model_source_arguments,
    to_channels_last,
)
from benchmarks.measure import append_rows, cell
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.config import PRESETS, DynaSTConfig
from dynast.generator import Generator
from kernels.candidates.lists import PER_MATCH

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "benchmarks" / "results" / "step_cost.csv"

# H200 SXM: 989 TFLOP/s dense bf16 on tensor cores (NVIDIA's datasheet, without sparsity); 4.22 TB/s
# is the device copy bench_attention.py measured on the lent card (read + write bytes per second).
PEAK_TFLOPS = 989.0
COPY_TBS = 4.22
HOST_US = 5.0  # host time of one eager operator (Python, dispatch, launch): a typical figure

# Kernel names and aten names fall into categories a little differently (a mean is a reduction
# kernel on the GPU, a normalisation here); these three groups are the same on both sides.
GROUPS = {
    "attention": "attention",
    "convolution": "convolution, matmul",
    "matmul": "convolution, matmul",
}
MEMORY_BOUND = "memory-bound rest"
# By aten name; a name in no set is element-wise. The category names are `profile_step.py`'s, so
# that `--profile` can set measured times beside these floors.
_BY_NAME = {
    "convolution": {"convolution", "convolution_backward", "_convolution", "conv2d"},
    "matmul": {"mm", "bmm", "addmm", "baddbmm", "mv", "dot", "addmv"},
    # mean / var come from the positional normalisations of SPADE and the attention blocks.
    "normalisation": {
        "mean", "var", "var_mean", "std", "native_batch_norm", "native_batch_norm_backward",
        "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
        "_native_batch_norm_legit_no_training", "native_layer_norm", "native_layer_norm_backward",
        "native_group_norm", "native_group_norm_backward",
    },
    "copy": {
        "_to_copy", "clone", "copy_", "cat", "stack", "reflection_pad2d",
        "reflection_pad2d_backward", "constant_pad_nd", "replication_pad2d",
        "replication_pad2d_backward", "upsample_bilinear2d", "upsample_bilinear2d_backward",
        "upsample_nearest2d", "upsample_nearest2d_backward", "index_select", "index_add", "gather",
        "scatter", "scatter_add", "slice_backward", "select_backward", "repeat", "new_zeros",
        "zeros", "zeros_like", "fill_", "zero_", "full", "new_full", "ones_like",
    },
    "reduction": {
        "sum", "amax", "amin", "max", "min", "topk", "sort", "_softmax", "_softmax_backward_data",
        "_log_softmax", "linalg_vector_norm", "aminmax", "argmax", "any", "all",
        "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward", "avg_pool2d",
        "avg_pool2d_backward",
    },
}  # fmt: skip
_CATEGORY_OF = {name: cat for cat, names in _BY_NAME.items() for name in names}
# Operators that move no data: allocations and metadata. (Views are found by their schema.)
_FREE = {
    "empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "detach", "alias",
    "lift_fresh", "_unsafe_view", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "is_same_size",
}  # fmt: skip
_ATTENTION_OPS = {
    "dense_attention": ("fwd", False),
    "candidate_attention": ("fwd", True),
    "dense_attention_backward": ("bwd", False),
    "candidate_attention_backward": ("bwd", True),
}

COLUMNS = [
    "timestamp", "config", "image_size", "batch", "amp", "norm", "layout", "peak_tflops",
    "bandwidth_tbs",
    "phase", "category", "ops", "gflop", "gbytes", "floor_ms",
]  # fmt: skip


def category(op_name: str) -> str:
    """The category of an aten operator name (the packet, e.g. "convolution_backward"), or
    "attention" for the dynast custom ops."""
    if op_name in _ATTENTION_OPS:
        return "attention"
    # In-place variants ("masked_fill_") take their out-of-place operator's category.
    return _CATEGORY_OF.get(op_name, _CATEGORY_OF.get(op_name.rstrip("_"), "elementwise"))


@dataclasses.dataclass
class OpCost:
    """One operator call: its name, pass ("forward" / "backward"), category, FLOPs, bytes, and in
    the backward the autograd node that ran it ("AddBackward0"; "" where none did: the engine's
    gradient sums, the forward)."""

    name: str
    phase: str
    category: str
    flops: float
    bytes: float
    node: str = ""

    def floor_ms(self, peak_tflops: float, bandwidth_tbs: float) -> float:
        """The least time this operator can take: compute- or memory-bound, whichever binds."""
        return 1e3 * max(self.flops / (peak_tflops * 1e12), self.bytes / (bandwidth_tbs * 1e12))


def _tensor_bytes(tree: object) -> int:
    return sum(
        t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor)
    )


def _node() -> str:
    """The autograd node the engine is running (backward), or "" (forward)."""
    node = torch._C._current_autograd_node()
    if node is None:
        return ""
    # Custom operators' nodes: "GeneratedBackwardFor_dynast_dense_attention_defaultBackward".
    name = type(node).__name__.removeprefix("GeneratedBackwardFor_")
    return name.replace("_defaultBackward", "Backward")


def attention_op_cost(op_name: str, args: tuple) -> tuple[float, float]:
    """(FLOPs, bytes) of one call of a `kernels.custom_ops` operator, as the fused kernels
    move them (`benchmarks.attention_cost`); args as the operator received them."""
    pass_, has_candidates = _ATTENTION_OPS[op_name]
    if pass_ == "bwd":
        args = args[3:]  # grad_out, grad_conf, grad_warp come first
    q, k, v, q_prune = args[:4]
    index = args[5] if has_candidates else None
    warp_values = args[6] if has_candidates else args[5]
    if has_candidates:
        index_kind = args[7]
        top_k = args[12] if pass_ == "fwd" else 0
    else:
        index_kind = None
        top_k = args[8] if pass_ == "fwd" else 0
    m, derived_from, index_bytes = None, None, 4
    if index is not None:
        if index_kind in PER_MATCH:
            m, derived_from = PER_MATCH[index_kind] * index.shape[-1], index_kind
        else:
            m, index_bytes = index.shape[-1], index.element_size()
    cost = attention_cost(
        batch=q.shape[0],
        nq=q.shape[1],
        nk=k.shape[1],
        m=m,
        cqk=q.shape[2],
        cp=q_prune.shape[2],
        cv=v.shape[2],
        cw=0 if warp_values is None else warp_values.shape[2],
        k=top_k,
        element_bytes=q.element_size(),
        index_bytes=index_bytes,
        pass_=pass_,
        derived_from=derived_from,
    )
    return cost.flops, cost.bytes


class CostRecorder(TorchDispatchMode):
    """Records an OpCost for every operator dispatched inside it; `phase` names the pass the
    caller is in. Views and allocations are not recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.ops: list[OpCost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        namespace = func.namespace
        name = func._overloadpacket.__name__
        if namespace == "dynast":
            flops, moved = attention_op_cost(name, args)
            self.ops.append(OpCost(name, self.phase, "attention", flops, moved, _node()))
        elif namespace == "aten" and not func.is_view and name not in _FREE:
            packet = func._overloadpacket
            flops = (
                flop_registry[packet](*args, **kwargs, out_val=out)
                if packet in flop_registry
                else 0
            )
            moved = _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
            self.ops.append(
                OpCost(name, self.phase, category(name), float(flops), float(moved), _node())
            )
        return out

    def add(self, name: str, category_name: str, flops: float, moved: float) -> None:
        """Records an operator the dispatcher does not see (a modelled fused kernel)."""
        self.ops.append(OpCost(name, self.phase, category_name, flops, moved, _node()))


class FusedNormCost(torch.autograd.Function):
    """Stands in for `kernels.norm.fused.spade_modulation` on fake tensors: records the bytes
    its two kernels move (module docstring there) and returns outputs of the right shapes.

    Forward: x read twice (statistics, then the output), gamma and beta once, out written; the
    per-pixel mean and rstd (fp32) written. Backward: x, dout and gamma read twice, dx and dgamma
    written, the statistics read; dbeta is dout itself. Without gamma / beta (the positional
    normalisation alone) those terms drop out."""

    @staticmethod
    def forward(ctx, x, gamma, beta, recorder):
        ctx.recorder, ctx.affine = recorder, gamma is not None
        ctx.save_for_backward(x)
        maps = 5 if ctx.affine else 3
        recorder.add(_norm_name(ctx.affine), "normalisation", 0.0, _norm_bytes(x, maps))
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        maps = 8 if ctx.affine else 5
        ctx.recorder.add(_norm_name(ctx.affine), "normalisation", 0.0, _norm_bytes(x, maps))
        dx = torch.empty_like(x)
        if not ctx.affine:
            return dx, None, None, None
        return dx, torch.empty_like(x), dout, None


def _norm_name(affine: bool) -> str:
    return "fused_spade_modulation" if affine else "fused_positional_norm"


def _norm_bytes(x: torch.Tensor, maps: int) -> float:
    stats = 2 * 4 * x.numel() // x.shape[1]  # mean and rstd, fp32, one per pixel
    return float(maps * x.numel() * x.element_size() + stats)


@contextlib.contextmanager
def _fused_norm(recorder: CostRecorder) -> Iterator[None]:
    """`norm_backend="triton"` on fake tensors: the operators of `kernels.norm` take their fused
    path (casts and layout as they run them), whose kernels `FusedNormCost` models."""

    def kernels(x, gamma, beta, eps):
        return FusedNormCost.apply(x, gamma, beta, recorder)

    with (
        mock.patch("kernels.norm.op.use_fused", return_value=True),
        mock.patch("kernels.norm.fused.spade_modulation", kernels),
    ):
        yield


# Padding operators CPU autocast runs in fp32 and CUDA autocast leaves in their input's dtype.
_CPU_ONLY_FP32 = ("reflection_pad2d", "replication_pad2d")


@contextlib.contextmanager
def cuda_autocast_pads() -> Iterator[None]:
    """CPU autocast with CUDA's policy for the padding operators: without it every reflect-padded
    convolution of a bf16 map would count a cast to fp32, an fp32 pad and a cast back, which a
    GPU never runs. The override is removed on exit (the dispatcher restores the CPU kernel)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for name in _CPU_ONLY_FP32:
                lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def _fake_step_environment() -> Iterator[None]:
    """Fake tensors, with the attention routed through the custom ops (their fake
    implementations give the shapes); as while compiling, the candidate builders only describe
    their lists (a fake tensor has no values to check)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with contextlib.ExitStack() as stack:
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(cuda_autocast_pads())
        # The blocks call the registered ops while compiling; these have fake implementations.
        stack.enter_context(mock.patch("torch.compiler.is_compiling", return_value=True))
        yield


def count_step(
    cfg: DynaSTConfig,
    size: int,
    batch: int,
    amp: torch.dtype | None,
    *,
    fused_norm: bool = False,
    channels_last: bool = False,
) -> list[OpCost]:
    """Every operator of one generator training step (forward with warps, stand-in loss,
    backward) of `cfg` at `size` px and `batch`, under autocast to `amp` (None: fp32); with
    `fused_norm` the normalisations as the fused kernels (`norm_backend="triton"`), with
    `channels_last` the weights and inputs in that layout (as `bench_train_step.py
    --channels-last`)."""
    if size < 1 or batch < 1:
        raise ValueError(f"size and batch must be >= 1, got size={size}, batch={batch}")
    recorder = CostRecorder()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_fake_step_environment())
        if fused_norm:
            stack.enter_context(_fused_norm(recorder))
        torch.manual_seed(0)
        model = Generator(
            dataclasses.replace(
                cfg, attention_backend="torch", norm_backend="triton" if fused_norm else "torch"
            )
        )
        x = make_inputs(cfg, size, batch, torch.device("cpu"))
        if channels_last:
            # What `model.to(memory_format=torch.channels_last)` does, parameter by parameter:
            # `to` swaps fake parameters and fails on the spectral norms' parametrisations.
            for p in model.parameters():
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
            x = to_channels_last(x)
        autocast = torch.autocast("cpu", dtype=amp, enabled=amp is not None)
        with recorder:
            with autocast:
                loss, _ = generator_loss(model, x)
            recorder.phase = "backward"
            loss.backward()
    return recorder.ops


@dataclasses.dataclass
class Summary:
    """Sums over a set of operators."""

    ops: int = 0
    flops: float = 0.0
    bytes: float = 0.0
    floor_ms: float = 0.0


def summarise(
    ops: list[OpCost], peak_tflops: float, bandwidth_tbs: float, key: Callable[[OpCost], str]
) -> dict[str, Summary]:
    sums: dict[str, Summary] = defaultdict(Summary)
    for op in ops:
        s = sums[key(op)]
        s.ops += 1
        s.flops += op.flops
        s.bytes += op.bytes
        s.floor_ms += op.floor_ms(peak_tflops, bandwidth_tbs)
    return dict(sums)


def category_table(ops: list[OpCost], peak_tflops: float, bandwidth_tbs: float) -> str:
    by_phase = {
        phase: summarise(
            [o for o in ops if o.phase == phase], peak_tflops, bandwidth_tbs, lambda o: o.category
        )
        for phase in ("forward", "backward")
    }
    total = summarise(ops, peak_tflops, bandwidth_tbs, lambda o: o.category)
    floor_all = sum(s.floor_ms for s in total.values())
    lines = [
        f"{'category':<14} {'ops':>6} {'GFLOP':>9} {'GB':>8} {'fwd ms':>8} {'bwd ms':>8} "
        f"{'floor ms':>9} {'share':>6}"
    ]
    for cat in sorted(total, key=lambda c: -total[c].floor_ms):
        s = total[cat]
        fwd = by_phase["forward"].get(cat, Summary()).floor_ms
        bwd = by_phase["backward"].get(cat, Summary()).floor_ms
        lines.append(
            f"{cat:<14} {s.ops:>6} {s.flops / 1e9:>9.1f} {s.bytes / 1e9:>8.2f} {fwd:>8.2f} "
            f"{bwd:>8.2f} {s.floor_ms:>9.2f} {s.floor_ms / floor_all:>6.1%}"
        )
    n = sum(s.ops for s in total.values())
    lines.append(
        f"{'total':<14} {n:>6} {sum(s.flops for s in total.values()) / 1e9:>9.1f} "
        f"{sum(s.bytes for s in total.values()) / 1e9:>8.2f} "
        f"{sum(s.floor_ms for s in by_phase['forward'].values()):>8.2f} "
        f"{sum(s.floor_ms for s in by_phase['backward'].values()):>8.2f} {floor_all:>9.2f} "
        f"{1:>6.1%}"
    )
    return "\n".join(lines)


def operator_table(
    ops: list[OpCost], peak_tflops: float, bandwidth_tbs: float, top: int, by_node: bool = False
) -> str:
    """The `top` operators (summed over their calls, per pass) by floor time; with `by_node` the
    backward's operators apart per autograd node that ran them (which forward operator's
    gradient they compute)."""

    def key(o: OpCost) -> str:
        name = f"{o.name} ({o.node})" if by_node and o.node else o.name
        return f"{o.phase:<8} {name}"

    by_name = summarise(ops, peak_tflops, bandwidth_tbs, key)
    floor_all = sum(s.floor_ms for s in by_name.values())
    category_of = {key(o): o.category for o in ops}
    shown = sorted(by_name, key=lambda k: -by_name[k].floor_ms)[:top]
    width = max([31] + [len(k) - 9 for k in shown])
    head = f"{'pass':<8} {'operator':<{width}} {'category':<13} {'calls':>6} {'GB':>8}"
    lines = [f"{head} {'floor ms':>9} {'share':>6}"]
    for name in shown:
        s = by_name[name]
        lines.append(
            f"{name:<{width + 9}} {category_of[name]:<13} {s.ops:>6} {s.bytes / 1e9:>8.2f} "
            f"{s.floor_ms:>9.2f} {s.floor_ms / floor_all:>6.1%}"
        )
    return "\n".join(lines)


def group(category_name: str) -> str:
    return GROUPS.get(category_name, MEMORY_BOUND)


@dataclasses.dataclass
class Profile:
    """Measured device time per kernel category of one `profile_step.py` run (its newest rows in
    a CSV), with what it ran."""

    config: str
    image_size: int
    batch: int
    amp: str
    backend: str
    ms: dict[str, float]


def read_profile(path: Path) -> Profile:
    """The newest run in a `profile_step.py` CSV. ValueError naming the file when it holds none."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(f"--profile {path}: cannot read it ({err})") from err
    needed = {"timestamp", "config", "image_size", "batch", "amp", "backend", "category"}
    if not rows or not needed | {"self_ms_per_step"} <= set(rows[0]):
        raise ValueError(f"--profile {path}: not a profile_step.py CSV with rows")
    newest = max(r["timestamp"] for r in rows)
    run = [r for r in rows if r["timestamp"] == newest]
    ms: dict[str, float] = defaultdict(float)
    for r in run:
        ms[r["category"]] += float(r["self_ms_per_step"])
    first = run[0]
    return Profile(
        config=first["config"],
        image_size=int(first["image_size"]),
        batch=int(first["batch"]),
        amp=first["amp"],
        backend=first["backend"],
        ms=dict(ms),
    )


def efficiency_table(
    ops: list[OpCost], profile: Profile, peak_tflops: float, bandwidth_tbs: float
) -> str:
    """Measured time against floor, per category and per group: how far each part of the step
    runs from its roofline (floor / measured: 100% is the roofline)."""
    floors = summarise(ops, peak_tflops, bandwidth_tbs, lambda o: o.category)
    lines = [f"{'category':<20} {'measured ms':>11} {'floor ms':>9} {'of roofline':>11}"]

    def row(label: str, measured: float, floor: float) -> str:
        ratio = cell(floor / measured if measured > 0 else None, ".1%")
        return f"{label:<20} {measured:>11.2f} {floor:>9.2f} {ratio:>11}"

    names = sorted(set(floors) | set(profile.ms), key=lambda c: -profile.ms.get(c, 0.0))
    for name in names:
        floor = floors[name].floor_ms if name in floors else 0.0
        lines.append(row(name, profile.ms.get(name, 0.0), floor))
    lines.append("")
    for label in ("attention", "convolution, matmul", MEMORY_BOUND):
        measured = sum(ms for c, ms in profile.ms.items() if group(c) == label)
        floor = sum(s.floor_ms for c, s in floors.items() if group(c) == label)
        lines.append(row(label, measured, floor))
    total_floor = sum(s.floor_ms for s in floors.values())
    lines.append(row("total", sum(profile.ms.values()), total_floor))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = model_source_arguments(parser)
    source.add_argument("--tiny", action="store_true", help="the benchmarks' tiny model")
    parser.add_argument("--size", type=int, default=None, help="image size (default the config's)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (tiny: 2)")
    parser.add_argument("--amp", choices=sorted(AMP), default=None, help="default bf16")
    parser.add_argument(
        "--norm",
        choices=("eager", "fused"),
        default="eager",
        help="the normalisations as eager operators or as the fused kernels (norm_backend triton)",
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and inputs")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    parser.add_argument("--bandwidth-tbs", type=float, default=COPY_TBS)
    parser.add_argument("--host-us", type=float, default=HOST_US, help="host time per operator")
    parser.add_argument("--top", type=int, default=20, help="operators listed (0: none)")
    parser.add_argument(
        "--by-node",
        action="store_true",
        help="list backward operators per autograd node (whose gradient they compute)",
    )
    parser.add_argument("--csv", type=Path, default=None, help=f"append rows (e.g. {DEFAULT_CSV})")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a profile_step.py CSV: its newest run's time per category beside the floors "
        "(the step is then counted at that run's config, size, batch and amp)",
    )
    return parser


def _adopt_profile(args: argparse.Namespace, profile: Profile) -> None:
    """Count the step the profile measured: its config, size, batch and amp, unless the command
    line says otherwise, which is refused (the two tables would not describe one step)."""
    wanted = {
        "config": ("tiny" if args.tiny else args.preset, profile.config),
        "size": (args.size, profile.image_size),
        "batch": (args.batch, profile.batch),
        "amp": (args.amp, profile.amp),
    }
    for name, (given, measured) in wanted.items():
        if given is not None and given != measured:
            raise SystemExit(
                f"--profile {args.profile} measured {name} {measured!r}, but {given!r} was asked"
            )
    if args.config is not None:
        raise SystemExit("--profile takes the profiled preset; leave out --config")
    if profile.config == "tiny":
        args.tiny = True
    elif profile.config in PRESETS:
        args.preset = profile.config
    else:
        raise SystemExit(f"--profile {args.profile}: unknown config {profile.config!r}")
    args.size, args.batch, args.amp = profile.image_size, profile.batch, profile.amp


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for flag in ("peak_tflops", "bandwidth_tbs"):
        if getattr(args, flag) <= 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.host_us < 0 or args.top < 0:
        raise SystemExit("--host-us and --top must be >= 0")
    profile = None
    if args.profile is not None:
        try:
            profile = read_profile(args.profile)
        except ValueError as err:
            raise SystemExit(str(err)) from err
        _adopt_profile(args, profile)
    if args.tiny:
        cfg, size, batch = tiny_model_config(), TINY_SIZE, TINY_BATCH
    else:
        try:
            cfg = load_config(args.preset, args.config)
        except ValueError as err:
            raise SystemExit(str(err)) from err
        size, batch = cfg.image_size, 8
    size = size if args.size is None else args.size
    batch = batch if args.batch is None else args.batch
    args.amp = args.amp or "bf16"
    if size < 1 or batch < 1:
        raise SystemExit(f"--size and --batch must be >= 1, got {size} and {batch}")
    ops = count_step(
        cfg,
        size,
        batch,
        AMP[args.amp],
        fused_norm=args.norm == "fused",
        channels_last=args.channels_last,
    )
    layout = "channels_last" if args.channels_last else "NCHW"
    peak, bw = args.peak_tflops, args.bandwidth_tbs
    print(
        f"{cfg.name}, {size} px, batch {batch}, amp {args.amp}, {args.norm} norm, {layout}: "
        f"generator fwd+bwd with warps; "
        f"floors at {peak:g} TFLOP/s and {bw:g} TB/s"
    )
    print(category_table(ops, peak, bw))
    host_ms = len(ops) * args.host_us / 1e3
    floor_ms = sum(o.floor_ms(peak, bw) for o in ops)
    print(
        f"host: {len(ops)} operators x {args.host_us:g} us = {host_ms:.1f} ms "
        f"({'above' if host_ms > floor_ms else 'below'} the device floor of {floor_ms:.1f} ms)"
    )
    if args.top:
        print()
        print(operator_table(ops, peak, bw, args.top, by_node=args.by_node))
    if profile is not None:
        print()
        print(
            f"measured: {args.profile} (newest run: backend {profile.backend}); "
            "of roofline = floor / measured"
        )
        if profile.backend != "triton":
            print("note: the floors cost the fused attention; this profile ran the reference")
        print(efficiency_table(ops, profile, peak, bw))
    if args.csv is not None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = []
        for phase in ("forward", "backward"):
            sums = summarise([o for o in ops if o.phase == phase], peak, bw, lambda o: o.category)
            for cat, s in sorted(sums.items()):
                rows.append(
                    {
                        "timestamp": stamp, "config": cfg.name, "image_size": size,
                        "batch": batch, "amp": args.amp, "norm": args.norm, "layout": layout,
                        "peak_tflops": peak,
                        "bandwidth_tbs": bw, "phase": phase, "category": cat, "ops": s.ops,
                        "gflop": cell(s.flops / 1e9, ".3f"), "gbytes": cell(s.bytes / 1e9, ".4f"),
                        "floor_ms": cell(s.floor_ms, ".4f"),
                    }
                )  # fmt: skip
        append_rows(args.csv, COLUMNS, rows)
        print(f"\n{len(rows)} rows appended to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
