"""SPADE pads its hidden map once for the gamma and beta convolutions: the same values as running
the two reflect-padded convolution modules, one reflection pad fewer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dynast.blocks import SPADE, resize_nearest
from kernels import norm as norm_ops


def _two_module_spade(m: SPADE, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The release's expression: each convolution module pads the hidden map itself."""
    hidden = F.relu(m.shared(resize_nearest(cond, tuple(x.shape[-2:]))))
    return norm_ops.spade_modulation(x, m.gamma(hidden), m.beta(hidden))


class _CountPads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.pads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.pads += func._overloadpacket.__name__ == "reflection_pad2d"
        return func(*args, **(kwargs or {}))


def test_spade_pads_once_and_matches_the_module_expression() -> None:
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    m = SPADE(6, 3, gain=0.5)
    x = torch.randn(2, 6, 5, 7, generator=gen, requires_grad=True)
    cond = torch.randn(2, 3, 10, 14, generator=gen)

    with _CountPads() as counted:
        got = m(x, cond)
    want = _two_module_spade(m, x, cond)
    assert counted.pads == 2  # the shared convolution's and one for gamma and beta
    assert torch.equal(got, want)

    inputs = [x, *m.parameters()]
    upstream = torch.randn(got.shape, generator=gen)
    got_grads = torch.autograd.grad(got, inputs, upstream)
    want_grads = torch.autograd.grad(want, inputs, upstream)
    for g, w in zip(got_grads, want_grads, strict=True):
        # Only the order of the two padded-gradient sums differs: fp32 rounding.
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * float(w.abs().max()))
