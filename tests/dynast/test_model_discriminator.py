"""Multi-scale PatchGAN: structure, sizes, parameter count, conditioning and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from _assert import assert_close

from dynast.config import DynaSTConfig, preset
from dynast.discriminator import MultiscaleDiscriminator


def _expected_parameters(in_channels: int, ndf: int, layers: int, scales: int) -> int:
    """4x4 convs: the first and last with bias, the instance-normed ones without."""
    widths = [ndf * 2 ** min(n, 3) for n in range(layers)]
    count = in_channels * widths[0] * 16 + widths[0]
    count += sum(a * b * 16 for a, b in itertools.pairwise(widths))
    count += widths[-1] * 16 + 1
    return scales * count


def test_released_size_without_the_unused_decoder():
    cfg = preset("deepfashion-256")
    d = MultiscaleDiscriminator(cfg)
    count = sum(p.numel() for p in d.parameters())
    assert count == _expected_parameters(23, 64, 4, 2)
    # The release's 6.4 M include about 0.39 M per scale of a decoder its forward never calls.
    assert 5.5e6 < count < 5.6e6


@pytest.mark.parametrize(
    ("height", "width", "batch"),
    [pytest.param(64, 64, 2, id="64x64"), pytest.param(48, 80, 3, id="48x80")],
)
def test_outputs_per_scale(height, width, batch):
    cfg = DynaSTConfig(ndf=8, semantic_nc=5)
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(cfg)
    semantic, image = torch.rand(batch, 5, height, width), torch.rand(batch, 3, height, width)
    out = d(semantic, image)
    assert len(out) == cfg.num_discriminators
    for scale, features in enumerate(out):
        h, w = height // 2**scale, width // 2**scale
        assert len(features) == cfg.disc_layers + 1
        widths = [8, 16, 32, 64, 1]
        # Three stride-2 convs, then two stride-1 4x4 convs with padding 1 (each removes a pixel).
        sizes = [(h // 2, w // 2), (h // 4, w // 4), (h // 8, w // 8)]
        sizes += [(h // 8 - 1, w // 8 - 1), (h // 8 - 2, w // 8 - 2)]
        for f, c, (fh, fw) in zip(features, widths, sizes, strict=True):
            assert f.shape == (batch, c, fh, fw)


def test_second_scale_sees_the_pooled_input():
    cfg = DynaSTConfig(ndf=8, semantic_nc=3)
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(cfg).eval()
    semantic, image = torch.rand(2, 3, 64, 48), torch.rand(2, 3, 64, 48)
    out = d(semantic, image)
    pooled = F.avg_pool2d(
        torch.cat([semantic, image], 1), 3, stride=2, padding=1, count_include_pad=False
    )
    assert_close(out[1][-1], d.scales[1](pooled)[-1], name="second-scale logits")


def test_conditioning_and_gradients():
    cfg = DynaSTConfig(ndf=8, semantic_nc=4)
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(cfg)
    semantic = torch.rand(2, 4, 48, 48)
    image = torch.rand(2, 3, 48, 48, requires_grad=True)
    logits = [features[-1] for features in d(semantic, image)]
    sum(x.mean() for x in logits).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())
    with torch.no_grad():
        other = [features[-1] for features in d(torch.rand(2, 4, 48, 48), image)]
    assert not torch.allclose(logits[0], other[0]), "logits ignore the semantic map"


def test_bad_inputs_are_named():
    d = MultiscaleDiscriminator(DynaSTConfig(ndf=8))
    with pytest.raises(ValueError, match="semantic must be \\[B, 8, H, W\\]"):
        d(torch.rand(1, 7, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image must be \\[B, 3, H, W\\]"):
        d(torch.rand(1, 8, 32, 32), torch.rand(1, 4, 32, 32))
    with pytest.raises(ValueError, match="must share batch and spatial size"):
        d(torch.rand(1, 8, 32, 32), torch.rand(1, 3, 16, 32))
    # 32 pixels: the second scale's last instance-normed layer would be 1x1.
    with pytest.raises(ValueError, match="image 32x40 is too small for the discriminator"):
        d(torch.rand(1, 8, 32, 40), torch.rand(1, 3, 32, 40))
    d3 = MultiscaleDiscriminator(DynaSTConfig(ndf=8, disc_layers=3))
    assert d3(torch.rand(1, 8, 32, 32), torch.rand(1, 3, 32, 32))[1][-1].shape == (1, 1, 2, 2)
