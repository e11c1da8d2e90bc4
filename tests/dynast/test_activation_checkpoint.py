"""Activation checkpointing (`Generator.checkpoint_activations`, `train.checkpoint_activations`):
the same gradients bit for bit, and the same spectral-norm vectors and batch-norm statistics after
each step, as the run without it; each checkpointed block really runs again in the backward."""

from __future__ import annotations

import copy
import dataclasses

import torch

from dynast.activation_checkpoint import checkpointed
from dynast.blocks import SPADEResBlock
from dynast.config import preset
from dynast.generator import Generator


def _loss(model: Generator, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    out = model(*inputs, with_warps=True)
    return out.image.square().mean() + sum(w.abs().mean() for w in out.warps)


def test_gradients_and_state_are_bit_identical_with_checkpointing():
    # The narrow preset at 32 px with the tied finest fusion block (called twice per forward).
    cfg = dataclasses.replace(preset("synthetic-64-narrow"), image_size=32, tie_finest_fusion=True)
    size = cfg.image_size
    torch.manual_seed(0)
    plain = Generator(cfg).train()
    ckpt = copy.deepcopy(plain)
    ckpt.checkpoint_activations = True
    gen = torch.Generator().manual_seed(1)
    optimisers = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (plain, ckpt)]
    runs = {id(m): 0 for m in ckpt.modules() if isinstance(m, SPADEResBlock)}

    def count(module, _args):
        runs[id(module)] += 1

    for module in ckpt.modules():
        if isinstance(module, SPADEResBlock):
            module.register_forward_pre_hook(count)
    for step in range(2):  # the second step starts from the state the first one left
        inputs = (
            torch.rand(2, cfg.semantic_nc, size, size, generator=gen),
            torch.rand(2, 3, size, size, generator=gen) * 2 - 1,
            torch.rand(2, cfg.semantic_nc, size, size, generator=gen),
        )
        for model, opt in zip((plain, ckpt), optimisers, strict=True):
            opt.zero_grad()
            _loss(model, inputs).backward()
        # The same operations on the same values, rebuilt: equal bit for bit, not within a
        # tolerance.
        for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad), f"step {step}: gradient of {name}"
        for (name, a), b in zip(plain.named_buffers(), ckpt.buffers(), strict=True):
            assert torch.equal(a, b), f"step {step}: buffer {name}"
        for opt in optimisers:
            opt.step()
    # Forward and recomputation: twice per call; the tied block is called twice per forward.
    tied = id(ckpt.embed_q[-1])
    assert runs[tied] == 2 * 2 * 2
    assert all(n == 2 * 2 for key, n in runs.items() if key != tied)


def test_the_recomputation_leaves_the_live_buffers_alone():
    cfg = preset("synthetic-64-narrow")
    block = SPADEResBlock(8, cfg.semantic_nc, gain=0.02).train()
    calls = []
    block.register_forward_pre_hook(lambda *_: calls.append(1))
    x, cond = torch.rand(1, 8, 8, 8, requires_grad=True), torch.rand(1, cfg.semantic_nc, 8, 8)
    u = block.conv_0.parametrizations.weight[0]._u
    before = u.clone()
    out = checkpointed(block, x, cond)
    after_forward = u.clone()
    out.sum().backward()
    assert len(calls) == 2 and not torch.equal(before, after_forward)
    # The recomputation left the live vectors as the forward left them.
    assert torch.equal(u, after_forward)
