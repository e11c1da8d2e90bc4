"""`DynaSTConfig.output_from_warp` (ours, not in the release): the image is the finest block's
warped exemplar plus the decoder's correction. Off by default and in every release preset;
on in synthetic-64 (the default run's model) and so in its training presets. It adds no
parameter, so release weights and the released parameter count are untouched."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _assert import assert_close

from dynast.config import PRESETS, DynaSTConfig
from dynast.data import DataConfig, build_dataset
from dynast.generator import Generator
from dynast.io import from_pretrained, save_pretrained
from train.config import PRESET_NAMES, run_preset
from train.losses import per_sample_l1, warp_loss

# Small enough for a forward and backward in well under a second.
TINY = DynaSTConfig(image_size=32, ngf=4, init_gain=0.3, output_from_warp=True)


def _inputs(cfg: DynaSTConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = cfg.image_size
    semantic = torch.rand(batch, cfg.semantic_nc, size, size, generator=gen)
    exemplar = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
    exemplar_semantic = torch.rand(batch, cfg.semantic_nc, size, size, generator=gen)
    return semantic, exemplar, exemplar_semantic


def _generator(cfg: DynaSTConfig = TINY, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(cfg)


def test_off_by_default_and_in_every_release_preset_on_in_the_synthetic_training_presets():
    assert DynaSTConfig().output_from_warp is False
    on = {"synthetic-64", "synthetic-64-long"}  # the narrow model is the release architecture
    for name, cfg in PRESETS.items():
        assert cfg.output_from_warp is (name in on), name
    for name in PRESET_NAMES:
        assert run_preset(name).model.output_from_warp is (name in on), name


def test_it_adds_no_parameter():
    off = _generator(dataclasses.replace(TINY, output_from_warp=False)).state_dict()
    on = _generator(TINY).state_dict()
    assert {k: v.shape for k, v in off.items()} == {k: v.shape for k, v in on.items()}


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="output_from_warp must be true or false"):
        DynaSTConfig(output_from_warp=1)  # type: ignore[arg-type]


def test_the_first_image_is_the_warped_exemplar_itself():
    """The decoder's last convolution starts at zero: no random correction at step 0."""
    g = _generator().eval()
    assert not g.to_rgb.weight.any() and not g.to_rgb.bias.any()
    with torch.no_grad():
        out = g(*_inputs(TINY), with_warps=True)
    assert torch.equal(out.image, out.warps[-1].clamp(-1, 1))
    # Without output_from_warp the release's initialisation is kept.
    assert _generator(dataclasses.replace(TINY, output_from_warp=False)).to_rgb.weight.any()


def test_image_is_the_finest_warp_plus_the_decoder_correction():
    g = _generator().eval()
    with torch.no_grad():  # a decoder that has left its initial zeros
        g.to_rgb.weight.normal_(0, 0.3)
        g.to_rgb.bias.normal_(0, 0.3)
    decoder_out = []
    g.to_rgb.register_forward_hook(lambda _module, _args, out: decoder_out.append(out))
    with torch.no_grad():
        out = g(*_inputs(TINY), with_warps=True)
    warp = out.warps[-1]
    assert out.image.shape == warp.shape == (2, 3, TINY.image_size, TINY.image_size)
    expected = torch.clamp(warp + torch.tanh(decoder_out[0]), -1, 1)
    assert_close(out.image, expected, name="image", atol=1e-6, rtol=1e-6)
    assert out.image.abs().max() <= 1

    # A decoder that outputs zero leaves the warped exemplar itself.
    with torch.no_grad():
        g.to_rgb.weight.zero_()
        g.to_rgb.bias.zero_()
        out = g(*_inputs(TINY), with_warps=True)
    assert torch.equal(out.image, out.warps[-1])


def test_inference_without_warps_computes_the_same_image():
    """eval.generate and the metrics call the generator without `with_warps`: the finest warp is
    computed anyway, and the image is the one training sees."""
    g = _generator().eval()
    inputs = _inputs(TINY, seed=1)
    with torch.no_grad():
        plain = g(*inputs)
        with_warps = g(*inputs, with_warps=True)
    assert plain.warps == []
    assert len(with_warps.warps) == TINY.num_scales * TINY.blocks_per_scale
    assert_close(plain.image, with_warps.image, name="image", atol=1e-6, rtol=1e-6)


def test_gradients_reach_every_parameter_and_the_exemplar():
    g = _generator().train()
    semantic, exemplar, exemplar_semantic = _inputs(TINY, seed=2)
    exemplar.requires_grad_(True)
    out = g(semantic, exemplar, exemplar_semantic)
    weights = torch.randn_like(out.image)
    (out.image * weights).sum().backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in g.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    # The warped exemplar's colours reach the image directly (the pooled RGB is a warp value).
    assert exemplar.grad is not None and exemplar.grad.abs().sum() > 0


def test_a_few_steps_fit_one_synthetic_batch():
    """The training presets' losses (warp + pixel L1) on one batch: the output's L1 falls."""
    data = DataConfig(image_size=32, textures="procedural", train_length=4)
    batch = torch.utils.data.default_collate([build_dataset(data, "train")[i] for i in range(4)])
    g = _generator().train()
    opt = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.9))
    inputs = (batch["semantic"], batch["exemplar"], batch["exemplar_semantic"])
    target = batch["target"]

    def output_l1() -> float:
        g.eval()
        with torch.no_grad():
            value = float(per_sample_l1(g(*inputs).image, target).mean())
        g.train()
        return value

    start = output_l1()
    for _ in range(8):
        out = g(*inputs, with_warps=True)
        loss = (warp_loss(out.warps, target) + 10 * per_sample_l1(out.image, target)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    end = output_l1()
    assert end < 0.9 * start, (start, end)


def test_save_and_load_keep_it(tmp_path):
    g = _generator().eval()
    save_pretrained(g, tmp_path / "weights")
    loaded = from_pretrained(tmp_path / "weights")
    assert loaded.config.output_from_warp is True
    inputs = _inputs(TINY, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs).image, g(*inputs).image)
    # Configs written before the field existed load with it off.
    old = {k: v for k, v in TINY.to_dict().items() if k != "output_from_warp"}
    assert DynaSTConfig.from_dict(old).output_from_warp is False
