"""Typed training configuration: loss weights, optimisation and run settings, and named presets.

A run is described by `RunConfig(model, data, train)`; its JSON form is the run folder's
`config.json` (`{"model": {...}, "data": {...}, "train": {...}}`). A training preset
(`TRAINING_PRESETS`) is a model preset of `dynast.config.PRESETS` with its data and an
optimisation recipe; it carries its model's name, or adds a suffix for another recipe of the same
model (`synthetic-64-long`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from dynast.config import DynaSTConfig
from dynast.config import preset as model_preset
from dynast.data import DataConfig
from dynast.data.presets import PRESET_NAMES, RELEASED_PRESETS, preset_data
from dynast.overrides import diff, from_plain, to_plain
from kernels.checks import check_number

MIXED_PRECISION = ("no", "fp16", "bf16")
VGG_L1_SAMPLES = ("same_appearance", "with_target")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator losses (docs/method.md section 5; release values by default).

    The VGG terms are used only when VGG19 weights are available; `vgg` weighs the L1 over five
    layers (layer weights 1/32 ... 1), `vgg_mse` the MSE at relu4_2. `l1` (ours, not in the
    release, off by default) is a pixel L1 between output and ground truth: a direct
    reconstruction signal for runs without VGG19 weights. `discriminator` scales the
    discriminator's hinge loss (the release: 10, its `weight_gan` applied to D as well).
    `warp_dense` (ours; 1 is the release) multiplies the warp terms of the dense (coarsest)
    level's blocks, the sparse levels' keep weight `warp`: a soft warp over every coarse token
    lowers its L1 by spreading its attention, which trains the coarse matches away from the
    right ones (docs/default-run.md, "The warp loss at the dense level"); the synthetic presets
    set 0.
    `vgg_l1_samples`: the pairs the VGG-L1 term averages over: "same_appearance" (the release's
    `fm` term, weighted by its self_ref: pairs whose exemplar shows the target's own appearance)
    or "with_target" (every pair with a ground truth). The VGG-MSE term averages over every pair
    with a ground truth either way (the release's `perc`).
    """

    warp: float = 1000.0
    gan: float = 10.0
    feature_matching: float = 10.0
    vgg: float = 10.0
    vgg_mse: float = 0.001
    l1: float = 0.0
    discriminator: float = 1.0
    warp_dense: float = 1.0
    vgg_l1_samples: str = "same_appearance"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "vgg_l1_samples":
                check_number(f"train.loss.{f.name}", getattr(self, f.name))
        if self.vgg_l1_samples not in VGG_L1_SAMPLES:
            raise ValueError(
                f"train.loss.vgg_l1_samples must be one of {list(VGG_L1_SAMPLES)}, "
                f"got {self.vgg_l1_samples!r}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings. `batch_size` is per process and per micro-batch: the global
    batch is `batch_size * processes * grad_accum_steps`.

    Learning rates are two-time-scale (generator `lr * g_lr_ratio`, discriminator
    `lr * d_lr_ratio`) for the whole run; over the last `decay_steps` steps both fall linearly to 0.

    Run length: `max_epochs` 0 means `max_steps` optimizer steps with `decay_steps` of decay;
    `max_epochs` > 0 means that many passes over the training set, with the decay over the last
    `decay_epochs` (the release: 100 and 20), converted to steps once the dataset size is known
    (`schedule`); `max_steps` and `decay_steps` are then not used.

    `g_adam_eps` / `d_adam_eps`: Adam's eps per network (the release: 1e-3 for G, 1e-8 for D).
    `sync_batch_norm`: with several processes, batch-norm statistics over the global batch (True)
    or over each process's own samples (False, the release's per-GPU SynchronizedBatchNorm under
    DataParallel). `init_from`: a folder written by `dynast.convert` or `save_pretrained` whose
    generator (and `discriminator.safetensors`, when present) a new run starts from.
    `checkpoint_activations`: the generator's attention blocks and SPADE residual blocks keep
    their inputs instead of their activations and run again in the backward
    (`Generator.checkpoint_activations`): less memory, more time, the same gradients bit for bit.
    """

    output_dir: str = "runs/synthetic-64"
    max_steps: int = 2000
    batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 1e-4
    g_lr_ratio: float = 0.5
    d_lr_ratio: float = 2.0
    adam_beta1: float = 0.0
    adam_beta2: float = 0.9
    decay_steps: int = 0
    max_epochs: int = 0
    decay_epochs: int = 0
    g_adam_eps: float = 1e-8
    d_adam_eps: float = 1e-8
    sync_batch_norm: bool = True
    init_from: str | None = None
    loss: LossWeights = field(default_factory=LossWeights)
    mixed_precision: str = "no"
    vgg_weights: str | None = None
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 500
    checkpoint_limit: int = 2
    eval_pairs: int = 32
    eval_batch_size: int = 16
    sample_rows: int = 4
    compile: bool = False  # torch.compile the generator (kernels.custom_ops keeps it one graph)
    checkpoint_activations: bool = False

    def __post_init__(self) -> None:
        owner = "train"
        for name in ("compile", "checkpoint_activations"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"{owner}.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if self.compile and self.checkpoint_activations:
            # The checkpointed blocks rewind their buffers for the recomputation through
            # checkpoint's context_fn, which torch.compile accepts only for regions without
            # in-place ops; spectral norm and batch norm update buffers in place, and compiling
            # fails (BackendCompilerFailed, torch 2.13).
            raise ValueError(
                f"{owner}.checkpoint_activations and {owner}.compile cannot both be on: choose one"
            )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(
                f"{owner}.output_dir must be a non-empty path, got {self.output_dir!r}"
            )
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "log_every",
            "sample_every",
            "checkpoint_every",
            "checkpoint_limit",
            "eval_pairs",
            "eval_batch_size",
            "sample_rows",
        ):
            check_number(f"{owner}.{name}", getattr(self, name), integer=True, low=1)
        for name in ("decay_steps", "num_workers", "max_epochs", "decay_epochs"):
            check_number(f"{owner}.{name}", getattr(self, name), integer=True, low=0)
        # The seeds of numpy and Accelerate's set_seed are 32-bit.
        check_number(f"{owner}.seed", self.seed, integer=True, low=0, high=2**32 - 1)
        for name in ("lr", "g_lr_ratio", "d_lr_ratio", "g_adam_eps", "d_adam_eps"):
            check_number(f"{owner}.{name}", getattr(self, name), strict=True)
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            check_number(f"{owner}.{name}", value)
            if value >= 1:
                raise ValueError(f"{owner}.{name} must be in [0, 1), got {value!r}")
        if self.decay_steps > self.max_steps:
            raise ValueError(
                f"{owner}.decay_steps ({self.decay_steps}) exceeds max_steps ({self.max_steps})"
            )
        if self.decay_epochs > self.max_epochs:
            raise ValueError(
                f"{owner}.decay_epochs ({self.decay_epochs}) exceeds max_epochs "
                f"({self.max_epochs}); epoch-based decay needs max_epochs > 0"
            )
        if not isinstance(self.sync_batch_norm, bool):
            raise ValueError(
                f"{owner}.sync_batch_norm must be true or false, got {self.sync_batch_norm!r}"
            )
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from
        ):
            raise ValueError(f"{owner}.init_from must be a folder or None, got {self.init_from!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"{owner}.mixed_precision must be one of {list(MIXED_PRECISION)}, "
                f"got {self.mixed_precision!r}"
            )
        if self.vgg_weights is not None and (
            not isinstance(self.vgg_weights, str) or not self.vgg_weights
        ):
            raise ValueError(
                f"{owner}.vgg_weights must be a path or None, got {self.vgg_weights!r}"
            )
        if not isinstance(self.loss, LossWeights):
            raise ValueError(f"{owner}.loss must be LossWeights, got {type(self.loss).__name__}")

    def schedule(self, steps_per_epoch: int) -> tuple[int, int]:
        """(total optimizer steps, decay steps) of the run, given the optimizer steps one epoch
        takes: `max_steps` / `decay_steps`, or `max_epochs` / `decay_epochs` in steps."""
        if self.max_epochs == 0:
            return self.max_steps, self.decay_steps
        check_number("train.steps_per_epoch", steps_per_epoch, integer=True, low=1)
        return self.max_epochs * steps_per_epoch, self.decay_epochs * steps_per_epoch

    def lr_factor(self, step: int, steps_per_epoch: int = 1) -> float:
        """Multiplier of both learning rates at optimizer step `step` (0-based)."""
        total, decay = self.schedule(steps_per_epoch)
        if decay == 0:
            return 1.0
        start = total - decay
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / decay)


# Fields that only say how long to run and what to record: a resumed run may change them.
RESUMABLE_CHANGES = frozenset(
    {
        "train.output_dir",
        "train.max_steps",
        "train.decay_steps",
        "train.max_epochs",
        "train.decay_epochs",
        "train.num_workers",
        "train.log_every",
        "train.sample_every",
        "train.checkpoint_every",
        "train.checkpoint_limit",
        "train.eval_batch_size",
        "train.vgg_weights",
        "train.init_from",
        "train.compile",
        "train.checkpoint_activations",
    }
)


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run depends on."""

    model: DynaSTConfig = field(default_factory=DynaSTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, DynaSTConfig):
            raise ValueError(f"model must be a DynaSTConfig, got {type(self.model).__name__}")
        if not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        if self.model.image_size != self.data.image_size:
            raise ValueError(
                f"model.image_size ({self.model.image_size}) must equal data.image_size "
                f"({self.data.image_size}); set both"
            )
        channels = semantic_channels(self.data)
        if channels is not None and channels != self.model.semantic_nc:
            raise ValueError(
                f"model.semantic_nc ({self.model.semantic_nc}) must equal the data's semantic "
                f"channels ({channels}, from data.num_classes); set both"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": to_plain(self.model),
            "data": to_plain(self.data),
            "train": to_plain(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> RunConfig:
        """Strict: unknown keys anywhere raise ValueError naming them."""
        return from_plain(cls, d, where)

    def changes_from(self, other: RunConfig) -> list[str]:
        """Dotted names of the fields that differ from `other`."""
        return diff(other.to_dict(), self.to_dict())


def semantic_channels(data: DataConfig) -> int | None:
    """Semantic channels the data produces, when the data config says (one-hot classes)."""
    value = getattr(data, "num_classes", None)
    return value if isinstance(value, int) else None


def _synthetic_64(*, long: bool = False, model_name: str = "synthetic-64") -> RunConfig:
    # `dynast-train` with nothing else set: well within 10 minutes on a 2-core machine (both
    # cores, see train.threads); `synthetic-64-long` 7.5x the steps (about 22 minutes);
    # `synthetic-64-narrow` the same recipe on the narrow model.
    # docs/training.md has the figures and the runs behind these choices:
    # - the model (ngf 16, init_gain 0.3) is the synthetic-64 model preset, whose comment says why;
    # - a pixel L1 (weight 10) as the output's reconstruction signal, no GAN and no feature
    #   matching: within a few hundred steps both raised the output's L1 in every run measured
    #   (VGG is off without VGG19 weights);
    # - generator lr 5e-5 and 400 steps: at 2e-4 and 1e-4 the accuracy peaks near step 100
    #   (0.92-0.94) and falls to 0.87-0.89 by step 400, at 4e-4 it collapses; at 5e-5 it stays
    #   at 0.93-0.94 from step 200 on. A linear decay of 2e-4 over the last 200 steps did not
    #   hold it (0.88).
    # - warp_dense 0: with the dense level's warp terms the correspondence drifted in long runs
    #   (0.92 at step 500, 0.80 at 3000), whatever the lr; without them it holds (0.96-0.97).
    # - the model preset of the name (dynast.config.PRESETS); synthetic-64's has
    #   output_from_warp and region_gate on (the output 0.84x its warped exemplar's L1).
    model = model_preset(model_name)
    return RunConfig(
        model=model,
        data=preset_data(model_name),
        train=TrainConfig(
            output_dir=f"runs/{model_name}-long" if long else f"runs/{model_name}",
            max_steps=3000 if long else 400,
            batch_size=4,
            lr=5e-5,
            g_lr_ratio=1.0,
            loss=LossWeights(gan=0.0, feature_matching=0.0, l1=10.0, warp_dense=0.0),
            log_every=10,
            sample_every=500 if long else 100,
            checkpoint_every=1000 if long else 200,
        ),
    )


# The release's effective loss weights (docs/training.md, "Release recipe"): it divides the warp
# and VGG-L1 terms by the number of self-reference samples on each GPU *and* averages over the
# batch, an extra factor 1/5 at 5 samples per GPU, so its nominal 1000 and 10 act as 200 and 2
# against GAN 10. Its discriminator loss carries weight_gan (10) too.
RELEASE_LOSS = LossWeights(
    warp=200.0, gan=10.0, feature_matching=10.0, vgg=2.0, vgg_mse=0.001, discriminator=10.0
)


def release_recipe(name: str) -> TrainConfig:
    """Optimisation of the release's `train_deepfashion.sh`, for every real-data preset: global
    batch 40 (5 per GPU on 8 GPUs), base lr 1e-4 two-time-scale, Adam eps 1e-3 for G, 100 epochs
    with linear decay over the last 20, per-GPU batch-norm statistics, mixed precision (bf16
    here, fp16 in the release: same tensor-core speed without a loss scaler)."""
    return TrainConfig(
        output_dir=f"runs/{name}",
        max_epochs=100,
        decay_epochs=20,
        batch_size=5,
        g_adam_eps=1e-3,
        d_adam_eps=1e-8,
        sync_batch_norm=False,
        loss=RELEASE_LOSS,
        mixed_precision="bf16",
        log_every=50,
        sample_every=2000,
        checkpoint_every=5000,
        checkpoint_limit=3,
        eval_pairs=64,
    )


def _released_run(name: str) -> RunConfig:
    # The data folder is given on the command line: `--data.root DIR`.
    return RunConfig(
        model=model_preset(name),
        data=preset_data(name),
        train=release_recipe(name),
    )


# Every training preset (the names of dynast.data.presets.PRESET_MODELS), the real-data ones the
# release's recipe on each released model.
TRAINING_PRESETS: dict[str, Callable[[], RunConfig]] = {
    "synthetic-64": _synthetic_64,
    "synthetic-64-long": lambda: _synthetic_64(long=True),
    "synthetic-64-narrow": lambda: _synthetic_64(model_name="synthetic-64-narrow"),
    **{name: partial(_released_run, name) for name in RELEASED_PRESETS},
}


def run_preset(name: str) -> RunConfig:
    """The named training preset; ValueError listing the names otherwise."""
    if name not in TRAINING_PRESETS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
    return TRAINING_PRESETS[name]()
