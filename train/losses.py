"""Losses of DynaST training (docs/method.md section 5), per sample.

Every function returns one value per sample ([B]) so the loop can weight samples (only pairs
with a ground truth count for the reconstruction terms) and normalise the weights over the global
batch with `normalised_sum`. Values are computed in fp32 for half-precision inputs (autocast) and
in the inputs' own dtype otherwise, so a float64 step is exact to float64 (the comparison with the
release's step, tests/train/test_release_step.py, checks it to 1e-9).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# VGG19 layers relu1_2, relu2_2, relu3_2, relu4_2, relu5_2: deeper layers weigh more (release).
VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
# Index of relu4_2 in that list: the layer of the extra MSE term.
VGG_MSE_LAYER = 3


def loss_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype a loss over `tensors` is computed in: theirs, at least fp32."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def per_sample_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference per sample: [B, ...] x [B, ...] -> [B] (`loss_dtype`)."""
    if a.shape != b.shape:
        raise ValueError(f"per_sample_l1: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = loss_dtype(a, b)
    return (a.to(dtype) - b.to(dtype)).abs().flatten(1).mean(1)


def per_sample_mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per sample: [B, ...] x [B, ...] -> [B] (`loss_dtype`)."""
    if a.shape != b.shape:
        raise ValueError(f"per_sample_mse: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    dtype = loss_dtype(a, b)
    return (a.to(dtype) - b.to(dtype)).pow(2).flatten(1).mean(1)


def warp_loss(
    warps: Sequence[Tensor], target: Tensor, weights: Sequence[float] | None = None
) -> Tensor:
    """Sum over blocks of the L1 between each block's warped exemplar [B, 3, h, w] and the target
    [B, 3, H, W] average-pooled to that block's size -> [B]. `weights`, one per block (None: all
    1, the release), scale each block's term; a block of weight 0 is not computed."""
    if not warps:
        raise ValueError("warp_loss: no warped exemplars (run the generator with with_warps=True)")
    if weights is None:
        weights = [1.0] * len(warps)
    if len(weights) != len(warps):
        raise ValueError(
            f"warp_loss: weights must have one entry per block ({len(warps)}), got {len(weights)}"
        )
    dtype = loss_dtype(target, *warps)
    total = torch.zeros(target.shape[0], device=target.device, dtype=dtype)
    for warp, weight in zip(warps, weights, strict=True):
        if weight == 0:
            continue
        pooled = F.adaptive_avg_pool2d(target.to(dtype), warp.shape[-2:])
        total = total + weight * per_sample_l1(warp, pooled)
    return total


def warp_block_weights(blocks: int, blocks_per_scale: int, dense: float) -> list[float]:
    """Per-block weights of `warp_loss` in running order: `dense` for the dense (coarsest) level's
    `blocks_per_scale` blocks, 1 for every sparse block."""
    return [dense] * blocks_per_scale + [1.0] * (blocks - blocks_per_scale)


def _at_least_fp32(x: Tensor) -> Tensor:
    return x.to(loss_dtype(x))


def _patch_mean(logits: Tensor) -> Tensor:
    return _at_least_fp32(logits).flatten(1).mean(1)


def generator_hinge(fake_preds: Sequence[Sequence[Tensor]]) -> Tensor:
    """Generator hinge loss `-mean D(F)`, averaged over discriminator scales -> [B]."""
    return torch.stack([-_patch_mean(scale[-1]) for scale in fake_preds]).mean(0)


def discriminator_hinge(
    real_preds: Sequence[Sequence[Tensor]], fake_preds: Sequence[Sequence[Tensor]]
) -> tuple[Tensor, Tensor]:
    """(`mean relu(1 - D(Y))`, `mean relu(1 + D(F))`) per sample, averaged over scales."""
    real = torch.stack([_patch_mean(F.relu(1 - _at_least_fp32(s[-1]))) for s in real_preds])
    fake = torch.stack([_patch_mean(F.relu(1 + _at_least_fp32(s[-1]))) for s in fake_preds])
    return real.mean(0), fake.mean(0)


def feature_matching(
    fake_preds: Sequence[Sequence[Tensor]], real_preds: Sequence[Sequence[Tensor]]
) -> Tensor:
    """L1 between the discriminator's intermediate features of F and of Y (the patch logits
    excluded), summed over layers and averaged over scales -> [B]. Real features are targets."""
    if len(fake_preds) != len(real_preds):
        raise ValueError(
            f"feature_matching: {len(fake_preds)} fake vs {len(real_preds)} real scales"
        )
    per_scale = []
    for fake, real in zip(fake_preds, real_preds, strict=True):
        layers = [per_sample_l1(f, r.detach()) for f, r in zip(fake[:-1], real[:-1], strict=True)]
        per_scale.append(torch.stack(layers).sum(0))
    return torch.stack(per_scale).mean(0)


def vgg_losses(fake_feats: Sequence[Tensor], real_feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(weighted L1 over the five VGG19 layers, MSE at relu4_2) per sample."""
    if len(fake_feats) != len(VGG_LAYER_WEIGHTS) or len(real_feats) != len(VGG_LAYER_WEIGHTS):
        raise ValueError(
            f"vgg_losses: expected {len(VGG_LAYER_WEIGHTS)} feature maps each, got "
            f"{len(fake_feats)} and {len(real_feats)}"
        )
    l1 = sum(
        w * per_sample_l1(f, r.detach())
        for w, f, r in zip(VGG_LAYER_WEIGHTS, fake_feats, real_feats, strict=True)
    )
    mse = per_sample_mse(fake_feats[VGG_MSE_LAYER], real_feats[VGG_MSE_LAYER].detach())
    return l1, mse


def normalised_sum(
    per_sample: Tensor, weights: Tensor, global_weight: Tensor, world: int
) -> Tensor:
    """This process's share of `sum_i w_i l_i / sum_i w_i` over the global batch.

    `global_weight` is the sum of the weights over every process and micro-batch of the step.
    Gradients of the shares summed over micro-batches and averaged over the `world` processes
    (as DDP does) equal the gradient of the global weighted mean, whatever the process count.
    A step without any weight contributes 0.
    """
    return world * (per_sample * weights).sum() / global_weight.clamp_min(1e-12)
