"""Generator: released size, output structure for every preset, candidate wiring between blocks,
the attention block's two limits (nothing kept / everything kept), gradients, input errors."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _assert import assert_close, assert_error_within, unit_roundoff
from torch import nn

import kernels
from dynast.attention_block import DynamicAttentionBlock
from dynast.blocks import positional_norm
from dynast.config import PRESETS, DynaSTConfig, preset
from dynast.generator import Generator, GeneratorOutput
from kernels.runtime import interpreting

RELEASED_PARAMETERS = 92.46e6


def _inputs(cfg: DynaSTConfig, batch: int, height: int, width: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    semantic = torch.rand(batch, cfg.semantic_nc, height, width, generator=gen)
    exemplar = torch.rand(batch, 3, height, width, generator=gen) * 2 - 1
    exemplar_semantic = torch.rand(batch, cfg.semantic_nc, height, width, generator=gen)
    return semantic, exemplar, exemplar_semantic


def _check_structure(
    cfg: DynaSTConfig, out: GeneratorOutput, batch: int, height: int, width: int
) -> None:
    blocks = cfg.num_scales * cfg.blocks_per_scale
    assert out.image.shape == (batch, 3, height, width)
    assert out.image.abs().max() <= 1
    factor = 2 ** (cfg.num_scales - 1)
    expected_sizes = [
        (height // factor * 2**s, width // factor * 2**s)
        for s in range(cfg.num_scales)
        for _ in range(cfg.blocks_per_scale)
    ]
    assert out.block_sizes == expected_sizes
    assert len(out.confs) == len(out.topks) == blocks
    for (h, w), conf, top in zip(out.block_sizes, out.confs, out.topks, strict=True):
        assert conf.shape == (batch, 1, h, w)
        assert conf.min() >= 0 and conf.max() <= 1 + 1e-5
        assert top.shape == (batch, h * w, cfg.topk) and top.dtype == torch.int64
        assert top.min() >= 0 and top.max() < h * w


@pytest.fixture(scope="module")
def released():
    """The 256-pixel presets, each built once for this module."""
    built: dict[str, Generator] = {}

    def get(name: str) -> Generator:
        if name not in built:
            torch.manual_seed(0)
            built[name] = Generator(PRESETS[name]).eval()
        return built[name]

    return get


def test_deepfashion_parameter_count_matches_the_release(released):
    count = sum(p.numel() for p in released("deepfashion-256").parameters())
    assert abs(count - RELEASED_PARAMETERS) / RELEASED_PARAMETERS < 0.02, count


@pytest.mark.parametrize("name", ["deepfashion-256", "celebahq-edge-256", "ade20k-256"])
def test_released_presets_forward_at_a_smaller_size(released, name):
    """The 256-pixel presets run on a 16x24 input (positional map 32x32 -> 2x3) at batch 1: the
    full-size forward costs about 700 GFLOP, too much for the CPU test budget."""
    cfg, g = PRESETS[name], released(name)
    with torch.no_grad():
        out = g(*_inputs(cfg, 1, 16, 24), with_warps=True)
    _check_structure(cfg, out, 1, 16, 24)
    assert [w.shape[2:] for w in out.warps] == [torch.Size(s) for s in out.block_sizes]
    assert out.kept == []
    assert torch.isfinite(out.image).all()


@pytest.fixture(scope="module")
def synthetic():
    cfg = preset("synthetic-64-narrow")
    torch.manual_seed(0)
    return cfg, Generator(cfg)


def test_synthetic_forward_backward_reaches_every_parameter(synthetic):
    cfg, g = synthetic
    g.train()
    g.zero_grad(set_to_none=True)
    out = g(*_inputs(cfg, 2, 64, 64), with_warps=True, with_sparsity=True)
    _check_structure(cfg, out, 2, 64, 64)
    assert len(out.warps) == len(out.kept) == len(out.confs)
    for (h, w), warp, kept in zip(out.block_sizes, out.warps, out.kept, strict=True):
        assert warp.shape == (2, 3, h, w)
        assert warp.min() >= -1 - 1e-5 and warp.max() <= 1 + 1e-5  # convex mix of the exemplar
        assert kept.shape == (2, 1, h, w) and kept.dtype == torch.int64
    # Kept candidates: all coarsest keys, 4k inter-scale, 5k inner-scale.
    per_block = [cfg.coarsest_size**2] * cfg.blocks_per_scale
    per_block += [4 * cfg.topk, 5 * cfg.topk] * (cfg.num_scales - 1)
    for kept, limit in zip(out.kept, per_block, strict=True):
        assert kept.min() >= 0 and kept.max() <= limit
    loss = out.image.square().mean() + sum(w.abs().mean() for w in out.warps)
    loss.backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in g.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


def test_candidates_follow_the_previous_top_k(synthetic):
    """Each sparse block attends only to its candidates, so its top-k must lie in them: inter-scale
    children of the coarser scale's last top-k, inner-scale neighbours of the previous block's."""
    cfg, g = synthetic
    g.eval()
    with torch.no_grad():
        out = g(*_inputs(cfg, 2, 64, 64, seed=1))
    per_scale = cfg.blocks_per_scale
    for index in range(per_scale, len(out.topks)):
        h, w = out.block_sizes[index]
        previous = out.topks[index - 1]
        if index % per_scale == 0:
            candidates = kernels.inter_scale_candidates(previous, h, w)
        else:
            candidates = kernels.inner_scale_candidates(previous, h, w)
        top = out.topks[index]
        inside = (top[..., :, None] == candidates[..., None, :]).any(dim=-1)
        assert inside.all(), f"block {index}: top-k outside its candidate set"


def test_eval_forward_is_deterministic_and_batch_independent(synthetic):
    cfg, g = synthetic
    g.eval()
    inputs = _inputs(cfg, 3, 64, 64, seed=2)
    with torch.no_grad():
        full = g(*inputs)
        one = g(*(x[1:2] for x in inputs))
    assert_close(one.image, full.image[1:2], name="image of sample 1", atol=1e-5, rtol=1e-4)
    for index, (a, b) in enumerate(zip(one.topks, full.topks, strict=True)):
        agree = (a == b[1:2]).float().mean()
        assert agree > 0.99, f"block {index}: top-k of sample 1 changes with the batch ({agree})"


def test_positional_map_is_interpolated_only_when_the_size_differs(synthetic):
    cfg, g = synthetic
    size = cfg.coarsest_size
    assert g.positional_map(size, size) is g.pos_embed
    resized = g.positional_map(3, 5)
    assert resized.shape == (1, cfg.pos_channels[0], 3, 5)
    assert_close(
        g.positional_map(2 * size, 2 * size)[..., ::2, ::2].mean(),
        g.pos_embed.mean(),
        name="mean of the upsampled map",
        atol=0.2,
        rtol=0,
    )


def _block(value_channels: int = 12, semantic_nc: int = 5) -> DynamicAttentionBlock:
    torch.manual_seed(3)
    block = DynamicAttentionBlock(
        value_channels,
        4,
        6,
        semantic_nc,
        scale=0.5,
        prune_scale=1.0,
        topk=2,
        warp_over="kept",
        backend="torch",
        gain=0.5,
    )
    return block.eval()


def test_block_with_nothing_kept_is_the_semantic_branch():
    """All prune logits negative: conf = 0, and the block reduces to
    residual(positional_norm(SPADE(x, S) + x)) whatever the exemplar."""
    block = _block()
    with torch.no_grad():
        for layer, sign in ((block.to_q_prune, -1.0), (block.to_k_prune, 1.0)):
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, sign)
    x, e = torch.randn(2, 12, 5, 7), torch.randn(2, 12, 5, 7)
    pos, sem = torch.randn(1, 4, 5, 7), torch.rand(2, 5, 10, 14)
    with torch.no_grad():
        result = block(x, e, pos, sem, warp_values=torch.rand(2, 3, 5, 7), with_sparsity=True)
        expected = block.residual(positional_norm(block.spade(x, sem) + x))
    assert torch.equal(result.conf, torch.zeros_like(result.conf))
    assert torch.equal(result.kept, torch.zeros_like(result.kept))
    assert_close(result.features, expected, name="features")


def test_block_with_everything_kept_and_flat_scores_averages_the_values():
    """Prune logits all positive and Q = 0: attention is uniform over the candidates, conf = 1,
    so the attended feature is the mean of V over each query's candidates."""
    block = _block()
    with torch.no_grad():
        for layer in (block.to_q_prune, block.to_k_prune):
            nn.init.zeros_(layer.weight)
            nn.init.constant_(layer.bias, 1.0)
        nn.init.zeros_(block.to_q.weight)
        nn.init.zeros_(block.to_q.bias)
    b, c, h, w = 2, 12, 4, 6
    x, e = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    pos, sem = torch.randn(1, 4, h, w), torch.rand(b, 5, h, w)
    candidates = torch.randint(0, h * w, (b, h * w, 5))
    with torch.no_grad():
        result = block(x, e, pos, sem, candidates=candidates)
        v = block.to_v(e.flatten(2).transpose(1, 2))  # [B, N, C]
        mean_v = torch.stack([v[i][candidates[i]].mean(dim=1) for i in range(b)])
        attended = mean_v.transpose(1, 2).reshape(b, c, h, w)
        expected = block.residual(positional_norm(attended + x))
    assert_close(result.conf, torch.ones_like(result.conf), name="conf")
    assert_close(result.features, expected, name="features")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"semantic": (2, 7, 64, 64)}, "semantic must have 8 channels", id="sem-ch"),
        pytest.param({"exemplar": (2, 4, 64, 64)}, "exemplar must have 3 channels", id="ex-ch"),
        pytest.param({"exemplar": (2, 3, 32, 32)}, "must match semantic's batch", id="ex-size"),
        pytest.param({"exemplar_semantic": (1, 8, 64, 64)}, "must match semantic", id="batch"),
        pytest.param(
            {
                "semantic": (2, 8, 60, 60),
                "exemplar": (2, 3, 60, 60),
                "exemplar_semantic": (2, 8, 60, 60),
            },
            "multiples of 8",
            id="not-divisible",
        ),
    ],
)
def test_bad_inputs_are_named(synthetic, change, message):
    _, g = synthetic
    shapes = {
        "semantic": (2, 8, 64, 64),
        "exemplar": (2, 3, 64, 64),
        "exemplar_semantic": (2, 8, 64, 64),
    }
    shapes.update(change)
    args = [torch.rand(*shapes[k]) for k in ("semantic", "exemplar", "exemplar_semantic")]
    with pytest.raises(ValueError, match=message):
        g(*args)


