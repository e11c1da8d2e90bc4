"""One optimiser step of training, as `train.loop.train` runs it: the generator update (warp,
adversarial, feature-matching, L1 and VGG terms over the step's micro-batches) and the
discriminator update (hinge loss), with the global sample weights that normalise every term over
all processes and micro-batches, and the running loss sums that are logged.

Public so that `benchmarks/bench_optimizer_step.py` times exactly the loop's own code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from .config import LossWeights
from .losses import (
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    normalised_sum,
    per_sample_l1,
    vgg_losses,
    warp_block_weights,
    warp_loss,
)


def _split_preds(preds: list[list[Tensor]], n: int) -> tuple[list[list[Tensor]], ...]:
    """Discriminator outputs of a batch [first n; rest] -> (outputs of first n, of the rest)."""
    first = [[t[:n] for t in scale] for scale in preds]
    rest = [[t[n:] for t in scale] for scale in preds]
    return first, rest


class LossSums:
    """Per loss term, running sums of weight * value and of weight over steps (for logging). Kept
    as device tensors so that accumulating never waits for the device."""

    def __init__(self) -> None:
        self.values: dict[str, Tensor] = {}

    def add(self, name: str, per_sample: Tensor, weights: Tensor) -> None:
        pair = torch.stack(
            [(per_sample.detach().double() * weights.double()).sum(), weights.double().sum()]
        )
        self.values[name] = self.values[name] + pair if name in self.values else pair

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        """Global weighted means over every process; resets the sums. Every process must call."""
        names = sorted(self.values)
        if not names:
            return {}
        local = torch.stack([self.values[n] for n in names]).to(accelerator.device)
        total = accelerator.reduce(local, reduction="sum").cpu()
        self.values = {}
        return {
            name: float(s / w) if w > 0 else float("nan")
            for name, (s, w) in zip(names, total.tolist(), strict=True)
        }


@dataclass(kw_only=True)
class StepParts:
    """What a training step uses: the prepared models (DDP-wrapped when distributed), the
    unwrapped discriminator, optimisers with their loss scalers, VGG (None: off), loss weights."""

    accelerator: Accelerator
    generator: nn.Module
    discriminator: nn.Module
    d_inner: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    vgg: nn.Module | None
    weights: LossWeights
    autocast: Callable[[], contextlib.AbstractContextManager]
    blocks_per_scale: int  # the dense level's blocks are the first ones (LossWeights.warp_dense)

    @property
    def uses_discriminator(self) -> bool:
        return self.weights.gan > 0 or self.weights.feature_matching > 0


@dataclass(kw_only=True)
class SampleWeights:
    """Per micro-batch sample weights (1 for pairs with a ground truth / 1 for pairs whose
    exemplar shows the target's own appearance / 1 for all) and their sums over the global
    batch: every process and every micro-batch of the step."""

    has_target: list[Tensor]
    same_appearance: list[Tensor]
    ones: list[Tensor]
    global_target: Tensor
    global_same: Tensor
    global_all: Tensor


def global_weights(accelerator: Accelerator, micro: list[dict]) -> SampleWeights:
    has_target = [b["has_target"].float() for b in micro]
    # The warp loss counts only pairs whose exemplar shows the target's appearance (the
    # release's self_ref weights); a dataset without the flag falls back to has_target.
    same = [
        b.get("same_appearance", b["has_target"]).float() * t
        for b, t in zip(micro, has_target, strict=True)
    ]
    ones = [torch.ones_like(w) for w in has_target]
    local = torch.stack(
        [sum(w.sum() for w in has_target), sum(w.sum() for w in same), sum(o.sum() for o in ones)]
    )
    total = accelerator.reduce(local.double(), reduction="sum").float()
    return SampleWeights(
        has_target=has_target,
        same_appearance=same,
        ones=ones,
        global_target=total[0],
        global_same=total[1],
        global_all=total[2],
    )


def _sync_unless(last: bool, accelerator: Accelerator, model: nn.Module):
    # Gradients are all-reduced once per step, on the last micro-batch.
    return contextlib.nullcontext() if last else accelerator.no_sync(model)


def generator_step(
    parts: StepParts, micro: list[dict], sw: SampleWeights, sums: LossSums
) -> tuple[float, list[Tensor]]:
    """One generator update over the step's micro-batches; returns the loss (global mean) and
    the generated images (detached) for the discriminator step.

    The discriminator runs unwrapped with frozen parameters: gradients reach the image, not D,
    and D's DDP wrapper (which would expect D's gradients) is not involved. With feature matching
    it runs once, on the fakes and the ground truths concatenated, as the release's
    `discriminate` does: one power iteration of its spectral norms, and the real features the
    fake ones are matched to come from the same normalised weights."""
    p, w, world = parts, parts.weights, parts.accelerator.num_processes
    p.d_inner.requires_grad_(False)
    p.opt_g.zero_grad(set_to_none=True)
    fakes, total = [], 0.0
    for m, batch in enumerate(micro):
        with _sync_unless(m == len(micro) - 1, p.accelerator, p.generator):
            sem, target = batch["semantic"], batch["target"]
            with p.autocast():
                out = p.generator(
                    sem, batch["exemplar"], batch["exemplar_semantic"], with_warps=True
                )
                if w.feature_matching > 0:
                    preds = p.d_inner(torch.cat([sem, sem]), torch.cat([out.image, target]))
                    fake_preds, real_preds = _split_preds(preds, sem.shape[0])
                elif p.uses_discriminator:
                    fake_preds = p.d_inner(sem, out.image)
                if p.vgg is not None:
                    fake_feats = p.vgg(out.image)
                    with torch.no_grad():
                        real_feats = p.vgg(target)
            # name -> (per-sample value, sample weights, their global sum)
            with_target = (sw.has_target[m], sw.global_target)
            same = (sw.same_appearance[m], sw.global_same)
            vgg_l1_pairs = same if w.vgg_l1_samples == "same_appearance" else with_target
            block_weights = warp_block_weights(len(out.warps), p.blocks_per_scale, w.warp_dense)
            terms = {"warp": (warp_loss(out.warps, target, block_weights), *same)}
            if w.gan > 0:
                terms["gan"] = (generator_hinge(fake_preds), sw.ones[m], sw.global_all)
            if w.feature_matching > 0:
                terms["feature_matching"] = (feature_matching(fake_preds, real_preds), *with_target)
            if w.l1 > 0:
                terms["l1"] = (per_sample_l1(out.image, target), *with_target)
            if p.vgg is not None:
                vgg_l1, vgg_mse = vgg_losses(fake_feats, real_feats)
                terms["vgg"] = (vgg_l1, *vgg_l1_pairs)
                terms["vgg_mse"] = (vgg_mse, *with_target)
            loss = sum(
                getattr(w, name) * normalised_sum(value, weights, global_sum, world)
                for name, (value, weights, global_sum) in terms.items()
            )
            p.accelerator.backward(p.scaler_g.scale(loss))
            total += float(loss.detach()) / world
            for name, (value, weights, _) in terms.items():
                sums.add(f"loss/{name}", value, weights)
            fakes.append(out.image.detach())
    p.scaler_g.step(p.opt_g)
    p.scaler_g.update()
    p.d_inner.requires_grad_(True)
    return total, fakes


def discriminator_step(
    parts: StepParts, micro: list[dict], fakes: list[Tensor], sw: SampleWeights, sums: LossSums
) -> float:
    """One discriminator update (hinge loss) on this step's generated images and the ground
    truths (pairs without one do not count as real); returns the loss (global mean)."""
    p, world = parts, parts.accelerator.num_processes
    if not p.uses_discriminator:
        return 0.0
    p.opt_d.zero_grad(set_to_none=True)
    total = 0.0
    for m, batch in enumerate(micro):
        with _sync_unless(m == len(micro) - 1, p.accelerator, p.discriminator):
            sem, n = batch["semantic"], batch["semantic"].shape[0]
            with p.autocast():
                preds = p.discriminator(
                    torch.cat([sem, sem]), torch.cat([fakes[m], batch["target"]])
                )
            fake_preds, real_preds = _split_preds(preds, n)
            d_real, d_fake = discriminator_hinge(real_preds, fake_preds)
            loss = normalised_sum(d_real, sw.has_target[m], sw.global_target, world)
            loss = loss + normalised_sum(d_fake, sw.ones[m], sw.global_all, world)
            loss = p.weights.discriminator * loss
            p.accelerator.backward(p.scaler_d.scale(loss))
            total += float(loss.detach()) / world
            sums.add("loss/d_real", d_real, sw.has_target[m])
            sums.add("loss/d_fake", d_fake, sw.ones[m])
    p.scaler_d.step(p.opt_d)
    p.scaler_d.update()
    return total
