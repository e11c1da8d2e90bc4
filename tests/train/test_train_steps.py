"""`train.steps` on a tiny model: what the generator step feeds the discriminator and which pairs
each term averages over (the release's choices, docs/training.md "The training step against the
release's"). The whole step against the release's code is tests/train/test_release_step.py."""

from __future__ import annotations

import contextlib

import pytest
import torch
from accelerate import Accelerator
from torch import Tensor, nn

from benchmarks.tiny_model import tiny_model_config
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator
from train.config import LossWeights
from train.losses import VGG_LAYER_WEIGHTS, per_sample_l1
from train.steps import LossSums, StepParts, generator_step, global_weights


class ScaledFeatures(nn.Module):
    """A stand-in for VGG19: five 'feature maps', the image times 1..5."""

    def forward(self, image: Tensor) -> list[Tensor]:
        return [image * k for k in range(1, 6)]


def _parts(weights: LossWeights) -> tuple[StepParts, list[dict]]:
    torch.manual_seed(0)
    cfg = tiny_model_config()
    generator, discriminator = Generator(cfg), MultiscaleDiscriminator(cfg)
    parts = StepParts(
        accelerator=Accelerator(cpu=True, mixed_precision="no"),
        generator=generator,
        discriminator=discriminator,
        d_inner=discriminator,
        opt_g=torch.optim.Adam(generator.parameters()),
        opt_d=torch.optim.Adam(discriminator.parameters()),
        scaler_g=torch.amp.GradScaler("cpu", enabled=False),
        scaler_d=torch.amp.GradScaler("cpu", enabled=False),
        vgg=ScaledFeatures(),
        weights=weights,
        autocast=contextlib.nullcontext,
        blocks_per_scale=cfg.blocks_per_scale,
    )
    gen = torch.Generator().manual_seed(1)
    size, cs = cfg.image_size, cfg.semantic_nc
    batch = {
        "semantic": torch.rand(2, cs, size, size, generator=gen),
        "exemplar": torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
        "exemplar_semantic": torch.rand(2, cs, size, size, generator=gen),
        "target": torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
        "has_target": torch.tensor([True, True]),
        "same_appearance": torch.tensor([True, False]),  # a self reference and another pair
    }
    return parts, [batch]


@pytest.mark.parametrize("feature_matching", [10.0, 0.0], ids=["fm", "no-fm"])
def test_the_generator_step_calls_the_discriminator_once(feature_matching):
    """One call, on the fakes and the ground truths concatenated (the release's `discriminate`):
    its spectral norms iterate once per generator step, as the release's do."""
    parts, micro = _parts(LossWeights(feature_matching=feature_matching))
    inputs = []
    parts.d_inner.register_forward_hook(lambda _m, args, _out: inputs.append(args[1]))
    sums = LossSums()
    _, fakes = generator_step(parts, micro, global_weights(parts.accelerator, micro), sums)
    (image,) = inputs
    if feature_matching:
        assert torch.equal(image, torch.cat([fakes[0], micro[0]["target"]]))
    else:
        assert torch.equal(image, fakes[0])


@pytest.mark.parametrize("pairs", ["same_appearance", "with_target"])
def test_vgg_l1_averages_over_the_pairs_vgg_l1_samples_names(pairs):
    parts, micro = _parts(LossWeights(gan=0.0, feature_matching=0.0, vgg_l1_samples=pairs))
    sums = LossSums()
    _, fakes = generator_step(parts, micro, global_weights(parts.accelerator, micro), sums)
    logged = sums.reduce(parts.accelerator)
    target = micro[0]["target"]
    per_pair = sum(
        w * per_sample_l1(fakes[0] * k, target * k)
        for w, k in zip(VGG_LAYER_WEIGHTS, range(1, 6), strict=True)
    )
    # The self reference alone (the release's `fm` term), or both pairs.
    expected = per_pair[0] if pairs == "same_appearance" else per_pair.mean()
    assert logged["loss/vgg"] == pytest.approx(float(expected), rel=1e-5)
    # VGG-MSE averages over every pair with a ground truth either way (the release's `perc`).
    mse = (fakes[0] * 4 - target * 4).pow(2).flatten(1).mean(1).mean()
    assert logged["loss/vgg_mse"] == pytest.approx(float(mse), rel=1e-5)
