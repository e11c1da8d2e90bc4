"""dynast's training step against the release's, term by term, in float64.

    python -m benchmarks.release_step_parity [--release-root PATH] [--size 64] [--steps 2]
        [--ngf 64]

Both sides start from the same weights: the release's generator and discriminator (its DeepFashion
training options at `--size` px, `--ngf` 64 unless narrowed; random weights from a fixed seed:
non-zero biases, random batch-norm statistics, spectral-norm vectors warmed up by power
iteration, every value a float32 number so that the converter's float32 path copies it exactly),
and a random VGG19 given to both.
dynast's side is built from the release's state dicts through `dynast.convert`'s functions. Both
take `--steps` training steps on the same float64 batches (a self-reference pair and another
pair), the release's as its `Pix2PixTrainer` runs them, dynast's as `train.steps` does.

Printed per step, as the largest relative difference:
- every generator and discriminator loss term and the totals, in the release's weighting and
  averaging (its names: G_warp_self, GAN, GAN_Feat, fm, perc, D_Fake, D_real);
- the generated image;
- the gradients of both networks, per group of parameters (`encoder_q`, `transformer.2`,
  `scales.0`, ...): |g_dynast - g_release| / max(|g_release|, floor) per parameter (Frobenius
  norms), where the floor, `GRADIENT_FLOOR` times the largest parameter-gradient norm of the
  network, stands in for the size of gradients that are exactly zero in exact arithmetic (the bias
  of a convolution that feeds a normalisation);
- the state after the optimiser step (weights, spectral-norm vectors, batch-norm statistics).

Where dynast differs on purpose, the comparison follows the release's choice (docs/training.md,
"The training step against the release's"): dynast's side runs with `warp_over="pruned"`, the VGG
input in the release's convention (`dynast.vgg.caffe_input`), and the loss weights the release's
weighting gives this batch (`release_loss_weights`); `check_deliberate_differences` states the
rest. tests/train/test_release_step.py runs this at 64 px with ngf 16 and asserts 1e-9.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from benchmarks.release_code import (
    imported_release,
    random_vgg,
    release_batch,
    release_root,
    write_release_vgg,
)
from dynast.config import DynaSTConfig, preset
from dynast.convert import (
    DROP,
    apply_rules,
    convert_discriminator,
    convert_generator,
    discriminator_rules,
    generator_rules,
)
from dynast.discriminator import check_image_size
from dynast.vgg import (
    CAFFE_BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19Features,
    caffe_input,
)
from train.config import LossWeights, release_recipe
from train.steps import LossSums, StepParts, discriminator_step, generator_step, global_weights

PRESET = "deepfashion-256"
# The release's nominal weights (its DeepFashion options) and the +1e-5 of its sample weights
# `self_ref / (sum(self_ref) + 1e-5)` (pix2pix_model.py, compute_generator_loss).
RELEASE_WARP, RELEASE_VGG, RELEASE_GAN, RELEASE_FEAT, RELEASE_PERC = 1000.0, 10.0, 10.0, 10.0, 1e-3
SELF_REF_EPS = 1e-5
GRADIENT_FLOOR = 1e-6
# Release loss-term names -> dynast's logged term and the LossWeights field that weighs it.
TERMS = {
    "G_warp_self": ("loss/warp", "warp"),
    "GAN": ("loss/gan", "gan"),
    "GAN_Feat": ("loss/feature_matching", "feature_matching"),
    "fm": ("loss/vgg", "vgg"),
    "perc": ("loss/vgg_mse", "vgg_mse"),
    "D_Fake": ("loss/d_fake", "discriminator"),
    "D_real": ("loss/d_real", "discriminator"),
}
G_TERMS = ("G_warp_self", "GAN", "GAN_Feat", "fm", "perc")
D_TERMS = ("D_Fake", "D_real")


# ----------------------------------------------------------------------------- inputs


def dynast_batch(data: dict) -> dict:
    """The same pairs in dynast's layout (`dynast.data.sample`)."""
    return {
        "semantic": data["label"],
        "exemplar": data["ref"],
        "exemplar_semantic": data["label_ref"],
        "target": data["image"],
        "has_target": torch.ones(len(data["self_ref"]), dtype=torch.bool),
        "same_appearance": data["self_ref"] > 0,
    }


