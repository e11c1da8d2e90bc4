"""The attention problems of the real models: sizes per block, and realistic inputs for them.

`kernels` must not import `dynast`, so the autotuner, the ahead-of-time report and the benchmarks
take the sizes of the generator's attention blocks from here: `MODELS`, one row per model preset,
is the one table of model sizes in the repository (docs/method.md section 2, the sizes table).
`dynast.config.DynaSTConfig.attention_sizes` derives the same row from a model config, and
tests/dynast/test_preset_registry.py checks that both agree for every preset of `dynast.config`.
The deepfashion-256 model has, per sample:

    block   grid     queries  candidates  Cqk  Cp   Cv
    dense   32x32    1,024    all         640  128  512   (two dense blocks)
    inter   64x64    4,096    4k = 16     320  64   256   (first block of the scale)
    inner   64x64    4,096    5k = 20     320  64   256   (second block)
    ...     128x128, 256x256 likewise with channels halving at each scale

and the same model at 512 pixels doubles every side (dense at 4,096 tokens). Query and key grids
are the same size at every scale (cross-attention from the input to the exemplar).

Shapes are written `block:key=value,...` on command lines, e.g.
`dense:H=32,W=32,Cqk=640,Cp=128,Cv=512` or `inner:H=256,W=256,Cqk=80,Cp=16,Cv=64,k=4`
(optional keys: Cw, k, scale, prune_scale; scales default to the release's values per block).

Tuning keys: `AttentionShape.dims(batch)` gives a block's sizes under the names the fused kernels'
launchers use at run time to look up their tuned launch config (`kernels.tuning.table`): dense
`B, Nq, Nk, Cqk, Cp, Cv, Cw, k` (k = 0 for the backward kernels); candidates
`Nq, Cqk, Cp, Cv, Cw, M, G` (per sample; G = queries sharing one list: 4 for inter-scale windows,
1 otherwise). Cw = 0 means no warp output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .call import AttentionInputs
from .candidates.lists import (
    PER_MATCH,
    CandidateList,
    inner_scale_candidates,
    inter_scale_candidates,
)
from .checks import check_number

BLOCKS = ("dense", "inter", "inner")


@dataclass(frozen=True)
class AttentionShape:
    """One attention block's problem, per sample. Scales left as None take the release's values:
    dense `1/sqrt(Cqk)` and `1/Cp`, sparse 100 and 1."""

    block: str
    height: int
    width: int
    cqk: int
    cp: int
    cv: int
    cw: int = 3
    k: int = 4
    scale: float | None = None
    prune_scale: float | None = None

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        for name in ("height", "width", "cqk", "cp", "cv", "k"):
            check_number(name, getattr(self, name), integer=True, low=1)
        check_number("cw (0: no warp)", self.cw, integer=True, low=0)
        if self.block == "inter" and (self.height % 2 or self.width % 2):
            raise ValueError(
                f"an inter-scale block needs an even grid, got {self.height}x{self.width}"
            )
        if self.k > self.candidates:
            raise ValueError(
                f"k ({self.k}) must not exceed the candidate count ({self.candidates})"
            )
        dense = self.block == "dense"
        if self.scale is None:
            object.__setattr__(self, "scale", 1 / math.sqrt(self.cqk) if dense else 100.0)
        if self.prune_scale is None:
            object.__setattr__(self, "prune_scale", 1 / self.cp if dense else 1.0)

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def candidates(self) -> int:
        """Keys each query sees: all of them (dense) or M = 4k / 5k."""
        if self.block == "dense":
            return self.tokens
        return PER_MATCH[self.block] * self.k

    @property
    def op(self) -> str:
        """The public operator that runs this block."""
        return "dynamic_attention" if self.block == "dense" else "candidate_attention"

    @property
    def label(self) -> str:
        return f"{self.block}-{self.height}x{self.width}"

    def describe(self) -> str:
        m = "all" if self.block == "dense" else str(self.candidates)
        return (
            f"{self.label} N={self.tokens} M={m} Cqk={self.cqk} Cp={self.cp} Cv={self.cv} "
            f"Cw={self.cw} k={self.k}"
        )

    @property
    def group(self) -> int:
        """Queries sharing one candidate list: the 2x2 window of an inter-scale block, else 1."""
        return 4 if self.block == "inter" else 1

    def dims(self, batch: int, *, backward: bool = False) -> dict[str, int]:
        """The sizes under which the fused kernels' launchers look up their tuned config
        (`kernels.tuning.table`), named as they name them: the autotuner must record winners under
        the very same keys. The dense kernels key on the batch and top-k too (a backward computes no
        top-k: its launches say k = 0); the candidate kernels on per-sample sizes and the window
        group G."""
        if self.block == "dense":
            return {
                "B": batch,
                "Nq": self.tokens,
                "Nk": self.tokens,
                "Cqk": self.cqk,
                "Cp": self.cp,
                "Cv": self.cv,
                "Cw": self.cw,
                "k": 0 if backward else self.k,
            }
        return {
            "Nq": self.tokens,
            "Cqk": self.cqk,
            "Cp": self.cp,
            "Cv": self.cv,
            "Cw": self.cw,
            "M": self.candidates,
            "G": self.group,
        }


@dataclass(frozen=True)
class ModelSizes:
    """The sizes that fix a generator's attention problems: the image side and, per scale with the
    coarsest first, the value channels C_v, positional channels C_pos (C_qk = C_v + C_pos) and
    prune channels C_p; `topk` matches per query. Scale `i` (0 = coarsest, dense) works on a
    grid of image_size / 2**(scales - 1 - i) tokens per side: the finest at the image size."""

    image_size: int
    value_channels: tuple[int, ...]
    pos_channels: tuple[int, ...]
    prune_channels: tuple[int, ...]
    topk: int

    def __post_init__(self) -> None:
        n = len(self.value_channels)
        if not n or len(self.pos_channels) != n or len(self.prune_channels) != n:
            raise ValueError(
                "value_channels, pos_channels and prune_channels need one entry per scale each, "
                f"got {self.value_channels}, {self.pos_channels}, {self.prune_channels}"
            )
        if self.image_size % 2 ** (n - 1):
            raise ValueError(
                f"image_size ({self.image_size}) must be divisible by 2**(scales - 1) = "
                f"{2 ** (n - 1)}"
            )

    @property
    def grid_sides(self) -> tuple[int, ...]:
        """Tokens per side of each scale's grid, coarsest first."""
        n = len(self.value_channels)
        return tuple(self.image_size // 2 ** (n - 1 - i) for i in range(n))


def _released_sizes(image_size: int) -> ModelSizes:
    # The released DeepFashion architecture: ngf 64, pos and prune units 16, widths capped at 8x.
    return ModelSizes(
        image_size=image_size,
        value_channels=(512, 256, 128, 64),
        pos_channels=(128, 64, 32, 16),
        prune_channels=(128, 64, 32, 16),
        topk=4,
    )


# The model presets of `dynast.config.PRESETS`, by the same names. CelebA-HQ and ADE20K differ
# from DeepFashion only in their semantic input, which no attention block sees.
MODELS: dict[str, ModelSizes] = {
    "deepfashion-256": _released_sizes(256),
    "deepfashion-512": _released_sizes(512),
    "celebahq-edge-256": _released_sizes(256),
    "ade20k-256": _released_sizes(256),
    "synthetic-64": ModelSizes(64, (128, 64, 32, 16), (32, 16, 8, 4), (32, 16, 8, 4), topk=4),
    "synthetic-64-narrow": ModelSizes(64, (64, 32, 16, 8), (32, 16, 8, 4), (32, 16, 8, 4), topk=4),
}


def model_shapes(sizes: ModelSizes, *, warp_channels: int = 3) -> list[AttentionShape]:
    """The attention blocks of a generator of these sizes, one entry per distinct problem: the
    dense blocks of the coarsest scale share one, each finer scale has an inter- and an
    inner-scale block."""
    shapes = []
    for level, side in enumerate(sizes.grid_sides):
        cv = sizes.value_channels[level]
        problem = dict(
            height=side,
            width=side,
            cqk=cv + sizes.pos_channels[level],
            cp=sizes.prune_channels[level],
            cv=cv,
            cw=warp_channels,
            k=sizes.topk,
        )
        blocks = ("dense",) if level == 0 else ("inter", "inner")
        shapes.extend(AttentionShape(block=block, **problem) for block in blocks)
    return shapes


def tiny_shapes() -> list[AttentionShape]:
    """Awkward small sizes (non-square grids, channels that are no powers of two) so that CPU runs
    of the benchmark and autotuner finish in seconds."""
    return [
        AttentionShape("dense", 6, 10, cqk=48, cp=12, cv=40, k=3),
        AttentionShape("inter", 12, 20, cqk=24, cp=8, cv=20, k=3),
        AttentionShape("inner", 12, 20, cqk=24, cp=8, cv=20, k=3),
    ]


# Shape sets by name: every model preset, and `tiny` (no model: awkward sizes for CPU runs; not
# the step benchmarks' tiny model, benchmarks/tiny_model.py).
SHAPE_SETS: dict[str, Callable[[], list[AttentionShape]]] = {
    **{name: partial(model_shapes, sizes) for name, sizes in MODELS.items()},
    "tiny": tiny_shapes,
}


def preset_shapes(name: str) -> list[AttentionShape]:
    if name not in SHAPE_SETS:
        raise ValueError(f"unknown shape preset {name!r}; expected one of {sorted(SHAPE_SETS)}")
    return SHAPE_SETS[name]()


def sparse_scale_sizes(name: str) -> list[tuple[int, int, int, int]]:
    """(tokens, Cqk, Cp, Cv) of each sparse scale of model preset `name`, coarsest first."""
    return [(s.tokens, s.cqk, s.cp, s.cv) for s in preset_shapes(name) if s.block == "inner"]


def dense_dims(name: str, batch: int) -> dict[str, int]:
    """The tuning key (`AttentionShape.dims`) of the dense block of model preset `name`."""
    return next(s for s in preset_shapes(name) if s.block == "dense").dims(batch)


def _narrowest_channels(name: str, batch: int) -> dict[str, int]:
    # The dense grid of `name` with the channels of its finest scale.
    finest = preset_shapes(name)[-1]
    return {**dense_dims(name, batch), "Cqk": finest.cqk, "Cp": finest.cp, "Cv": finest.cv}


# The dense problems `kernels.aot` compiles (every config of the space, bf16): deepfashion at 256
# px (its 512 px model, celebahq and ade20k have the same channels: the same compiled kernels),
# the same grid with the channels of its finest scale (the narrowest channels of the model), and
# the coarsest scale of synthetic-64-narrow and synthetic-64, 8x8 tokens. Each compiles to
# different kernels.
AOT_DENSE_DIMS: tuple[dict[str, int], ...] = (
    dense_dims("deepfashion-256", 8),
    _narrowest_channels("deepfashion-256", 8),
    dense_dims("synthetic-64-narrow", 4),
    dense_dims("synthetic-64", 4),
)


_SPEC_KEYS = {
    "H": ("height", int),
    "W": ("width", int),
    "Cqk": ("cqk", int),
    "Cp": ("cp", int),
    "Cv": ("cv", int),
    "Cw": ("cw", int),
    "k": ("k", int),
    "scale": ("scale", float),
    "prune_scale": ("prune_scale", float),
}


def parse_shape(spec: str) -> AttentionShape:
    """`"inter:H=64,W=64,Cqk=320,Cp=64,Cv=256"` -> AttentionShape (see the module docstring)."""
    block, sep, rest = spec.partition(":")
    if not sep or block not in BLOCKS:
        raise ValueError(
            f"shape {spec!r} must read BLOCK:key=value,... with BLOCK one of {BLOCKS}, "
            "e.g. dense:H=32,W=32,Cqk=640,Cp=128,Cv=512"
        )
    values: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, eq, text = item.partition("=")
        if not eq or key not in _SPEC_KEYS:
            raise ValueError(
                f"shape {spec!r}: {item!r} is not key=value with a key among {list(_SPEC_KEYS)}"
            )
        name, kind = _SPEC_KEYS[key]
        try:
            values[name] = kind(text)
        except ValueError as err:
            raise ValueError(
                f"shape {spec!r}: {key} must be {kind.__name__}, got {text!r}"
            ) from err
    missing = [key for key in ("H", "W", "Cqk", "Cp", "Cv") if _SPEC_KEYS[key][0] not in values]
    if missing:
        raise ValueError(f"shape {spec!r} lacks {', '.join(missing)}")
    return AttentionShape(block=block, **values)


def plausible_topk(
    batch: int,
    height: int,
    width: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    outliers: float = 0.1,
) -> Tensor:
    """Top-k key indices [B, height*width, k] int64 (CPU) that look like a trained model's.

    Matches between a person in two poses follow a smooth displacement field: each query's k
    matches sit around its displaced position, so neighbouring queries share most candidates
    (what the gather kernels rely on); a fraction `outliers` of matches land anywhere.
    Uniformly random indices would make every gather miss the cache and misstate the speed."""
    if not 0 <= outliers <= 1:
        raise ValueError(f"outliers must lie in [0, 1], got {outliers}")
    # Displacement: coarse noise upsampled, up to about a quarter of the grid.
    coarse = torch.randn(batch, 2, 4, 4, generator=generator)
    flow = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.12 * height * flow[:, 0]
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.12 * width * flow[:, 1]
    # The k matches: the displaced cell, then its neighbours, nearest first.
    ring = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)]
    offsets = [ring[i % len(ring)] for i in range(k)]
    dy = torch.tensor([o[0] for o in offsets], dtype=torch.float32)
    dx = torch.tensor([o[1] for o in offsets], dtype=torch.float32)
    cy = ys.round().clamp(0, height - 1)[..., None]
    cx = xs.round().clamp(0, width - 1)[..., None]
    my = (cy + dy).clamp(0, height - 1).long()  # [B, H, W, k]
    mx = (cx + dx).clamp(0, width - 1).long()
    index = (my * width + mx).reshape(batch, height * width, k)
    stray = torch.rand(index.shape, generator=generator) < outliers
    anywhere = torch.randint(0, height * width, index.shape, generator=generator)
    return torch.where(stray, anywhere, index)


