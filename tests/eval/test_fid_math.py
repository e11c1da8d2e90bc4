"""FID maths: torchmetrics' distance through our statistics plumbing, against closed forms and
numpy/scipy; an injected tiny extractor end to end; invariances; the statistics file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import Tensor, nn

from eval.fid import (
    FeatureStats,
    StatsOnly,
    check_compatible,
    frechet_distance,
    load_stats,
    load_stats_into,
    new_metric,
    save_stats,
    stats_of,
    update_metric,
)
from eval.images import FolderImages, scan_folder


def scipy_fid(mu1, sigma1, mu2, sigma2) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


def random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("dim", [1, 5, 33])
def test_closed_form_gaussians(dim: int) -> None:
    # Commuting covariances (same eigenvectors): FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(dim)
    rotation = random_rotation(rng, dim)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    sigma1 = rotation @ np.diag(a) @ rotation.T
    sigma2 = rotation @ np.diag(b) @ rotation.T
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(FeatureStats(mu1, sigma1, 100), FeatureStats(mu2, sigma2, 50))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_general_covariances_match_scipy() -> None:
    rng = np.random.default_rng(7)
    dim = 12
    m1, m2 = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    sigma1, sigma2 = m1 @ m1.T + 0.1 * np.eye(dim), m2 @ m2.T + 0.1 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    got = frechet_distance(FeatureStats(mu1, sigma1, 10), FeatureStats(mu2, sigma2, 10))
    np.testing.assert_allclose(got, scipy_fid(mu1, sigma1, mu2, sigma2), rtol=1e-6)


def test_identical_statistics_give_zero() -> None:
    rng = np.random.default_rng(3)
    m = rng.normal(size=(6, 6))
    stats = FeatureStats(rng.normal(size=6), m @ m.T + np.eye(6), 20)
    assert abs(frechet_distance(stats, stats)) < 1e-9


class TinyExtractor(nn.Module):
    """A fixed random projection of per-channel moments: 6 features per image, float64."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(6, 6, generator=g, dtype=torch.float64))

    def forward(self, images: Tensor) -> Tensor:
        x = images.double() / 255.0
        moments = torch.cat([x.mean(dim=(2, 3)), x.square().mean(dim=(2, 3))], dim=1)
        return moments @ self.projection


def features_numpy(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64) / 255.0
    moments = np.concatenate([x.mean(axis=(2, 3)), (x**2).mean(axis=(2, 3))], axis=1)
    return moments @ TinyExtractor().projection.numpy()


def write_folder(path, images: np.ndarray) -> None:
    path.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(path / f"{i:03d}.png")


