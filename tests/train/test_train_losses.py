"""Training losses against direct formulas, and the global-batch weight normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _assert import assert_close

from train.config import PRESET_NAMES, LossWeights, run_preset
from train.losses import (
    VGG_LAYER_WEIGHTS,
    discriminator_hinge,
    feature_matching,
    generator_hinge,
    normalised_sum,
    per_sample_l1,
    vgg_losses,
    warp_block_weights,
    warp_loss,
)


def _preds(batch: int, gen: torch.Generator) -> list[list[torch.Tensor]]:
    """Two discriminator scales, each two feature maps and patch logits (odd sizes)."""
    return [
        [
            torch.randn(batch, 5, 9, 7, generator=gen),
            torch.randn(batch, 6, 5, 3, generator=gen),
            torch.randn(batch, 1, 3, 2, generator=gen),
        ],
        [
            torch.randn(batch, 5, 5, 4, generator=gen),
            torch.randn(batch, 6, 3, 2, generator=gen),
            torch.randn(batch, 1, 2, 1, generator=gen),
        ],
    ]


def test_warp_loss_pools_the_target_to_every_block():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 3, 24, 40, generator=gen) * 2 - 1
    warps = [torch.rand(3, 3, h, w, generator=gen) for h, w in ((3, 5), (6, 10), (24, 40))]
    expected = sum(
        (w - F.avg_pool2d(target, 24 // w.shape[2])).abs().mean(dim=(1, 2, 3)) for w in warps
    )
    assert_close(warp_loss(warps, target), expected, name="warp loss")
    with pytest.raises(ValueError, match="with_warps=True"):
        warp_loss([], target)


def test_warp_loss_weights_each_block_and_skips_weight_zero():
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    warps = [torch.rand(2, 3, s, s, generator=gen) for s in (4, 4, 8, 16)]
    terms = [
        (w - F.adaptive_avg_pool2d(target, w.shape[-2:])).abs().mean(dim=(1, 2, 3)) for w in warps
    ]
    weights = warp_block_weights(len(warps), 2, 0.25)
    assert weights == [0.25, 0.25, 1.0, 1.0]
    expected = 0.25 * (terms[0] + terms[1]) + terms[2] + terms[3]
    assert_close(warp_loss(warps, target, weights), expected, name="weighted warp loss")
    # Weight 0: the dense level's warps get no gradient at all (not even a zero one).
    for w in warps:
        w.requires_grad_(True)
    warp_loss(warps, target, warp_block_weights(len(warps), 2, 0.0)).sum().backward()
    assert warps[0].grad is None and warps[1].grad is None
    assert warps[2].grad.abs().sum() > 0 and warps[3].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one entry per block"):
        warp_loss(warps, target, [1.0])


def test_warp_dense_is_the_release_value_except_in_the_synthetic_presets():
    assert LossWeights().warp_dense == 1.0
    for name in PRESET_NAMES:
        expected = 0.0 if name.startswith("synthetic-64") else 1.0
        assert run_preset(name).train.loss.warp_dense == expected, name
    with pytest.raises(ValueError, match=r"train\.loss\.warp_dense"):
        LossWeights(warp_dense=-1.0)


def test_hinge_losses_and_feature_matching():
    gen = torch.Generator().manual_seed(1)
    fake, real = _preds(3, gen), _preds(3, gen)
    g = generator_hinge(fake)
    expected_g = -(fake[0][-1].mean(dim=(1, 2, 3)) + fake[1][-1].mean(dim=(1, 2, 3))) / 2
    assert_close(g, expected_g, name="generator hinge")
    d_real, d_fake = discriminator_hinge(real, fake)
    exp_real = sum(F.relu(1 - s[-1]).mean(dim=(1, 2, 3)) for s in real) / 2
    exp_fake = sum(F.relu(1 + s[-1]).mean(dim=(1, 2, 3)) for s in fake) / 2
    assert_close(d_real, exp_real, name="D real")
    assert_close(d_fake, exp_fake, name="D fake")
    fm = feature_matching(fake, real)
    exp_fm = sum(
        sum((f - r).abs().mean(dim=(1, 2, 3)) for f, r in zip(fs[:-1], rs[:-1], strict=True))
        for fs, rs in zip(fake, real, strict=True)
    ) / len(fake)
    assert_close(fm, exp_fm, name="feature matching")


def test_feature_matching_treats_real_features_as_constants():
    gen = torch.Generator().manual_seed(2)
    fake = [[t.requires_grad_(True) for t in s] for s in _preds(2, gen)]
    real = [[t.requires_grad_(True) for t in s] for s in _preds(2, gen)]
    feature_matching(fake, real).sum().backward()
    assert fake[0][0].grad is not None and real[0][0].grad is None


def test_vgg_losses_weights_layers_and_adds_relu4_2_mse():
    gen = torch.Generator().manual_seed(3)
    fake = [
        torch.randn(2, c, s, s, generator=gen) for c, s in ((4, 16), (5, 8), (6, 4), (7, 2), (3, 1))
    ]
    real = [torch.randn_like(f) for f in fake]
    l1, mse = vgg_losses(fake, real)
    expected = sum(
        w * (f - r).abs().mean(dim=(1, 2, 3))
        for w, f, r in zip(VGG_LAYER_WEIGHTS, fake, real, strict=True)
    )
    assert_close(l1, expected, name="vgg l1")
    assert_close(mse, (fake[3] - real[3]).pow(2).mean(dim=(1, 2, 3)), name="vgg mse relu4_2")
    with pytest.raises(ValueError, match="expected 5 feature maps"):
        vgg_losses(fake[:4], real[:4])


def test_per_sample_l1_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        per_sample_l1(torch.zeros(2, 3), torch.zeros(2, 4))


def test_normalised_sum_gradient_does_not_depend_on_the_process_split():
    """The global weighted mean's gradient: summed over micro-batches and averaged over
    processes (what DDP with gradient accumulation does), for several splits."""
    gen = torch.Generator().manual_seed(4)
    values = torch.rand(8, generator=gen)
    weights = (torch.rand(8, generator=gen) > 0.4).float()
    weights[0] = 1.0
    expected = (weights / weights.sum()).double()  # d(sum w l / sum w)/dl
    for world, micro in ((1, 1), (2, 1), (4, 1), (2, 2), (1, 4)):
        grad = torch.zeros(8, dtype=torch.float64)
        total = weights.sum()
        chunks = torch.arange(8).chunk(world * micro)
        for p in range(world):
            for m in range(micro):
                idx = chunks[p * micro + m]
                part = values[idx].clone().requires_grad_(True)
                normalised_sum(part, weights[idx], total, world).backward()
                grad[idx] += part.grad.double() / world  # DDP averages over processes
        assert_close(grad, expected, name=f"gradient world={world} micro={micro}", atol=1e-7)


def test_normalised_sum_of_an_empty_weight_set_is_zero():
    out = normalised_sum(torch.rand(3), torch.zeros(3), torch.tensor(0.0), 2)
    assert float(out) == 0.0


def test_losses_keep_float64_and_lift_half_precision_to_float32():
    gen = torch.Generator().manual_seed(5)
    target = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    warps = [torch.rand(2, 3, s, s, generator=gen, dtype=torch.float64) for s in (2, 4, 8)]
    preds = [[t.double() for t in scale] for scale in _preds(2, gen)]
    feats = [torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(5)]
    for value in (
        warp_loss(warps, target),
        generator_hinge(preds),
        *discriminator_hinge(preds, preds),
        feature_matching(preds, preds),
        *vgg_losses(feats, [f.flip(0) for f in feats]),
    ):
        assert value.dtype == torch.float64
    # The float64 value is the exact one: no float32 rounding on the way.
    exact = (warps[0] - F.avg_pool2d(target, 4)).abs().mean(dim=(1, 2, 3))
    assert_close(warp_loss(warps[:1], target), exact, name="float64 warp", atol=0, rtol=1e-14)
    half = per_sample_l1(target.bfloat16(), target.flip(0).bfloat16())
    assert half.dtype == torch.float32


def test_vgg_l1_samples_follows_the_release_by_default_and_is_checked():
    assert LossWeights().vgg_l1_samples == "same_appearance"
    for name in PRESET_NAMES:
        assert run_preset(name).train.loss.vgg_l1_samples == "same_appearance", name
    assert LossWeights(vgg_l1_samples="with_target").vgg_l1_samples == "with_target"
    with pytest.raises(ValueError, match=r"train\.loss\.vgg_l1_samples must be one of"):
        LossWeights(vgg_l1_samples="all")