def realistic_candidates(
    shape: AttentionShape,
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> CandidateList:
    """Candidates [B, Nq, M], a CandidateList, built the way the model builds them: the
    inter-scale block expands a coarse top-k, the inner-scale block the top-k of its own scale.

    The top-k is drawn on the CPU (so a seed gives the same problem on every device) and the
    candidates are built on `device`: a plain copy of their indices would lose the window-sharing
    fact by which the fused kernels read one list per 2x2 window (`kernels.candidates.lists`)."""
    if shape.block == "inter":
        coarse = plausible_topk(
            batch, shape.height // 2, shape.width // 2, shape.k, generator=generator
        )
        return inter_scale_candidates(coarse.to(device), shape.height, shape.width)
    if shape.block == "inner":
        own = plausible_topk(batch, shape.height, shape.width, shape.k, generator=generator)
        return inner_scale_candidates(own.to(device), shape.height, shape.width)
    raise ValueError(f"a {shape.block} block has no candidates")


@dataclass
class AttentionProblem:
    """Inputs of one block, token-major as the operators take them. `candidates` is None for a
    dense block, `warp_values` None when Cw = 0."""

    shape: AttentionShape
    q: Tensor
    k: Tensor
    v: Tensor
    q_prune: Tensor
    k_prune: Tensor
    warp_values: Tensor | None
    candidates: CandidateList | None

    def float_inputs(self) -> dict[str, Tensor]:
        """The float inputs by name (warp_values only where Cw > 0)."""
        return self.inputs().named()

    def inputs(self) -> AttentionInputs:
        """The float inputs as the one call type of the launchers and runners."""
        return AttentionInputs(self.q, self.k, self.v, self.q_prune, self.k_prune, self.warp_values)

    def positional(self) -> tuple[Tensor, ...]:
        """Positional arguments of the operator (and of its backends), in order."""
        head = (self.q, self.k, self.v, self.q_prune, self.k_prune)
        return head if self.candidates is None else (*head, self.candidates)

    def keywords(self) -> dict[str, object]:
        return {
            "scale": self.shape.scale,
            "prune_scale": self.shape.prune_scale,
            "topk": self.shape.k,
            "warp_values": self.warp_values,
        }


def make_problem(
    shape: AttentionShape,
    batch: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    requires_grad: bool = False,
) -> AttentionProblem:
    """Fresh inputs for one block, drawn on the CPU from `seed` (the same on every device).

    Dense blocks get normal features (scores of order one after `1/sqrt(Cqk)`); sparse blocks get
    unit-norm query and key rows, so that `100 <q, k>` is the release's cosine similarity over a
    temperature of 0.01. Prune features are normal: about half of the keys are kept."""
    check_number("batch", batch, integer=True, low=1)
    gen = torch.Generator().manual_seed(seed)
    n = shape.tokens

    def draw(channels: int, unit: bool = False) -> Tensor:
        x = torch.randn(batch, n, channels, generator=gen)
        if unit:
            x = x / x.norm(dim=-1, keepdim=True)
        x = x.to(device=device, dtype=dtype)
        return x.requires_grad_(requires_grad)

    sparse = shape.block != "dense"
    candidates = None
    if sparse:
        candidates = realistic_candidates(shape, batch, generator=gen, device=device)
    return AttentionProblem(
        shape=shape,
        q=draw(shape.cqk, unit=sparse),
        k=draw(shape.cqk, unit=sparse),
        v=draw(shape.cv),
        q_prune=draw(shape.cp),
        k_prune=draw(shape.cp),
        warp_values=draw(shape.cw) if shape.cw else None,
        candidates=candidates,
    )
