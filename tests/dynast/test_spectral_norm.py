"""dynast's spectral norm iterates as the release's hook-based `torch.nn.utils.spectral_norm`,
state for state: the same vectors after every training-mode forward, the same normalised weight,
output and gradients, none of them moved by an eval-mode forward. PyTorch's newer
parametrization, from the same state, divides by another sigma (the order this replaces)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from dynast.blocks import conv2d
from dynast.spectral_norm import SpectralNorm, spectral_norm

P = "parametrizations.weight"


def _pair(seed: int = 0) -> tuple[nn.Conv2d, nn.Conv2d]:
    """(hook-based, ours) 3x3 convolutions with the same weight, bias and vectors, float64."""
    torch.manual_seed(seed)
    base = nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect").double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hook-based version is deprecated
        theirs = nn.utils.spectral_norm(copy.deepcopy(base))
    ours = spectral_norm(copy.deepcopy(base))
    ours.load_state_dict(
        {
            "bias": theirs.bias,
            f"{P}.original": theirs.weight_orig,
            f"{P}.0._u": theirs.weight_u,
            f"{P}.0._v": theirs.weight_v,
        }
    )
    return theirs, ours


def _assert_same_state(theirs: nn.Conv2d, ours: nn.Conv2d, when: str) -> None:
    sn = ours.parametrizations.weight[0]
    assert torch.equal(sn._u, theirs.weight_u), f"u {when}"
    assert torch.equal(sn._v, theirs.weight_v), f"v {when}"


def test_training_and_eval_forwards_keep_the_hook_based_state():
    theirs, ours = _pair()
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        x = torch.randn(2, 6, 7, 9, generator=gen, dtype=torch.float64)
        upstream = torch.randn(2, 5, 7, 9, generator=gen, dtype=torch.float64)
        mode = step != 2  # one eval-mode step: no iteration, the stored vectors
        theirs.train(mode)
        ours.train(mode)
        out_theirs, out_ours = theirs(x), ours(x)
        _assert_same_state(theirs, ours, f"after forward {step}")
        # The same operations on the same values: equal bit for bit, not within a tolerance.
        assert torch.equal(out_ours, out_theirs), step
        (out_theirs * upstream).sum().backward()
        (out_ours * upstream).sum().backward()
        assert torch.equal(ours.parametrizations.weight.original.grad, theirs.weight_orig.grad)
        assert torch.equal(ours.bias.grad, theirs.bias.grad)
        opt_theirs.step()
        opt_ours.step()
        opt_theirs.zero_grad()
        opt_ours.zero_grad()
    assert torch.equal(ours.parametrizations.weight.original, theirs.weight_orig)


def test_eval_mode_leaves_the_vectors_alone():
    _, ours = _pair()
    ours.eval()
    sn = ours.parametrizations.weight[0]
    before = sn._u.clone(), sn._v.clone()
    ours(torch.randn(1, 6, 4, 4, dtype=torch.float64))
    assert torch.equal(sn._u, before[0]) and torch.equal(sn._v, before[1])


def test_pytorchs_parametrization_iterates_in_the_other_order():
    """What this module replaces: from the same vectors, one training-mode forward of
    `torch.nn.utils.parametrizations.spectral_norm` (u first, then v) leaves other vectors and
    divides by another sigma."""
    theirs, ours = _pair()
    other = nn.utils.parametrizations.spectral_norm(copy.deepcopy(ours).eval()).double()
    other.parametrizations.weight.original.data.copy_(theirs.weight_orig)
    other.parametrizations.weight[0]._u.copy_(theirs.weight_u)
    other.parametrizations.weight[0]._v.copy_(theirs.weight_v)
    x = torch.randn(1, 6, 4, 4, dtype=torch.float64)
    for module in (theirs, ours, other):
        module.train()
    assert torch.equal(ours(x), theirs(x))
    differ = (other(x) - theirs(x)).abs().max()
    assert differ > 1e-6 * theirs(x).abs().max()


def test_state_dict_keys_are_pytorchs_parametrization_keys():
    keys = set(conv2d(4, 3, 3, gain=0.02, spectral=True).state_dict())
    assert keys == {"bias", f"{P}.original", f"{P}.0._u", f"{P}.0._v"}


def test_a_vector_weight_is_refused():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        SpectralNorm(torch.zeros(3))