def test_constructor_rejects_other_configs():
    with pytest.raises(ValueError, match="expects a DynaSTConfig"):
        Generator(dataclasses.asdict(DynaSTConfig()))


@pytest.mark.parametrize("fused_field", ["attention_backend", "norm_backend"])
def test_fused_backend_matches_the_reference_through_the_whole_model(fused_field):
    """The same weights with `fused_field` "triton" (Triton's CPU interpreter here, the GPU where
    there is one: the attention kernels, or the normalisation kernels of every SPADE and
    attention block) and "torch": same image, warps, top-k, and gradients."""
    on_interpreter = interpreting()
    if not torch.cuda.is_available() and not on_interpreter:
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = DynaSTConfig(
        image_size=16, num_scales=2, ngf=4, pos_unit=2, prune_unit=2, topk=2,
        attention_backend="torch",
    )  # fmt: skip
    torch.manual_seed(0)
    reference = Generator(cfg).to(device)
    fused = Generator(dataclasses.replace(cfg, **{fused_field: "triton"})).to(device)
    fused.load_state_dict(reference.state_dict())
    # The float64 run is the ground truth: the fp32 reference's own error against it measures the
    # rounding noise of this model on this machine and thread count.
    exact = Generator(cfg).to(device, torch.float64)
    exact.load_state_dict(reference.state_dict())
    inputs = [x.to(device) for x in _inputs(cfg, 2, 16, 16, seed=4)]
    outputs = []
    for g, dtype in ((reference, torch.float32), (fused, torch.float32), (exact, torch.float64)):
        out = g(*(x.to(dtype) for x in inputs), with_warps=True)
        loss = out.image.square().mean() + sum(w.abs().mean() for w in out.warps)
        loss.backward()
        outputs.append(out)
    ref, got, ex = outputs
    assert_error_within(got.image, ref.image, ex.image, name="image")
    for i, (a, b) in enumerate(zip(got.topks, ref.topks, strict=True)):
        assert torch.equal(a, b), f"block {i}: top-k differs"
    for i, (a, b, c) in enumerate(zip(got.warps, ref.warps, ex.warps, strict=True)):
        assert_error_within(a, b, c, name=f"warp of block {i}")
    for i, (a, b, c) in enumerate(zip(got.confs, ref.confs, ex.confs, strict=True)):
        assert_error_within(a, b, c, name=f"conf of block {i}")
    # Some gradients are small only by cancellation (the prune projections' biases: ~1e-11
    # against ~1e-2 elsewhere), and both fp32 errors on them are noise near 1e-16, either of
    # which may be near zero by luck of the seed and the weights' last bits: an error below fp32's
    # resolution of the model's largest gradient, by a further 1e-5, is allowed (about 2e-14
    # here; the other gradients' errors are 1e-10 and above).
    largest = max(float(p.grad.abs().max()) for p in exact.parameters())
    resolution = unit_roundoff(torch.float32) * 1e-5 * largest
    named = zip(reference.named_parameters(), fused.parameters(), exact.parameters(), strict=True)
    for (name, p_ref), p_got, p_exact in named:
        # A bias that feeds a normalisation has a zero gradient: float64 noise in `exact`, fp32
        # noise in both others, which the baseline's error then measures.
        assert_error_within(
            p_got.grad, p_ref.grad, p_exact.grad, name=f"grad {name}", atol=resolution
        )


