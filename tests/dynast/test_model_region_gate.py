"""`DynaSTConfig.region_gate` (ours, not in the release; dynast/region_gate.py): the warped
exemplar that `output_from_warp` corrects is blended, per pixel and by a learned gate, with its
mean over the target's semantic regions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _assert import assert_close

from dynast.blocks import resize_nearest
from dynast.config import PRESETS, DynaSTConfig
from dynast.generator import Generator
from dynast.io import from_pretrained, save_pretrained
from dynast.region_gate import RegionGate, region_mean
from train.config import PRESET_NAMES, run_preset

TINY = DynaSTConfig(image_size=32, ngf=4, init_gain=0.3, output_from_warp=True, region_gate=True)


def _one_hot(batch: int, classes: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, h, w), generator=gen)
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).double()


def _inputs(cfg: DynaSTConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    semantic = _one_hot(batch, cfg.semantic_nc, size, size, seed).float()
    exemplar = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    exemplar_semantic = _one_hot(batch, cfg.semantic_nc, size, size, seed + 1).float()
    return semantic, exemplar, exemplar_semantic


@pytest.mark.parametrize(
    ("batch", "channels", "classes", "h", "w"), [(1, 3, 4, 5, 7), (3, 2, 9, 8, 6)]
)
def test_region_mean_is_each_pixels_class_mean(batch, channels, classes, h, w):
    gen = torch.Generator().manual_seed(batch * 100 + classes)
    image = torch.randn(batch, channels, h, w, generator=gen, dtype=torch.float64)
    semantic = _one_hot(batch, classes, h, w, seed=classes)
    got = region_mean(image, semantic, eps=1e-300)  # exact class means
    labels = semantic.argmax(1)
    expected = torch.empty_like(image)
    for b in range(batch):
        for k in labels[b].unique():
            where = labels[b] == k
            expected[b][:, where] = image[b][:, where].mean(dim=1, keepdim=True)
    assert_close(got, expected, name="region mean", atol=1e-12, rtol=1e-12)


def test_region_mean_of_soft_maps_is_the_weighted_pooling_and_absent_classes_stay_finite():
    gen = torch.Generator().manual_seed(7)
    image = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    semantic = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    semantic[:, 2] = 0  # a class no pixel has
    semantic[0, :, 0, 0] = 0  # a pixel of no class
    got = region_mean(image, semantic)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0, :, 0, 0], torch.zeros(3, dtype=torch.float64))
    eps = 1e-6
    means = [
        [(semantic[b, k] * image[b]).sum((1, 2)) / (semantic[b, k].sum() + eps) for k in range(3)]
        for b in range(2)
    ]
    expected = torch.stack(
        [
            sum(semantic[b, k] * means[b][k][:, None, None] for k in range(3))
            / (semantic[b].sum(0) + eps)
            for b in range(2)
        ]
    )
    assert_close(got, expected, name="soft region mean", atol=1e-12, rtol=1e-12)


def test_region_mean_names_bad_shapes():
    with pytest.raises(ValueError, match=r"image \[B, C, h, w\] and semantic"):
        region_mean(torch.zeros(3, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="must match image"):
        region_mean(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))


def test_the_gate_starts_at_one_half_and_its_gradient_is_that_of_the_blend():
    gate = RegionGate(decoded_channels=5).double()
    gen = torch.Generator().manual_seed(3)
    decoded = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64)
    warp = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    semantic = _one_hot(2, 4, 6, 6, seed=3)
    conf = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    out = gate(decoded, warp, semantic, conf)
    pooled = region_mean(warp, semantic)
    assert_close(out, 0.5 * (warp + pooled), name="gate at init", atol=1e-12, rtol=1e-12)
    # d out / d bias = sigmoid'(0) * (pooled - warp) = (pooled - warp) / 4.
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * weights).sum().backward()
    expected = ((pooled - warp) * weights).sum() / 4
    assert_close(gate.conv.bias.grad, expected.reshape(1), name="bias grad", atol=1e-12, rtol=1e-9)
    assert gate.conv.weight.grad.abs().sum() > 0


def test_validation_names_the_fields():
    with pytest.raises(ValueError, match="region_gate must be true or false"):
        DynaSTConfig(output_from_warp=True, region_gate=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="set output_from_warp=True as well"):
        DynaSTConfig(region_gate=True)


def test_on_only_in_the_synthetic_64_model_and_its_training_presets():
    assert DynaSTConfig().region_gate is False
    on = {"synthetic-64", "synthetic-64-long"}
    for name, cfg in PRESETS.items():
        assert cfg.region_gate is (name in on), name
    for name in PRESET_NAMES:
        assert run_preset(name).model.region_gate is (name in on), name


def test_it_adds_one_convolution():
    off = Generator(dataclasses.replace(TINY, region_gate=False)).state_dict()
    on = Generator(TINY).state_dict()
    added = {k: tuple(v.shape) for k, v in on.items() if k not in off}
    finest = TINY.value_channels[-1]
    assert added == {
        "region_gate.conv.weight": (1, finest + 7, 3, 3),
        "region_gate.conv.bias": (1,),
    }
    assert {k: v.shape for k, v in off.items()} == {k: on[k].shape for k in off}


def test_image_is_the_gated_warp_plus_the_decoder_correction():
    torch.manual_seed(0)
    g = Generator(TINY).eval()
    with torch.no_grad():  # a decoder and a gate that are not at their initial zeros
        for conv in (g.to_rgb, g.region_gate.conv):
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.3)
    seen = {}
    g.to_rgb.register_forward_hook(lambda _m, _a, out: seen.setdefault("correction", out))
    g.region_gate.conv.register_forward_hook(lambda _m, args, out: seen.update(gate=out, x=args[0]))
    semantic, exemplar, exemplar_semantic = _inputs(TINY)
    with torch.no_grad():
        out = g(semantic, exemplar, exemplar_semantic, with_warps=True)
    warp, conf = out.warps[-1], out.confs[-1]
    x = seen["x"]
    finest = TINY.value_channels[-1]
    assert torch.equal(x[:, finest : finest + 3], warp)
    assert torch.equal(x[:, finest + 6 :], conf)
    sem = resize_nearest(semantic, warp.shape[-2:])
    pooled = region_mean(warp, sem)
    assert_close(x[:, finest + 3 : finest + 6], pooled, name="pooled", atol=1e-6, rtol=1e-6)
    gate = torch.sigmoid(seen["gate"])
    assert gate.std() > 0  # the gate varies per pixel
    expected = torch.clamp(warp + gate * (pooled - warp) + torch.tanh(seen["correction"]), -1, 1)
    assert_close(out.image, expected, name="image", atol=1e-6, rtol=1e-6)


def test_a_training_step_reaches_the_gate_and_the_attention():
    torch.manual_seed(1)
    g = Generator(TINY).train()
    semantic, exemplar, exemplar_semantic = _inputs(TINY, seed=4)
    exemplar.requires_grad_(True)
    out = g(semantic, exemplar, exemplar_semantic)
    out.image.square().sum().backward()
    assert g.region_gate.conv.weight.grad.abs().sum() > 0
    assert g.to_rgb.weight.grad.abs().sum() > 0
    assert exemplar.grad is not None and exemplar.grad.abs().sum() > 0
    bad = [n for n, p in g.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
    assert not bad


def test_save_and_load_keep_it(tmp_path):
    torch.manual_seed(2)
    g = Generator(TINY).eval()
    with torch.no_grad():
        g.region_gate.conv.weight.normal_(0, 0.3)
    save_pretrained(g, tmp_path / "weights")
    loaded = from_pretrained(tmp_path / "weights")
    assert loaded.config.region_gate is True
    inputs = _inputs(TINY, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs).image, g(*inputs).image)
    old = {k: v for k, v in TINY.to_dict().items() if k != "region_gate"}
    assert DynaSTConfig.from_dict(old).region_gate is False
