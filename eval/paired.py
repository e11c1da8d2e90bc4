"""Paired metrics between a generated image and its ground truth (same file name in both sets).

All three read images as intensities in [0, 1] and average per image over the set:
- l1: mean absolute difference over pixels and channels;
- psnr: 10 log10(1 / MSE) per image (torchmetrics `PeakSignalNoiseRatio`, data range 1);
- ssim: torchmetrics `StructuralSimilarityIndexMeasure` (Gaussian window 11, sigma 1.5, data range
  1), per image, averaged.
Per-image averaging makes the results independent of the batch size.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

PAIRED_METRICS = ("l1", "psnr", "ssim")
IMPLEMENTATION = (
    "intensities in [0,1], averaged per image; l1: mean |a-b|; psnr: torchmetrics "
    "PeakSignalNoiseRatio(data_range=1, per image); ssim: torchmetrics "
    "StructuralSimilarityIndexMeasure(data_range=1, gaussian 11, sigma 1.5)"
)


class PairedMetrics:
    """Streaming L1 / PSNR / SSIM over (real, fake) batches of uint8 [b, 3, H, W] images."""

    def __init__(self, names: tuple[str, ...] = PAIRED_METRICS, device: str | torch.device = "cpu"):
        unknown = sorted(set(names) - set(PAIRED_METRICS))
        if unknown:
            raise ValueError(f"names: unknown paired metrics {unknown}; known {PAIRED_METRICS}")
        self.names = tuple(names)
        self.device = torch.device(device)
        self._l1_sum = 0.0
        self._count = 0
        # dim=(1, 2, 3): one PSNR per image, then their mean.
        self._psnr = PeakSignalNoiseRatio(
            data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)
        )
        self._ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._psnr.to(self.device)
        self._ssim.to(self.device)

    def update(self, real: Tensor, fake: Tensor) -> None:
        if real.shape != fake.shape:
            raise ValueError(
                f"paired images differ in shape: real {tuple(real.shape)}, fake "
                f"{tuple(fake.shape)}; paired metrics need equal sizes"
            )
        r = real.to(self.device, torch.float32) / 255.0
        f = fake.to(self.device, torch.float32) / 255.0
        if "l1" in self.names:
            per_image = (r - f).abs().flatten(1).mean(dim=1, dtype=torch.float64)
            self._l1_sum += float(per_image.sum())
        if "psnr" in self.names:
            self._psnr.update(f, r)
        if "ssim" in self.names:
            self._ssim.update(f, r)
        self._count += real.shape[0]

    def compute(self) -> dict[str, float]:
        if self._count == 0:
            raise ValueError("paired metrics: no image pairs were given")
        out: dict[str, float] = {}
        if "l1" in self.names:
            out["l1"] = self._l1_sum / self._count
        if "psnr" in self.names:
            out["psnr"] = float(self._psnr.compute())
        if "ssim" in self.names:
            out["ssim"] = float(self._ssim.compute())
        return out