def release_loss_weights(self_ref: Tensor) -> LossWeights:
    """dynast's loss weights that equal the release's weighting on a batch with these `self_ref`
    flags: it multiplies the warp and VGG-L1 terms by `self_ref / (sum(self_ref) + 1e-5)` and then
    averages over the batch, where dynast averages over the self-reference pairs."""
    b, s = len(self_ref), float(self_ref.sum())
    factor = s / (b * (s + SELF_REF_EPS))
    return LossWeights(
        warp=RELEASE_WARP * factor,
        gan=RELEASE_GAN,
        feature_matching=RELEASE_FEAT,
        vgg=RELEASE_VGG * factor,
        vgg_mse=RELEASE_PERC,
        discriminator=RELEASE_GAN,
    )


# ----------------------------------------------------------------------------- the release's side


def _as_float32_numbers(module: nn.Module) -> None:
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.copy_(t.float().to(t.dtype))


def randomise_release_networks(net_g: nn.Module, net_d: nn.Module, seed: int) -> None:
    """Random weights for the release's networks: He-normal convolutions (the output convolution
    at a fifth, off tanh's saturation), non-zero biases, batch norm with random affine parameters
    and running statistics, PReLU slopes around 0.25, the positional map N(0, 1) as the release
    draws it; spectral-norm vectors warmed up by 20 power iterations in the hook-based order."""
    gen = torch.Generator().manual_seed(seed)

    def randn(t: Tensor) -> Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    with torch.no_grad():
        for net in (net_g, net_d):
            for name, module in net.named_modules():
                if isinstance(module, nn.Conv2d):
                    weight = getattr(module, "weight_orig", module.weight)
                    gain = 0.2 if name == "decoder_10.0" else 1.0
                    weight.copy_(randn(weight) * gain / weight[0].numel() ** 0.5)
                    if module.bias is not None:
                        module.bias.copy_(randn(module.bias) * 0.1)
                elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.weight.copy_(1 + 0.1 * randn(module.weight))
                    module.bias.copy_(0.1 * randn(module.bias))
                    module.running_mean.copy_(0.1 * randn(module.running_mean))
                    module.running_var.copy_(0.5 + randn(module.running_var).abs())
                elif isinstance(module, nn.PReLU):
                    module.weight.copy_(0.25 + 0.05 * randn(module.weight))
        net_g.pos_embed.copy_(randn(net_g.pos_embed))
        for net in (net_g, net_d):
            for module in net.modules():
                if hasattr(module, "weight_orig"):
                    matrix = module.weight_orig.flatten(1)
                    u, v = module.weight_u, module.weight_v
                    for _ in range(20):
                        v.copy_(nn.functional.normalize(torch.mv(matrix.t(), u), dim=0, eps=1e-12))
                        u.copy_(nn.functional.normalize(torch.mv(matrix, v), dim=0, eps=1e-12))
        _as_float32_numbers(net_g)
        _as_float32_numbers(net_d)


@contextlib.contextmanager
def float64_kept() -> Iterator[None]:
    """The release calls `.float()` where it means "the computing dtype" (amp leftovers): on its
    labels and generated image, on its pruning mask `(x > 0).float()`, on candidate indices on
    their way through a replicate pad. In a float64 measurement those casts would round to
    float32 (the mask's gradient among them); inside this block `.float()` is `.double()`
    (indices below 2**53 pass exactly)."""
    original = torch.Tensor.float
    torch.Tensor.float = torch.Tensor.double
    try:
        yield
    finally:
        torch.Tensor.float = original


# ----------------------------------------------------------------------------- one step per side


@dataclass
class StepRecord:
    """What one training step leaves, in dynast's parameter names: the loss terms in the release's
    weighting and averaging, the generated image, both networks' gradients and their state after
    the optimiser step. Gradients and state are the live tensors (no copies: both are float64
    models of 100 M parameters), valid until the side's next step."""

    terms: dict[str, float]
    image: Tensor
    grads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    state: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    dropped_grads: dict[str, float] = field(default_factory=dict)


