"""The fused positional normalisation and SPADE modulation (`kernels.norm.fused`, through the public
`kernels.norm` operators) against the reference, forward and backward, on Triton's CPU interpreter
(or the GPU when there is one).

Errors are measured against a float64 reading of the reference and held to a multiple of the
error the reference itself makes in the same dtype on this machine (`assert_error_within`), so the
comparison follows the accumulation noise of the channel sums rather than a fixed tolerance."""

from __future__ import annotations

import pytest
import torch
from _assert import assert_error_within, sum_tolerance

from kernels import norm
from kernels.norm import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Awkward sizes: 2 and 3 channels, non-powers of two, more pixels than one block (128), batch > 1,
# a single pixel, more channels than one step (16).
SHAPES = [(1, 2, 1, 1), (2, 5, 7, 9), (3, 48, 13, 11), (1, 3, 1, 130), (2, 64, 8, 8)]
# Reduced-precision runs: the fused kernels round once, the eager reference after every step, so
# the fused error is held to the reference's (factor 1.5) rather than to a multiple of it.
DTYPE_FACTORS = {torch.float32: 8.0, torch.bfloat16: 1.5, torch.float16: 1.5}


def _maps(shape, seed: int, offset: float = 0.0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + offset
    gamma = torch.randn(shape, generator=g, dtype=torch.float64) * 0.5
    beta = torch.randn(shape, generator=g, dtype=torch.float64)
    dout = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, gamma, beta, dout


def _run(fn, inputs, dout, dtype, backend, layout=torch.contiguous_format):
    leaves = [
        t.to(DEVICE, dtype).contiguous(memory_format=layout).clone(memory_format=layout)
        for t in inputs
    ]
    leaves = [t.requires_grad_() for t in leaves]
    out = fn(*leaves, backend=backend)
    out.backward(dout.to(DEVICE, out.dtype).contiguous(memory_format=layout))
    return [out.detach(), *(t.grad for t in leaves)]


def _dx_terms(inputs, dout) -> float:
    """The largest term of dx = rstd * (dn - mean(dn) - n * sum(dn * n) / (C - 1)), float64: dx
    is small only by cancellation (exactly zero with 2 channels), so its error is bounded by the
    fp32 accumulation of terms this size (the kernels sum in fp32 whatever the dtype)."""
    x = inputs[0]
    c = x.shape[1]
    rstd = 1 / torch.sqrt(x.var(dim=1, keepdim=True) + 1e-8)
    n = (x - x.mean(dim=1, keepdim=True)) * rstd
    dn = dout * (1 + inputs[1]) if len(inputs) > 1 else dout
    size = dn.abs() + dn.abs().mean(dim=1, keepdim=True)
    size = size + n.abs() * (dn * n).abs().sum(dim=1, keepdim=True) / (c - 1)
    return float(sum_tolerance(float((rstd * size).max()), torch.float32, c))


def _check(fn, inputs, dout, dtype, factor, layout=torch.contiguous_format) -> None:
    names = ["out", "dx", "dgamma", "dbeta"][: len(inputs) + 1]
    exact = _run(fn, inputs, dout, torch.float64, "torch")
    baseline = _run(fn, inputs, dout, dtype, "torch")
    fused = _run(fn, inputs, dout, dtype, "triton", layout)
    for name, a, b, x in zip(names, fused, baseline, exact, strict=True):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        if layout == torch.channels_last and name != "dbeta":
            assert a.is_contiguous(memory_format=layout), f"{name}: not channels_last"
        atol = _dx_terms(inputs, dout) if name == "dx" else 0.0
        assert_error_within(a, b, x, name=f"{name} {dtype}", factor=factor, atol=atol)


@pytest.mark.usefixtures("nan_filled_outputs")
@pytest.mark.parametrize("dtype", list(DTYPE_FACTORS), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_spade_modulation_matches_the_reference(shape, dtype) -> None:
    x, gamma, beta, dout = _maps(shape, seed=sum(shape))
    _check(norm.spade_modulation, (x, gamma, beta), dout, dtype, DTYPE_FACTORS[dtype])


@pytest.mark.usefixtures("nan_filled_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_positional_norm_matches_the_reference(shape, dtype) -> None:
    x, _, _, dout = _maps(shape, seed=7 + sum(shape))
    _check(norm.positional_norm, (x,), dout, dtype, DTYPE_FACTORS[dtype])


@pytest.mark.usefixtures("nan_filled_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 72, 5, 3), (1, 3, 1, 130)], ids=str)
def test_channels_last_inputs_keep_their_layout(shape, dtype) -> None:
    """channels_last maps (what `--channels-last` runs give) are read through their strides, with
    more channels per step (72: two steps of 64), and the outputs and gradients keep the layout:
    no NCHW copy on the way in or out."""
    x, gamma, beta, dout = _maps(shape, seed=19 + sum(shape))
    _check(
        norm.spade_modulation, (x, gamma, beta), dout, dtype, DTYPE_FACTORS[dtype],
        layout=torch.channels_last,
    )  # fmt: skip
    _check(
        norm.positional_norm, (x,), dout, dtype, DTYPE_FACTORS[dtype], layout=torch.channels_last
    )


@pytest.mark.usefixtures("nan_filled_outputs")
def test_mixed_layouts_follow_x() -> None:
    x, gamma, beta, _ = (t.float().to(DEVICE) for t in _maps((2, 6, 4, 5), seed=23))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = norm.spade_modulation(x_cl, gamma, beta, backend="triton")
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = norm.spade_modulation(x, gamma, beta, backend="torch")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("nan_filled_outputs")
def test_a_large_mean_does_not_cancel_the_variance() -> None:
    """Channel values around 1,000 with a spread of 2: a one-pass sum of squares in fp32 would
    lose the variance to cancellation; the sums about the first channel keep it."""
    x, gamma, beta, dout = _maps((2, 40, 5, 6), seed=3, offset=1000.0)
    _check(norm.spade_modulation, (x, gamma, beta), dout, torch.float32, 8.0)


def test_the_torch_backend_is_the_models_expression_bit_for_bit() -> None:
    x, gamma, beta, _ = (t.float() for t in _maps((2, 6, 4, 5), seed=11))
    mean, var = x.mean(dim=1, keepdim=True), x.var(dim=1, keepdim=True)
    expected = (1 + gamma) * ((x - mean) / torch.sqrt(var + 1e-8)) + beta
    assert torch.equal(norm.spade_modulation(x, gamma, beta), expected)
    assert torch.equal(norm.positional_norm(x), reference.reference_positional_norm(x))


@pytest.mark.usefixtures("nan_filled_outputs")
def test_mixed_dtypes_promote_like_the_eager_expression() -> None:
    """Under autocast SPADE's convolutions give bf16 gamma and beta next to an fp32 x: the result
    is fp32 on both backends, and gradients return in each input's own dtype."""
    x, gamma, beta, dout = _maps((2, 12, 5, 3), seed=5)
    outs = {}
    for backend in ("torch", "triton"):
        leaves = [
            x.float().to(DEVICE).requires_grad_(),
            gamma.to(DEVICE, torch.bfloat16).requires_grad_(),
            beta.to(DEVICE, torch.bfloat16).requires_grad_(),
        ]
        out = norm.spade_modulation(*leaves, backend=backend)
        out.backward(dout.to(DEVICE, out.dtype))
        assert out.dtype == torch.float32
        assert [t.grad.dtype for t in leaves] == [t.dtype for t in leaves]
        outs[backend] = [out.detach(), *(t.grad.float() for t in leaves)]
    for name, a, b in zip(["out", "dx", "dgamma", "dbeta"], *outs.values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2, msg=name)


def test_bad_inputs_are_named() -> None:
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="x must be 4-D"):
        norm.positional_norm(x[0])
    with pytest.raises(ValueError, match="at least 2 channels"):
        norm.positional_norm(x[:, :1])
    with pytest.raises(ValueError, match="x must be a floating-point"):
        norm.positional_norm(x.long())
    with pytest.raises(ValueError, match="gamma must have x's shape"):
        norm.spade_modulation(x, x[:, :2], x)
    with pytest.raises(ValueError, match=r"beta must be a torch\.Tensor"):
        norm.spade_modulation(x, x, 1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        norm.positional_norm(x, backend="cuda")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        norm.positional_norm(x, eps=-1.0)
    with pytest.raises(ValueError, match="eps must be a finite"):
        norm.positional_norm(x, eps=float("nan"))


def test_compiling_traces_the_eager_expression_in_one_graph() -> None:
    """Under torch.compile the operators trace the eager expression (inductor fuses it) whatever
    the backend: no graph break (fullgraph), and the reference's values."""
    x, gamma, beta, _ = (t.float() for t in _maps((2, 6, 4, 5), seed=13))

    def modulate(x, gamma, beta):
        return norm.spade_modulation(x, gamma, beta, backend="triton")

    compiled = torch.compile(modulate, backend="aot_eager", fullgraph=True)
    expected = reference.reference_spade_modulation(x, gamma, beta)
    torch.testing.assert_close(compiled(x, gamma, beta), expected, rtol=1e-5, atol=1e-5)


def test_float64_keeps_its_precision_through_the_reference() -> None:
    """The kernels compute in fp32; float64 inputs (gradchecks, the tests' float64 models) take
    the reference on every backend, bit for bit."""
    x, gamma, beta, _ = (t.to(DEVICE) for t in _maps((2, 6, 4, 5), seed=29))
    fused = norm.spade_modulation(x, gamma, beta, backend="triton")
    assert torch.equal(fused, reference.reference_spade_modulation(x, gamma, beta))
    assert torch.equal(
        norm.positional_norm(x, backend="triton"), reference.reference_positional_norm(x)
    )
