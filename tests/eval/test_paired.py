"""Paired metrics against direct numpy formulas; batch-size invariance; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.paired import PairedMetrics


def pairs(seed: int = 0, count: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, (count, 3, 24, 19), dtype=np.uint8)
    noise = rng.integers(-30, 31, real.shape)
    fake = np.clip(real.astype(int) + noise, 0, 255).astype(np.uint8)
    return torch.from_numpy(real), torch.from_numpy(fake)


def test_l1_and_psnr_match_numpy() -> None:
    real, fake = pairs()
    metric = PairedMetrics(("l1", "psnr"))
    metric.update(real, fake)
    got = metric.compute()
    r, f = real.numpy() / 255.0, fake.numpy() / 255.0
    l1 = np.abs(r - f).reshape(len(r), -1).mean(axis=1).mean()
    mse = ((r - f) ** 2).reshape(len(r), -1).mean(axis=1)
    psnr = (10 * np.log10(1.0 / mse)).mean()
    np.testing.assert_allclose(got["l1"], l1, rtol=1e-6)
    np.testing.assert_allclose(got["psnr"], psnr, rtol=1e-5)
    assert set(got) == {"l1", "psnr"}


def test_ssim_is_one_on_identical_images_and_lower_otherwise() -> None:
    real, fake = pairs(1)
    same = PairedMetrics(("ssim",))
    same.update(real, real)
    assert abs(same.compute()["ssim"] - 1.0) < 1e-5
    other = PairedMetrics(("ssim",))
    other.update(real, fake)
    assert 0.0 < other.compute()["ssim"] < 0.99


def test_results_do_not_depend_on_batch_size() -> None:
    real, fake = pairs(2, count=7)
    whole = PairedMetrics()
    whole.update(real, fake)
    split = PairedMetrics()
    for r, f in zip(real.split(3), fake.split(3), strict=True):
        split.update(r, f)
    a, b = whole.compute(), split.compute()
    for name in ("l1", "psnr", "ssim"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown paired metrics"):
        PairedMetrics(("lpips",))
    metric = PairedMetrics()
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="no image pairs"):
        metric.compute()
