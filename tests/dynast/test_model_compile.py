"""`torch.compile` of the generator: one graph (fullgraph=True fails on any graph break), the same
image, top-k and gradients as eager mode. The attention runs through kernels.custom_ops there.

aot_eager traces exactly what inductor would get (Dynamo, then AOTAutograd over fake tensors with
the custom ops' fake implementations and autograd formulas) without compiling C++; the inductor
run itself takes minutes on two shared cores, so it is marked slow."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dynast.config import DynaSTConfig
from dynast.generator import Generator

SIZE = 16


def _tiny() -> DynaSTConfig:
    # Two scales of two blocks: one dense, one inter-scale and one inner-scale block.
    return DynaSTConfig(
        name="tiny-compile",
        semantic_nc=3,
        image_size=SIZE,
        ngf=4,
        num_scales=2,
        blocks_per_scale=2,
        topk=2,
        pos_unit=2,
        prune_unit=2,
        max_multiplier=2,
        attention_backend="torch",
    )


def _inputs(batch: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(1)
    semantic = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
    exemplar = torch.rand(batch, 3, SIZE, SIZE, generator=gen) * 2 - 1
    exemplar_semantic = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
    target = torch.rand(batch, 3, SIZE, SIZE, generator=gen) * 2 - 1
    return semantic, exemplar, exemplar_semantic, target


def _step(model, inputs):
    """A training-like loss (image L1 plus the warp L1 at every block) and its backward."""
    semantic, exemplar, exemplar_semantic, target = inputs
    out = model(semantic, exemplar, exemplar_semantic, with_warps=True)
    loss = F.l1_loss(out.image, target)
    for warp in out.warps:
        loss = loss + F.l1_loss(warp, F.adaptive_avg_pool2d(target, warp.shape[-2:]))
    loss.backward()
    return out


def _compare_compiled_with_eager(backend: str) -> None:
    # A compile earlier in the process (tests/train's compiled run) leaves Dynamo's caches
    # marking sizes dynamic, and inductor then fails in adaptive pooling: start fresh, static.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Generator(_tiny())
    # Two copies: spectral normalisation's power iteration updates a buffer at every training
    # forward, so one model run twice would see two different weights.
    reference = copy.deepcopy(model)
    inputs = _inputs()
    eager = _step(reference, inputs)
    eager_grads = {n: p.grad for n, p in reference.named_parameters()}
    compiled = _step(torch.compile(model, backend=backend, fullgraph=True, dynamic=False), inputs)
    eager.image, compiled.image = eager.image.detach(), compiled.image.detach()

    # Tolerances scale with the magnitudes of what is summed: the image is a tanh of sums of
    # order-one terms; a gradient is a sum over every pixel, and several are exactly zero in
    # exact arithmetic (biases ahead of a normalisation), so their rounding is compared with the
    # largest gradient of the model rather than with themselves.
    image_scale = float(eager.image.abs().max())
    assert float((compiled.image - eager.image).abs().max()) <= 1e-4 * image_scale
    assert len(compiled.topks) == len(eager.topks) == 4
    for got, want in zip(compiled.topks, eager.topks, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(compiled.warps, eager.warps, strict=True):
        got, want = got.detach(), want.detach()
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    grad_scale = max(float(g.abs().max()) for g in eager_grads.values())
    assert grad_scale > 0
    for name, param in model.named_parameters():
        want = eager_grads[name]
        err = float((param.grad - want).abs().max())
        assert err <= 1e-4 * float(want.abs().max()) + 1e-5 * grad_scale, name


def test_compiled_generator_is_one_graph_and_matches_eager() -> None:
    _compare_compiled_with_eager("aot_eager")


@pytest.mark.slow
def test_inductor_compiled_generator_matches_eager() -> None:
    _compare_compiled_with_eager("inductor")
