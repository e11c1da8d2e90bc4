"""Convolutional building blocks of the generator: normalisations, SPADE, residual blocks, the
encoder and the x2 upsamplers (docs/method.md section 2; the release's `architecture.py` lineage).

Every 3x3 convolution pads by reflection, as in the release. Weights are initialised where they are
built (xavier-normal with the configured gain, biases zero), *before* spectral norm wraps a
convolution: spectral norm estimates the largest singular value when it is attached, so
re-initialising afterwards would leave that estimate stale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels import norm as norm_ops

from .spectral_norm import spectral_norm


def positional_norm(x: Tensor, eps: float = 1e-8, *, backend: str = "torch") -> Tensor:
    """Normalise every pixel over channels: subtract the channel mean, divide by the channel
    standard deviation (unbiased variance, as the release). `backend` as `kernels.norm`: "torch"
    is the plain expression, "triton" / "auto" one fused kernel each way on CUDA tensors."""
    return norm_ops.positional_norm(x, eps, backend=backend)


def l2_normalize_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """x / (||x||_2 over channels + eps), per pixel (the release's `feature_normalize`)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)


def init_module_(module: nn.Conv2d | nn.Linear, gain: float) -> None:
    nn.init.xavier_normal_(module.weight, gain=gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    gain: float,
    stride: int = 1,
    spectral: bool = False,
    bias: bool = True,
) -> nn.Module:
    """A reflect-padded 'same' convolution (for odd kernels), initialised, optionally spectral-
    normed."""
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        padding_mode="reflect" if kernel_size > 1 else "zeros",
        bias=bias,
    )
    init_module_(conv, gain)
    return spectral_norm(conv) if spectral else conv


def batch_norm(channels: int, gain: float) -> nn.BatchNorm2d:
    """BatchNorm with the release's init: weight ~ N(1, gain), bias 0."""
    norm = nn.BatchNorm2d(channels)
    nn.init.normal_(norm.weight, 1.0, gain)
    nn.init.zeros_(norm.bias)
    return norm


def resize_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resampling to `size`; a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="nearest")


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: `(1 + gamma(s)) * positional_norm(x) + beta(s)`, with
    gamma and beta predicted from the conditioning map `s` (resized to x by nearest sampling).
    `norm_backend` runs the denormalisation as `kernels.norm.spade_modulation`."""

    def __init__(
        self, channels: int, cond_channels: int, *, gain: float, norm_backend: str = "torch"
    ) -> None:
        super().__init__()
        self.shared = conv2d(cond_channels, channels, 3, gain=gain)
        self.gamma = conv2d(channels, channels, 3, gain=gain)
        self.beta = conv2d(channels, channels, 3, gain=gain)
        self.norm_backend = norm_backend

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        hidden = F.relu(self.shared(resize_nearest(cond, tuple(x.shape[-2:]))))
        # Padded once for both convolutions (each module would pad it again): the same values,
        # one reflection pad fewer forward and backward (docs/benchmarks-h200.md, "--by-node").
        padded = F.pad(hidden, (1, 1, 1, 1), mode="reflect")  # gamma and beta are 3x3
        gamma = F.conv2d(padded, self.gamma.weight, self.gamma.bias)
        beta = F.conv2d(padded, self.beta.weight, self.beta.bias)
        return norm_ops.spade_modulation(x, gamma, beta, backend=self.norm_backend)


class ResidualBlock(nn.Module):
    """`act(x + bn(conv(act(bn(conv(x))))))` with one shared PReLU, as the release."""

    def __init__(self, channels: int, *, gain: float) -> None:
        super().__init__()
        self.conv_0 = conv2d(channels, channels, 3, gain=gain)
        self.norm_0 = batch_norm(channels, gain)
        self.conv_1 = conv2d(channels, channels, 3, gain=gain)
        self.norm_1 = batch_norm(channels, gain)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.norm_0(self.conv_0(x)))
        y = self.norm_1(self.conv_1(y))
        return self.act(x + y)


class SPADEResBlock(nn.Module):
    """Residual block whose two normalisations are SPADE conditioned on `cond`; spectral-normed
    convolutions; one shared PReLU (the release's `SPADEResnetBlock`)."""

    def __init__(
        self, channels: int, cond_channels: int, *, gain: float, norm_backend: str = "torch"
    ) -> None:
        super().__init__()
        self.norm_0 = SPADE(channels, cond_channels, gain=gain, norm_backend=norm_backend)
        self.conv_0 = conv2d(channels, channels, 3, gain=gain, spectral=True)
        self.norm_1 = SPADE(channels, cond_channels, gain=gain, norm_backend=norm_backend)
        self.conv_1 = conv2d(channels, channels, 3, gain=gain, spectral=True)
        self.act = nn.PReLU()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        dx = self.conv_0(self.act(self.norm_0(x, cond)))
        dx = self.conv_1(self.act(self.norm_1(dx, cond)))
        return self.act(x + dx)


class EncoderStage(nn.Module):
    """Spectral-normed 3x3 conv (stride 1 or 2), instance norm, residual block."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, gain: float) -> None:
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, 3, gain=gain, stride=stride, spectral=True)
        self.norm = nn.InstanceNorm2d(out_channels)
        self.residual = ResidualBlock(out_channels, gain=gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Feature pyramid of an input map: stage 0 keeps the resolution, each later stage halves it.

    `widths` are finest first; `forward` returns the features coarsest first."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], *, gain: float) -> None:
        super().__init__()
        inputs = (in_channels, *widths[:-1])
        self.stages = nn.ModuleList(
            EncoderStage(cin, cout, 1 if i == 0 else 2, gain=gain)
            for i, (cin, cout) in enumerate(zip(inputs, widths, strict=True))
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features[::-1]


class Upsample2x(nn.Module):
    """Bilinear x2 (align_corners, as the release), reflect-padded 3x3 conv, activation."""

    def __init__(
        self, in_channels: int, out_channels: int, activation: nn.Module, *, gain: float
    ) -> None:
        super().__init__()
        self.conv = conv2d(in_channels, out_channels, 3, gain=gain)
        self.act = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.act(self.conv(x))
