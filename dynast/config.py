"""Model configuration: one frozen dataclass for generator and discriminator, and named presets.

`PRESETS` is the one registry of model presets: a name means the same model everywhere. Training
presets (`train.config`) add data and an optimisation recipe to these models; the autotuner and
the benchmarks read the same names' sizes from `kernels.shapes.MODELS` (kernels cannot import
dynast), and tests check that the two agree.

Channel widths follow the release: at pyramid level `l` (0 = finest, `num_scales - 1` =
coarsest) a unit `u` becomes `u * min(2**l, max_multiplier)`. With ngf 64, pos_unit 16 and
prune_unit 16 that gives the released C_v 512/256/128/64, C_pos 128/64/32/16 and C_p 128/64/32/16
(docs/method.md section 2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kernels.call import BACKENDS, WARP_MODES
from kernels.checks import check_number
from kernels.shapes import ModelSizes

# The operators' own choices, under the names the model config has always used.
WARP_OVER_CHOICES = WARP_MODES
ATTENTION_BACKENDS = BACKENDS


@dataclass(frozen=True)
class DynaSTConfig:
    """Architecture of the DynaST generator and its discriminator.

    The defaults are the `synthetic-64-narrow` preset: small enough that tests build and run it in
    seconds on a CPU.
    `dense_scale` None means 1/sqrt(C_qk) and `dense_prune_scale` None means 1/C_p (the release).
    `output_from_warp` (ours, not in the release; on in the synthetic-64 preset, so in the
    synthetic-64 and synthetic-64-long training presets, off in the released presets and in
    synthetic-64-narrow): the image is the finest block's warped exemplar plus the decoder's tanh
    output, clamped to [-1, 1], instead of the decoder's tanh output alone; it adds no parameter,
    and starts the decoder's last convolution at zero, so that the first image is the warped
    exemplar itself (docs/method.md section 2).
    `region_gate` (ours, needs `output_from_warp`; on in the synthetic-64 preset): the warped
    exemplar the decoder corrects is first blended, per pixel and by a learned gate, with its mean
    over the target's semantic regions (`dynast.region_gate`); one 3x3 convolution more.
    `norm_backend` (ours): how the positional normalisations and SPADE modulations run, as
    `kernels.norm` ("torch": the plain expressions, bit for bit the model as it always ran;
    "triton" / "auto": one fused kernel each way, `kernels.norm.fused`). Default "torch" until a
    GPU measurement says the fused kernels pay (docs/benchmarks-h200.md, "Fused SPADE modulation").
    `tie_finest_fusion` (the release; on in the released presets): the finest scale's fusion block
    is that scale's query embedding block itself, one module called at both places (the release's
    forward runs `embed_q1` there), so its weights, gradients and spectral-norm state are shared;
    off, the fusion block is a module of its own (`fuse[-1]`).
    """

    name: str = "synthetic-64-narrow"
    semantic_nc: int = 8
    image_size: int = 64
    ngf: int = 8
    num_scales: int = 4
    blocks_per_scale: int = 2
    topk: int = 4
    pos_unit: int = 4
    prune_unit: int = 4
    max_multiplier: int = 8
    dense_scale: float | None = None
    dense_prune_scale: float | None = None
    sparse_scale: float = 100.0
    sparse_prune_scale: float = 1.0
    warp_over: str = "kept"
    attention_backend: str = "auto"
    norm_backend: str = "torch"
    init_gain: float = 0.02
    output_from_warp: bool = False
    region_gate: bool = False
    tie_finest_fusion: bool = False
    ndf: int = 16
    disc_layers: int = 4
    num_discriminators: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DynaSTConfig.name must be a non-empty string, got {self.name!r}")
        positive = (
            "semantic_nc",
            "image_size",
            "ngf",
            "num_scales",
            "blocks_per_scale",
            "topk",
            "pos_unit",
            "prune_unit",
            "max_multiplier",
            "ndf",
            "disc_layers",
            "num_discriminators",
        )
        for name in positive:
            check_number(f"DynaSTConfig.{name}", getattr(self, name), integer=True, low=1)
        factor = 2 ** (self.num_scales - 1)
        if self.image_size % factor:
            raise ValueError(
                f"DynaSTConfig.image_size ({self.image_size}) must be divisible by "
                f"2**(num_scales - 1) = {factor}"
            )
        if self.coarsest_size < 2:
            raise ValueError(
                f"DynaSTConfig.image_size ({self.image_size}) gives a {self.coarsest_size}-pixel "
                f"coarsest scale with num_scales={self.num_scales}; it must be at least 2 pixels "
                "(reflect padding)"
            )
        if self.topk > self.coarsest_size**2:
            raise ValueError(
                f"DynaSTConfig.topk ({self.topk}) exceeds the {self.coarsest_size**2} tokens of "
                "the coarsest scale"
            )
        for name in ("dense_scale", "dense_prune_scale"):
            value = getattr(self, name)
            if value is not None:
                check_number(f"DynaSTConfig.{name}", value, strict=True)
        for name in ("sparse_scale", "sparse_prune_scale", "init_gain"):
            check_number(f"DynaSTConfig.{name}", getattr(self, name), strict=True)
        for name in ("output_from_warp", "region_gate", "tie_finest_fusion"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"DynaSTConfig.{name} must be true or false, got {value!r}")
        if self.region_gate and not self.output_from_warp:
            raise ValueError(
                "DynaSTConfig.region_gate blends the warped exemplar that output_from_warp "
                "corrects: set output_from_warp=True as well, or region_gate=False"
            )
        if self.warp_over not in WARP_OVER_CHOICES:
            raise ValueError(
                f"DynaSTConfig.warp_over must be one of {WARP_OVER_CHOICES}, got {self.warp_over!r}"
            )
        for name in ("attention_backend", "norm_backend"):
            if getattr(self, name) not in ATTENTION_BACKENDS:
                raise ValueError(
                    f"DynaSTConfig.{name} must be one of {ATTENTION_BACKENDS}, "
                    f"got {getattr(self, name)!r}"
                )

    # Derived sizes, coarsest scale first (the order in which the generator runs).
    @property
    def coarsest_size(self) -> int:
        return self.image_size // 2 ** (self.num_scales - 1)

    def _per_scale(self, unit: int) -> tuple[int, ...]:
        levels = range(self.num_scales - 1, -1, -1)
        return tuple(unit * min(2**level, self.max_multiplier) for level in levels)

    @property
    def value_channels(self) -> tuple[int, ...]:
        """C_v per scale, coarsest first (also the encoder and decoder widths)."""
        return self._per_scale(self.ngf)

    @property
    def pos_channels(self) -> tuple[int, ...]:
        """Positional map channels per scale, coarsest first."""
        return self._per_scale(self.pos_unit)

    @property
    def prune_channels(self) -> tuple[int, ...]:
        """C_p per scale, coarsest first."""
        return self._per_scale(self.prune_unit)

    @property
    def qk_channels(self) -> tuple[int, ...]:
        """C_qk = C_v + C_pos per scale, coarsest first."""
        return tuple(v + p for v, p in zip(self.value_channels, self.pos_channels, strict=True))

    @property
    def attention_sizes(self) -> ModelSizes:
        """The sizes that fix this generator's attention problems, as `kernels.shapes` tabulates
        them for the presets."""
        return ModelSizes(
            image_size=self.image_size,
            value_channels=self.value_channels,
            pos_channels=self.pos_channels,
            prune_channels=self.prune_channels,
            topk=self.topk,
        )

    def attention_scales(self, scale_index: int) -> tuple[float, float]:
        """(scale, prune_scale) of the blocks of scale `scale_index` (0 = coarsest, dense)."""
        if scale_index == 0:
            cqk, cp = self.qk_channels[0], self.prune_channels[0]
            scale = self.dense_scale if self.dense_scale is not None else 1.0 / math.sqrt(cqk)
            prune = self.dense_prune_scale if self.dense_prune_scale is not None else 1.0 / cp
            return scale, prune
        return self.sparse_scale, self.sparse_prune_scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def differences(self, other: DynaSTConfig) -> str:
        """`field: ours vs other's` for every field that differs, comma-separated ("" when none):
        what an error or a log line about two configs says."""
        a, b = self.to_dict(), other.to_dict()
        return ", ".join(f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k])

    @classmethod
    def from_dict(cls, d: dict) -> DynaSTConfig:
        """Strict: keys that are not fields raise; missing keys take the field defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"DynaSTConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DynaSTConfig keys: {unknown}; known keys: {sorted(known)}")
        return cls(**d)


