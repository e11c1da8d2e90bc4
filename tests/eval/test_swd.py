"""SWD: the pyramid against scipy, patches against slicing, the published-algorithm reference
values (statistically), zero on identical sets with shared positions, batch-size invariance,
and the inputs it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from eval.swd import (
    SlicedWassersteinDistance,
    SWDConfig,
    extract_patches,
    laplacian_pyramid,
    level_sizes,
    pyramid_down,
    pyramid_up,
    sliced_wasserstein_distance,
)

# Reference values from an independent implementation of Karras et al.'s algorithm on these
# inputs: level-average SWD over 20 seeds, with the standard deviation over seeds.
REFERENCE_AB = (48.8, 0.9)
REFERENCE_AA = (39.7, 0.8)
SEEDS = 6  # standard error over 6 seeds: about 0.35; tolerance: 4 standard errors


@pytest.fixture(scope="module")
def sets() -> tuple[torch.Tensor, torch.Tensor]:
    a = np.random.RandomState(0).randint(0, 256, (16, 3, 64, 64)).astype(np.uint8)
    b = np.random.RandomState(1).randint(0, 256, (16, 3, 64, 64)).astype(np.uint8)
    return torch.from_numpy(a), torch.from_numpy(b)


@pytest.fixture
def one_thread():
    # These tensors are tiny: threads only add synchronisation cost on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BINOMIAL_2D = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def test_pyramid_matches_scipy_mirror_convolution() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 3, 20, 26))
    k = BINOMIAL_2D[None, None]
    down = scipy.ndimage.convolve(x, k, mode="mirror")[:, :, ::2, ::2]
    np.testing.assert_allclose(pyramid_down(torch.from_numpy(x)).numpy(), down, rtol=1e-12)
    small = down
    zeros = np.zeros((2, 3, 20, 26))
    zeros[:, :, ::2, ::2] = small
    up = scipy.ndimage.convolve(zeros, 4.0 * k, mode="mirror")
    got = pyramid_up(torch.from_numpy(small), (20, 26)).numpy()
    np.testing.assert_allclose(got, up, rtol=1e-12, atol=1e-9)


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64) * 255
    bands = laplacian_pyramid(x, 3)
    assert [tuple(b.shape[-2:]) for b in bands] == [(64, 48), (32, 24), (16, 12)]
    image = bands[-1]
    for band in reversed(bands[:-1]):
        image = band + pyramid_up(image, tuple(band.shape[-2:]))
    np.testing.assert_allclose(image.numpy(), x.numpy(), rtol=1e-12, atol=1e-9)


def test_level_sizes() -> None:
    assert level_sizes(256, 256) == [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16)]
    assert level_sizes(64, 64) == [(64, 64), (32, 32), (16, 16)]
    assert level_sizes(40, 70) == [(40, 70), (20, 35)]
    with pytest.raises(ValueError, match="at least 16"):
        level_sizes(15, 64)


def test_patches_are_the_neighbourhoods_around_their_centres() -> None:
    level = torch.rand(2, 3, 11, 13)
    centres = torch.tensor([[[3, 3], [7, 9]], [[5, 4], [3, 9]]])
    got = extract_patches(level, centres, 7)
    assert got.shape == (4, 3 * 49)
    for b in range(2):
        for p in range(2):
            y, x = centres[b, p].tolist()
            expected = level[b, :, y - 3 : y + 4, x - 3 : x + 4].reshape(-1)
            assert torch.equal(got[b * 2 + p], expected)


def mean_over_seeds(a: torch.Tensor, b: torch.Tensor, **kwargs) -> float:
    return float(
        np.mean(
            [
                sliced_wasserstein_distance(a, b, SWDConfig(seed=s, **kwargs)).mean
                for s in range(SEEDS)
            ]
        )
    )


def test_reference_value_between_two_noise_sets(sets, one_thread) -> None:
    mean, std = REFERENCE_AB
    got = mean_over_seeds(*sets)
    assert abs(got - mean) < 4 * std / np.sqrt(SEEDS), got


def test_reference_value_of_a_set_against_itself_with_independent_positions(
    sets, one_thread
) -> None:
    mean, std = REFERENCE_AA
    got = mean_over_seeds(sets[0], sets[0])
    assert abs(got - mean) < 4 * std / np.sqrt(SEEDS), got


def test_identical_sets_with_shared_positions_give_zero(sets, one_thread) -> None:
    result = sliced_wasserstein_distance(sets[0], sets[0], SWDConfig(seed=3, shared_positions=True))
    assert result.per_level == (0.0, 0.0, 0.0) and result.mean == 0.0
    assert [f"{h}x{w}" for h, w in result.level_sizes] == ["64x64", "32x32", "16x16"]


def test_result_does_not_depend_on_batch_size(sets, one_thread) -> None:
    a, b = sets[0][:7], sets[1][:7]
    cfg = SWDConfig(seed=11, patches_per_image=32, directions=64)
    whole = sliced_wasserstein_distance(a, b, cfg, batch_size=7)
    for batch_size in (1, 3):
        split = sliced_wasserstein_distance(a, b, cfg, batch_size=batch_size)
        np.testing.assert_allclose(split.per_level, whole.per_level, rtol=1e-6)


def test_seed_changes_the_estimate_and_fixes_it(sets, one_thread) -> None:
    a, b = sets[0][:4], sets[1][:4]
    cfg = SWDConfig(seed=1, patches_per_image=16)
    first = sliced_wasserstein_distance(a, b, cfg)
    assert sliced_wasserstein_distance(a, b, cfg) == first
    assert sliced_wasserstein_distance(a, b, SWDConfig(seed=2, patches_per_image=16)) != first


def test_different_counts_or_sizes_are_refused() -> None:
    a = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="equal counts and sizes"):
        sliced_wasserstein_distance(a, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="equal counts and sizes"):
        sliced_wasserstein_distance(a, torch.zeros(3, 3, 32, 48, dtype=torch.uint8))
    metric = SlicedWassersteinDistance(3, (32, 32))
    with pytest.raises(ValueError, match="size"):
        metric.add("b", torch.zeros(1, 3, 32, 48), 0)
    with pytest.raises(ValueError, match="outside"):
        metric.add("a", torch.zeros(2, 3, 32, 32), 2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        metric.add("a", torch.zeros(1, 4, 32, 32), 0)
    metric.add("a", a, 0)
    with pytest.raises(RuntimeError, match="never added"):
        metric.compute()


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        SWDConfig(patch_size=6)
    with pytest.raises(ValueError, match="directions"):
        SWDConfig(directions=0)