def test_tiny_extractor_end_to_end(tmp_path) -> None:
    # Folder -> decoding -> batches -> torchmetrics statistics -> distance, against numpy/scipy.
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (13, 3, 10, 14), dtype=np.uint8)
    fake = np.clip(real[:11].astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
    write_folder(tmp_path / "real", real)
    write_folder(tmp_path / "fake", fake)
    metric = new_metric(TinyExtractor())
    for name, is_real in (("real", True), ("fake", False)):
        folder = scan_folder(tmp_path / name)
        batches = torch.utils.data.DataLoader(FolderImages(folder), batch_size=4)
        update_metric(metric, batches, real=is_real, device=torch.device("cpu"))
    f_real, f_fake = features_numpy(real), features_numpy(fake)
    mu1, sigma1 = f_real.mean(0), np.cov(f_real, rowvar=False)
    mu2, sigma2 = f_fake.mean(0), np.cov(f_fake, rowvar=False)
    np.testing.assert_allclose(
        float(metric.compute()), scipy_fid(mu1, sigma1, mu2, sigma2), rtol=1e-6
    )
    stats = stats_of(metric, real=True, meta={})
    np.testing.assert_allclose(stats.mu, mu1, rtol=1e-10)
    np.testing.assert_allclose(stats.sigma, sigma1, rtol=1e-8, atol=1e-12)
    assert stats.count == 13


def stats_from_features(features: np.ndarray) -> FeatureStats:
    return FeatureStats(features.mean(0), np.cov(features, rowvar=False), len(features))


def test_swapping_the_sets_changes_nothing() -> None:
    rng = np.random.default_rng(2)
    x = stats_from_features(rng.normal(size=(40, 8)))
    y = stats_from_features(rng.normal(size=(30, 8)) * 1.5 + 0.3)
    np.testing.assert_allclose(frechet_distance(x, y), frechet_distance(y, x), rtol=1e-6)


def test_shifting_features_by_c_adds_its_squared_norm() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(50, 8))
    c = rng.normal(size=8)
    x = stats_from_features(features)
    shifted = stats_from_features(features + c)
    np.testing.assert_allclose(frechet_distance(x, shifted), (c**2).sum(), rtol=1e-6)
    # And on top of an existing distance: the mean term is what moves.
    y = stats_from_features(rng.normal(size=(50, 8)) * 2.0)
    y_shift = FeatureStats(y.mu + c, y.sigma, y.count)
    delta = ((y.mu + c - x.mu) ** 2).sum() - ((y.mu - x.mu) ** 2).sum()
    np.testing.assert_allclose(
        frechet_distance(x, y_shift) - frechet_distance(x, y), delta, rtol=1e-6, atol=1e-9
    )


def test_statistics_injected_into_the_metric_round_trip() -> None:
    rng = np.random.default_rng(5)
    stats = stats_from_features(rng.normal(size=(9, 4)))
    metric = new_metric(StatsOnly(4))
    load_stats_into(metric, stats, real=True)
    back = stats_of(metric, real=True, meta={})
    np.testing.assert_allclose(back.mu, stats.mu, rtol=1e-12)
    np.testing.assert_allclose(back.sigma, stats.sigma, rtol=1e-9, atol=1e-12)


def test_stats_file_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(6)
    meta = {"extractor": "x", "preprocessing": "p", "weights_sha256": "ab", "feature_dim": 5}
    stats = FeatureStats(rng.normal(size=5), np.eye(5) * 2.0, 17, meta)
    path = tmp_path / "sub" / "stats.npz"
    save_stats(path, stats)
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temporary left behind
    back = load_stats(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.count == 17
    assert back.meta["weights_sha256"] == "ab"
    # pytorch-fid reads the same file: plain mu and sigma arrays.
    with np.load(path) as data:
        assert data["mu"].shape == (5,) and data["sigma"].shape == (5, 5)


def test_mismatched_metadata_is_refused() -> None:
    a = {"extractor": "x", "preprocessing": "p", "weights_sha256": "aa", "feature_dim": 5}
    check_compatible(a, dict(a))
    with pytest.raises(ValueError, match="weights_sha256"):
        check_compatible(a, {**a, "weights_sha256": "bb"})
    stats_a = FeatureStats(np.zeros(5), np.eye(5), 3, a)
    stats_b = FeatureStats(np.zeros(5), np.eye(5), 3, {**a, "preprocessing": "other"})
    with pytest.raises(ValueError, match="preprocessing"):
        frechet_distance(stats_a, stats_b)


def test_foreign_npz_is_refused(tmp_path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="not a dynast statistics file"):
        load_stats(path)
    bad_format = tmp_path / "old.npz"
    np.savez(bad_format, mu=np.zeros(3), sigma=np.eye(3), meta=np.array(json.dumps({"count": 3})))
    with pytest.raises(ValueError, match="format"):
        load_stats(bad_format)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot be read"):
        load_stats(garbage)
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "absent.npz")


def test_too_few_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats(np.zeros(2), np.eye(2), 1)


def test_statistics_of_another_dimension_are_refused() -> None:
    metric = new_metric(StatsOnly(4))
    with pytest.raises(ValueError, match="dimension 3"):
        load_stats_into(metric, FeatureStats(np.zeros(3), np.eye(3), 5), real=True)