def _grad_state(net: nn.Module) -> dict[str, Tensor]:
    """Every state-dict key of `net` with its gradient (zeros for buffers and unused
    parameters), so that the converter's table maps gradients like weights."""
    grads = {name: p.grad for name, p in net.named_parameters(remove_duplicate=False)}
    return {
        key: grads[key].detach() if grads.get(key) is not None else torch.zeros_like(t)
        for key, t in net.state_dict(keep_vars=True).items()
    }


class ReleaseSide:
    """The release's `Pix2PixTrainer` in float64, random weights (`randomise_release_networks`)."""

    def __init__(
        self, root: Path, cfg: DynaSTConfig, batch: int, vgg_file: Path, seed: int
    ) -> None:
        with imported_release(root) as release:
            opt = release.deepfashion_options(
                size=cfg.image_size, batch=batch, vgg_path=vgg_file, ngf=cfg.ngf
            )
            self.trainer = release.trainer(opt)
        model = self.trainer.pix2pix_model
        self.net_g, self.net_d = model.net["netG"], model.net["netD"]
        randomise_release_networks(self.net_g, self.net_d, seed)
        model.double()

    def states(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(generator, discriminator) state dicts, float32 (the converter's input)."""

        def float32(net: nn.Module) -> dict[str, Tensor]:
            return {
                k: v.detach().float() if v.is_floating_point() else v.detach()
                for k, v in net.state_dict().items()
            }

        return float32(self.net_g), float32(self.net_d)

    def step(self, data: dict, cfg: DynaSTConfig, ours: dict[str, nn.Module]) -> StepRecord:
        with float64_kept():
            self.trainer.run_generator_one_step(data)
            self.trainer.run_discriminator_one_step(data)
        losses = {k: float(v.detach()) for k, v in self.trainer.get_latest_losses().items()}
        terms = {name: losses[name] for name in (*G_TERMS, *D_TERMS)}
        terms["G_total"] = sum(terms[n] for n in G_TERMS)
        terms["D_total"] = sum(terms[n] for n in D_TERMS)
        record = StepRecord(terms, self.trainer.out["fake_image"].detach().clone())
        for what, net, rules in (
            ("generator", self.net_g, generator_rules(cfg)),
            ("discriminator", self.net_d, discriminator_rules(cfg)),
        ):
            expected = ours[what].state_dict()
            grads = _grad_state(net)
            record.grads[what] = apply_rules(rules, grads, expected, what)
            record.state[what] = apply_rules(rules, net.state_dict(), expected, what)
            # What the table drops (never-called branches, biases an instance norm cancels).
            dropped = {r.source for r in rules if r.action == DROP}
            record.dropped_grads[what] = max(float(grads[k].norm()) for k in dropped)
        return record


# ----------------------------------------------------------------------------- dynast's side


class CaffeInputVGG(nn.Module):
    """dynast's VGG19 fed the release's input convention (`caffe_input`: BGR, minus the BGR mean,
    x255) instead of its own `(x - mean) / std`."""

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, image: Tensor) -> list[Tensor]:
        return self.vgg.features_of(caffe_input(image))


def parity_config(size: int, ngf: int = 64) -> DynaSTConfig:
    """The released DeepFashion model at `size` px (`ngf` wide), warping over the pruned keys as
    the release. ValueError when the size does not fit the model or the discriminator."""
    cfg = dataclasses.replace(preset(PRESET), image_size=size, ngf=ngf, warp_over="pruned")
    check_image_size(cfg)
    return cfg


class DynastSide:
    """dynast's generator and discriminator converted from the release's weights, float64, with
    the release recipe's optimisers and the loss weights of the release's weighting."""

    def __init__(
        self,
        cfg: DynaSTConfig,
        states: tuple[dict[str, Tensor], dict[str, Tensor]],
        vgg: VGG19Features,
        weights: LossWeights,
    ) -> None:
        self.generator = convert_generator(states[0], cfg, "release generator").double().train()
        self.discriminator = convert_discriminator(states[1], cfg, "release discriminator")
        self.discriminator.double().train()
        tc = release_recipe(PRESET)
        betas = (tc.adam_beta1, tc.adam_beta2)
        self.parts = StepParts(
            accelerator=Accelerator(cpu=True, mixed_precision="no"),
            generator=self.generator,
            discriminator=self.discriminator,
            d_inner=self.discriminator,
            opt_g=torch.optim.Adam(
                self.generator.parameters(), tc.lr * tc.g_lr_ratio, betas, tc.g_adam_eps
            ),
            opt_d=torch.optim.Adam(
                self.discriminator.parameters(), tc.lr * tc.d_lr_ratio, betas, tc.d_adam_eps
            ),
            scaler_g=torch.amp.GradScaler("cpu", enabled=False),
            scaler_d=torch.amp.GradScaler("cpu", enabled=False),
            vgg=CaffeInputVGG(vgg.double()),
            weights=weights,
            autocast=contextlib.nullcontext,
            blocks_per_scale=cfg.blocks_per_scale,
        )

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def step(self, batch: dict) -> StepRecord:
        p, sums, micro = self.parts, LossSums(), [batch]
        weights = global_weights(p.accelerator, micro)
        g_total, fakes = generator_step(p, micro, weights, sums)
        d_total = discriminator_step(p, micro, fakes, weights, sums)
        logged = sums.reduce(p.accelerator)
        terms = {
            name: getattr(p.weights, weight) * logged[key] for name, (key, weight) in TERMS.items()
        }
        terms["G_total"], terms["D_total"] = g_total, d_total
        record = StepRecord(terms, fakes[0].clone())
        for what, net in self.modules.items():
            record.grads[what] = {
                k: torch.zeros_like(v) if v.grad is None else v.grad.detach()
                for k, v in net.named_parameters()
            }
            record.state[what] = net.state_dict()
        return record


# ----------------------------------------------------------------------------- comparison


def parameter_group(name: str) -> str:
    """`transformer.2.1.to_q.weight` -> `transformer.2`; `scales.0....` -> `scales.0`;
    `embed_q.3....` -> `embed_q`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] in ("transformer", "scales") else parts[0]


def _relative(a: Tensor, b: Tensor, floor: float = 0.0) -> float:
    scale = max(float(b.double().norm()), floor)
    diff = float((a.double() - b.double()).norm())
    return diff / scale if scale > 0 else diff


@dataclass
class Comparison:
    """Largest relative difference per row (loss terms, image, gradient and state groups), and
    the deliberate differences found in the state (named)."""

    rows: dict[str, float]
    batch_norm_counts: dict[str, int]


def compare(ours: StepRecord, theirs: StepRecord) -> Comparison:
    rows: dict[str, float] = {}
    for name, value in theirs.terms.items():
        rows[f"loss {name}"] = abs(ours.terms[name] - value) / max(abs(value), 1e-300)
    rows["image"] = _relative(ours.image, theirs.image)
    counts: dict[str, int] = {}
    for what in ("generator", "discriminator"):
        net = "G" if what == "generator" else "D"
        grads, expected = ours.grads[what], theirs.grads[what]
        floor = GRADIENT_FLOOR * max(float(g.double().norm()) for g in expected.values())
        for name in grads:  # dynast's parameters (the mapped release dict holds buffers too)
            group = f"grad {net} {parameter_group(name)}"
            value = _relative(grads[name], expected[name], floor)
            rows[group] = max(rows.get(group, 0.0), value)
        rows[f"grad {net} dropped by the converter (|g| / floor)"] = (
            theirs.dropped_grads[what] / floor
        )
        for name, value in theirs.state[what].items():
            if name.endswith("num_batches_tracked"):
                # dynast's BatchNorm2d counts its forwards, the release's SynchronizedBatchNorm2d
                # (F.batch_norm) does not; momentum is fixed, so nothing depends on the count.
                counts[f"{what} {name}"] = int(ours.state[what][name]) - int(value)
                continue
            group = f"state {net} {parameter_group(name)}"
            rows[group] = max(rows.get(group, 0.0), _relative(ours.state[what][name], value))
    return Comparison(rows, counts)


def check_deliberate_differences() -> list[str]:
    """The choices where dynast's presets differ from the release on purpose and the comparison
    follows the release instead (docs/training.md), one line each; AssertionError when one of
    the statements no longer holds."""

    def check(holds: bool, statement: str) -> str:
        if not holds:
            raise AssertionError(f"no longer true: {statement}")
        return statement

    cfg, recipe = preset(PRESET), release_recipe(PRESET).loss
    release = release_loss_weights(torch.ones(5, dtype=torch.float64))
    factor = (5 + SELF_REF_EPS) / 5
    return [
        check(
            cfg.warp_over == "kept",
            "warp_over: the preset warps over the kept keys, the release over the pruned ones",
        ),
        check(
            (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            and CAFFE_BGR_MEAN == (0.40760392, 0.45795686, 0.48501961),
            "VGG input: dynast's VGG19Features normalises (x - mean) / std (torchvision's "
            "weights), the release feeds BGR minus the BGR mean, x255 (dynast.vgg.caffe_input)",
        ),
        check(
            (recipe.warp, recipe.vgg) == (RELEASE_WARP / 5, RELEASE_VGG / 5)
            and all(
                abs(getattr(recipe, n) / getattr(release, n) - factor) < 1e-15
                for n in ("warp", "vgg")
            ),
            "loss weights: RELEASE_LOSS's warp 200 and VGG-L1 2 are the release's 1000 and 10 at "
            "5 self-reference pairs per GPU without its +1e-5: x (5 + 1e-5) / 5",
        ),
    ]


# ----------------------------------------------------------------------------- run


@dataclass
class ParityRun:
    """One comparison: per step, the rows and the batch-norm count differences."""

    steps: list[Comparison]
    seconds: dict[str, float]


def run_parity(
    root: str | Path | None = None,
    *,
    size: int = 64,
    ngf: int = 64,
    steps: int = 2,
    seed: int = 0,
    say: Callable[[str], None] = lambda _: None,
) -> ParityRun:
    """Build both sides and run `steps` steps on each, on fresh batches per step."""
    folder = release_root(root)
    cfg = parity_config(size, ngf)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="release-parity-") as tmp:
        vgg = random_vgg(seed)
        vgg_file = write_release_vgg(vgg, Path(tmp) / "vgg19_random.pth")
        started = time.perf_counter()
        release = ReleaseSide(folder, cfg, 2, vgg_file, seed)
        seconds["build release"] = time.perf_counter() - started
    started = time.perf_counter()
    # A self reference and another pair: the terms the release restricts to self references
    # differ from a plain mean.
    batches = [release_batch(size, (1.0, 0.0), seed + 1 + i) for i in range(steps)]
    ours = DynastSide(cfg, release.states(), vgg, release_loss_weights(batches[0]["self_ref"]))
    seconds["build dynast"] = time.perf_counter() - started
    results = []
    for i, data in enumerate(batches):
        started = time.perf_counter()
        theirs = release.step(data, cfg, ours.modules)
        seconds[f"release step {i + 1}"] = time.perf_counter() - started
        started = time.perf_counter()
        mine = ours.step(dynast_batch(data))
        seconds[f"dynast step {i + 1}"] = time.perf_counter() - started
        results.append(compare(mine, theirs))
        say(f"step {i + 1} compared")
    return ParityRun(results, seconds)


def format_table(run: ParityRun) -> str:
    names = list(run.steps[0].rows)
    head = f"{'':<52}" + "".join(f" {'step ' + str(i + 1):>10}" for i in range(len(run.steps)))
    lines = [head]
    for name in names:
        cells = "".join(f" {c.rows[name]:>10.1e}" for c in run.steps)
        lines.append(f"{name:<52}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--release-root", default=None, help="the release's folder")
    parser.add_argument("--size", type=int, default=64, help="image size (at least 64)")
    parser.add_argument("--steps", type=int, default=2, help="training steps compared")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (the release: 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        parity_config(args.size, args.ngf)
    except ValueError as err:
        print(f"error: --size {args.size} / --ngf {args.ngf}: {err}", file=sys.stderr)
        return 2
    if args.steps < 1:
        print(f"error: --steps must be positive, got {args.steps}", file=sys.stderr)
        return 2
    try:
        run = run_parity(
            args.release_root, size=args.size, ngf=args.ngf, steps=args.steps, seed=args.seed
        )
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(run))
    for line in check_deliberate_differences():
        print(f"deliberate: {line}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"peak RSS {peak:.1f} GiB, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