@pytest.mark.parametrize("norm_backend", ["torch", "triton"])
def test_channels_last_weights_and_inputs_give_the_same_model(norm_backend):
    """The generator in the channels_last layout (weights and inputs, as `bench_train_step.py
    --channels-last` runs it): the NCHW model's image, top-k and gradients within fp32 rounding,
    and a channels_last image. With norm_backend "triton" the fused normalisation kernels read
    the NHWC maps through their strides (Triton's CPU interpreter here)."""
    if norm_backend == "triton" and not torch.cuda.is_available() and not interpreting():
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = DynaSTConfig(
        image_size=16, num_scales=2, ngf=4, pos_unit=2, prune_unit=2, topk=2,
        attention_backend="torch", norm_backend=norm_backend,
    )  # fmt: skip
    torch.manual_seed(0)
    nchw = Generator(cfg).to(device)
    # Copies before any forward: a training-mode forward advances spectral norm's power iteration.
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    exact = copy.deepcopy(nchw).to(torch.float64)
    inputs = [x.to(device) for x in _inputs(cfg, 2, 16, 16, seed=6)]
    as_nhwc = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    outputs = []
    for g, xs in ((nchw, inputs), (nhwc, as_nhwc), (exact, [x.double() for x in inputs])):
        out = g(*xs, with_warps=True)
        (out.image.square().mean() + sum(w.abs().mean() for w in out.warps)).backward()
        outputs.append(out)
    ref, got, ex = outputs
    assert got.image.is_contiguous(memory_format=torch.channels_last)
    assert_error_within(got.image, ref.image, ex.image, name="image")
    for i, (a, b) in enumerate(zip(got.topks, ref.topks, strict=True)):
        assert torch.equal(a, b), f"block {i}: top-k differs"
    # The layout changes every reduction's order, and some gradients are small only by
    # cancellation (the prune projections' biases, ~1e-8 against ~1e-2 elsewhere): their error is
    # fp32 noise on terms of the model's gradient scale, which the allowance below covers.
    largest = max(float(p.grad.abs().max()) for p in exact.parameters())
    named = zip(nchw.named_parameters(), nhwc.parameters(), exact.parameters(), strict=True)
    for (name, p_ref), p_got, p_exact in named:
        assert_error_within(
            p_got.grad, p_ref.grad, p_exact.grad, name=f"grad {name}", atol=1e-5 * largest
        )