def _released_model(name: str, semantic_nc: int) -> DynaSTConfig:
    """The released DeepFashion architecture (docs/method.md section 2), another semantic input."""
    return DynaSTConfig(
        name=name,
        semantic_nc=semantic_nc,
        image_size=256,
        ngf=64,
        num_scales=4,
        blocks_per_scale=2,
        topk=4,
        pos_unit=16,
        prune_unit=16,
        max_multiplier=8,
        tie_finest_fusion=True,
        ndf=64,
    )


PRESETS: dict[str, DynaSTConfig] = {
    "deepfashion-256": _released_model("deepfashion-256", 20),
    # The same model at 512 pixels (the release cannot run it: it materialises every sparse
    # candidate; the fused kernels do not). Its coarsest scale, dense, is 64 x 64 tokens.
    "deepfashion-512": dataclasses.replace(_released_model("deepfashion-512", 20), image_size=512),
    "celebahq-edge-256": _released_model("celebahq-edge-256", 15),
    # 150 classes plus "other", one-hot (docs/method.md section 6).
    "ade20k-256": _released_model("ade20k-256", 151),
    # The default: trained by `dynast-train` with nothing else set (docs/training.md, "How the
    # preset was chosen"). ngf 16 rather than 8: in the same CPU time the wider model finds
    # clearly better correspondences. init_gain 0.3 rather than the release's 0.02 (0.1 and 1.0
    # measured too): with the release's init the attention needs hundreds of steps to leave
    # chance and the value projections and decoder start so small that the output ignores the
    # exemplar; with 0.3 the correspondence accuracy passes 0.88 within 100 steps.
    # output_from_warp (ours, docs/method.md section 2): the image is the finest warped exemplar
    # plus the decoder's correction; without it the output stayed grey, since the encoders'
    # instance norm removes the exemplar's colours before the attention. region_gate (ours,
    # dynast/region_gate.py): without it the output stayed 0-7% above the warped exemplar's L1;
    # with it, 0.84-0.87x (docs/training.md).
    "synthetic-64": DynaSTConfig(
        name="synthetic-64", ngf=16, init_gain=0.3, output_from_warp=True, region_gate=True
    ),
    # The same at ngf 8 with the release's init: what tests and CPU benchmarks build.
    "synthetic-64-narrow": DynaSTConfig(),
}

DEFAULT_PRESET = "synthetic-64"


def preset(name: str) -> DynaSTConfig:
    """The named preset; ValueError listing the names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


__all__ = ["DEFAULT_PRESET", "PRESETS", "DynaSTConfig", "preset"]
