"""Multi-scale PatchGAN discriminator conditioned on the semantic map (docs/method.md section 5; the
SPADE/CoCosNet `MultiscaleDiscriminator` lineage as the release configures it).

Each scale is an `NLayerDiscriminator` on `concat(S, image)`: a 4x4 stride-2 conv and
LeakyReLU(0.2), then `disc_layers - 1` spectral-normed 4x4 convs (stride 2, the last stride 1) with
instance norm and LeakyReLU(0.2), then a 4x4 conv to one channel of patch logits. Every later scale
sees the input average-pooled 3x3 with stride 2.

Differences from the release, none of which changes what the discriminator computes:
- the release builds an extra decoder branch (`dec`) in each scale that its forward never calls
  (about 0.4 M parameters per scale at ndf 64); we leave it out;
- the convs followed by instance norm carry no bias: an affine-free instance norm subtracts any
  per-channel constant, so the release's biases there have no effect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import init_module_
from .config import DynaSTConfig
from .spectral_norm import spectral_norm

KERNEL = 4
PADDING = 1  # int((4 - 1) / 2), as the release
MAX_WIDTH = 512


def layer_sizes(num_layers: int, height: int, width: int) -> list[tuple[int, int]]:
    """Spatial size after each layer of an `NLayerDiscriminator` with `num_layers` for an input
    of this size: `num_layers` 4x4 convs (stride 2, the last stride 1), then the logits conv."""
    sizes = []
    for n in range(num_layers + 1):
        stride = 2 if n == 0 or n < num_layers - 1 else 1
        height = (height + 2 * PADDING - KERNEL) // stride + 1
        width = (width + 2 * PADDING - KERNEL) // stride + 1
        sizes.append((height, width))
    return sizes


def check_image_size(
    cfg: DynaSTConfig, height: int | None = None, width: int | None = None
) -> None:
    """ValueError unless images of `height` x `width` (default: `cfg.image_size` square) fit the
    discriminator `cfg` describes: instance norm needs more than one pixel and the logits at
    least one, at every scale. Needs the config alone, so training refuses it before it starts."""
    height = cfg.image_size if height is None else height
    width = cfg.image_size if width is None else width
    h, w = height, width
    for index in range(cfg.num_discriminators):
        if index > 0:
            h, w = (h + 1) // 2, (w + 1) // 2  # 3x3 stride-2 average pool, padding 1
        sizes = layer_sizes(cfg.disc_layers, h, w)
        normed, logits = sizes[1:-1], sizes[-1]
        if min(logits) < 1 or any(a * b < 2 for a, b in normed):
            raise ValueError(
                f"image {height}x{width} is too small for the discriminator "
                f"(num_discriminators={cfg.num_discriminators}, disc_layers={cfg.disc_layers}): "
                f"scale {index} would give layer sizes {sizes}; use a larger image or fewer "
                "layers or scales (model.disc_layers, model.num_discriminators)"
            )


class NLayerDiscriminator(nn.Module):
    """One PatchGAN scale. `forward` returns every layer's output; the last is the patch logits."""

    def __init__(self, in_channels: int, ndf: int, num_layers: int, *, gain: float) -> None:
        super().__init__()
        first = nn.Conv2d(in_channels, ndf, KERNEL, stride=2, padding=PADDING)
        init_module_(first, gain)
        layers = [nn.Sequential(first, nn.LeakyReLU(0.2))]
        width = ndf
        for n in range(1, num_layers):
            previous, width = width, min(width * 2, MAX_WIDTH)
            stride = 1 if n == num_layers - 1 else 2
            conv = nn.Conv2d(previous, width, KERNEL, stride=stride, padding=PADDING, bias=False)
            init_module_(conv, gain)
            layers.append(
                nn.Sequential(spectral_norm(conv), nn.InstanceNorm2d(width), nn.LeakyReLU(0.2))
            )
        last = nn.Conv2d(width, 1, KERNEL, stride=1, padding=PADDING)
        init_module_(last, gain)
        layers.append(nn.Sequential(last))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """`num_discriminators` PatchGANs on successively 2x average-pooled inputs.

    `forward(semantic [B, Cs, H, W], image [B, 3, H, W])` -> per scale, the list of intermediate
    features whose last entry is the patch logits [B, 1, h, w]."""

    def __init__(self, cfg: DynaSTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DynaSTConfig):
            raise ValueError(
                f"MultiscaleDiscriminator expects a DynaSTConfig, got {type(cfg).__name__}"
            )
        self.config = cfg
        in_channels = cfg.semantic_nc + 3
        self.scales = nn.ModuleList(
            NLayerDiscriminator(in_channels, cfg.ndf, cfg.disc_layers, gain=cfg.init_gain)
            for _ in range(cfg.num_discriminators)
        )

    def _check_size(self, height: int, width: int) -> None:
        check_image_size(self.config, height, width)

    def forward(self, semantic: Tensor, image: Tensor) -> list[list[Tensor]]:
        cfg = self.config
        if semantic.dim() != 4 or semantic.shape[1] != cfg.semantic_nc:
            raise ValueError(
                f"semantic must be [B, {cfg.semantic_nc}, H, W], got {tuple(semantic.shape)}"
            )
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if image.shape[0] != semantic.shape[0] or image.shape[2:] != semantic.shape[2:]:
            raise ValueError(
                f"image {tuple(image.shape)} and semantic {tuple(semantic.shape)} must share batch "
                "and spatial size"
            )
        self._check_size(*image.shape[2:])
        x = torch.cat([semantic.to(image.dtype), image], dim=1)
        results = []
        for i, scale in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            results.append(scale(x))
        return results
