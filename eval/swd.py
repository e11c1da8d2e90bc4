"""Sliced Wasserstein distance between two image sets (Karras et al., progressive GAN, 2018).

1. Levels: sizes H, H/2, ... while the smaller side is at least `min_size` (16).
2. Laplacian pyramid: blur with the separable 5-tap binomial [1, 4, 6, 4, 1] / 16 and mirror
   (reflect-101) borders, keep every 2nd pixel; upsample by zero insertion and the kernel times 4;
   a level is the image minus the upsampled next one; the last level is the low-pass image itself.
3. Descriptors: `patches_per_image` random 7x7x3 neighbourhoods per image per level, centres uniform
   in [3, size - 3).
4. Normalisation: per set, per level and per colour channel, subtract the mean and divide by the
   population standard deviation over all descriptors and positions.
5. Distance: `repeats` times draw `directions` random unit vectors, project both sets, sort each
   projection, average the absolute differences. Reported x1e3 per level, and the mean over levels.

Randomness: one seed drives three independent streams (numpy SeedSequence): the patch positions of
set A, those of set B, and the directions. Positions are drawn for every image up front, so the
result does not depend on the batch size. Each set draws its own positions (as the original does),
so two identical sets give a distance near 40, not 0; `shared_positions=True` gives both sets the
same positions (then identical sets give exactly 0).

Memory: images are streamed; only the descriptors are kept (float32, count x 128 x 147 x levels per
set: 3.8 GB per set for 10,000 images at 256 px), and projections are sorted in chunks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from tqdm import tqdm


@dataclass(frozen=True)
class SWDConfig:
    patches_per_image: int = 128
    patch_size: int = 7
    min_size: int = 16
    repeats: int = 4
    directions: int = 128
    seed: int = 0
    shared_positions: bool = False
    # Directions projected (and sorted) at a time: bounds the memory of the sort, not the result.
    projection_chunk: int = 32

    def __post_init__(self) -> None:
        for name in ("patches_per_image", "repeats", "directions", "projection_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"SWDConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"SWDConfig.patch_size: expected an odd size, got {self.patch_size}")
        if self.min_size <= self.patch_size:
            raise ValueError(
                f"SWDConfig.min_size: expected > patch_size ({self.patch_size}), got "
                f"{self.min_size}"
            )


@dataclass(frozen=True)
class SWDResult:
    """SWD x1e3 per pyramid level (finest first) and their mean (the number usually reported)."""

    level_sizes: tuple[tuple[int, int], ...]
    per_level: tuple[float, ...]
    mean: float
    count: int

    def to_dict(self) -> dict[str, object]:
        return {
            "levels": {
                f"{h}x{w}": v for (h, w), v in zip(self.level_sizes, self.per_level, strict=True)
            },
            "mean": self.mean,
            "count": self.count,
        }


def level_sizes(height: int, width: int, min_size: int = 16) -> list[tuple[int, int]]:
    """Pyramid level sizes, finest first, while the smaller side is at least `min_size`."""
    sizes: list[tuple[int, int]] = []
    h, w = height, width
    while min(h, w) >= min_size:
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    if not sizes:
        raise ValueError(f"images of {height}x{width}: SWD needs sides of at least {min_size}")
    return sizes


_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur(x: Tensor, gain: float) -> Tensor:
    """Separable binomial blur with reflect-101 borders; `gain` multiplies each 1-D pass."""
    channels = x.shape[1]
    taps = torch.tensor(_BINOMIAL, dtype=x.dtype, device=x.device) * (gain / 16.0)
    x = F.pad(x, (2, 2, 0, 0), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    x = F.pad(x, (0, 0, 2, 2), mode="reflect")
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def pyramid_down(x: Tensor) -> Tensor:
    return _blur(x, 1.0)[..., ::2, ::2]


def pyramid_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero insertion into a map of `size`, then the blur with 4x the kernel (2x per pass)."""
    up = x.new_zeros(*x.shape[:2], *size)
    up[..., ::2, ::2] = x
    return _blur(up, 2.0)


def laplacian_pyramid(images: Tensor, num_levels: int) -> list[Tensor]:
    """[B, C, H, W] float -> `num_levels` band-pass maps, finest first; the last is the low-pass."""
    gaussian = [images]
    for _ in range(1, num_levels):
        gaussian.append(pyramid_down(gaussian[-1]))
    bands = [
        fine - pyramid_up(coarse, tuple(fine.shape[-2:]))
        for fine, coarse in itertools.pairwise(gaussian)
    ]
    return [*bands, gaussian[-1]]


def patch_centres(
    count: int, sizes: list[tuple[int, int]], cfg: SWDConfig, generator: torch.Generator
) -> list[Tensor]:
    """Per level, int64 [count, patches, 2] (y, x) centres uniform in [half, side - half)."""
    half = cfg.patch_size // 2
    centres = []
    for h, w in sizes:
        ys = torch.randint(half, h - half, (count, cfg.patches_per_image), generator=generator)
        xs = torch.randint(half, w - half, (count, cfg.patches_per_image), generator=generator)
        centres.append(torch.stack([ys, xs], dim=-1))
    return centres


def extract_patches(level: Tensor, centres: Tensor, patch_size: int) -> Tensor:
    """level [B, C, h, w], centres [B, P, 2] -> descriptors [B * P, C * patch_size**2] in (c, y, x)
    order."""
    half = patch_size // 2
    offsets = torch.arange(-half, half + 1, device=level.device)
    ys = centres[..., 0, None] + offsets  # [B, P, S]
    xs = centres[..., 1, None] + offsets  # [B, P, S]
    batch = torch.arange(level.shape[0], device=level.device)[:, None, None, None]
    pixels = rearrange(level, "b c h w -> b h w c")
    patches = pixels[batch, ys[..., :, None], xs[..., None, :]]  # [B, P, S, S, C]
    return rearrange(patches, "b p y x c -> (b p) (c y x)")


class PatchDescriptors:
    """The descriptors of one image set, filled batch by batch at given image indices."""

    def __init__(
        self, count: int, sizes: list[tuple[int, int]], centres: list[Tensor], cfg: SWDConfig
    ) -> None:
        self.count = count
        self.sizes = sizes
        self.centres = centres
        self.cfg = cfg
        dim = 3 * cfg.patch_size**2
        per_image = cfg.patches_per_image
        self.levels = [torch.empty(count * per_image, dim) for _ in sizes]
        self.filled = torch.zeros(count, dtype=torch.bool)

    def add(self, images: Tensor, start: int) -> None:
        """images [b, 3, H, W] (uint8 or float; the scale cancels in the normalisation) are the
        set's images start .. start + b - 1."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected [B, 3, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.sizes[0]:
            raise ValueError(
                f"images: expected size {self.sizes[0]}, got {tuple(images.shape[-2:])}; SWD "
                "needs both sets at one size"
            )
        stop = start + images.shape[0]
        if start < 0 or stop > self.count:
            raise ValueError(f"images {start}..{stop - 1}: outside the set of {self.count}")
        per_image = self.cfg.patches_per_image
        bands = laplacian_pyramid(images.float(), len(self.sizes))
        for level, band, centres in zip(self.levels, bands, self.centres, strict=True):
            centres = centres[start:stop].to(band.device)
            patches = extract_patches(band, centres, self.cfg.patch_size)
            level[start * per_image : stop * per_image] = patches.cpu()
        self.filled[start:stop] = True

    def normalised(self) -> list[Tensor]:
        """Normalise every level in place (per colour channel) and return them, [N * P, D]."""
        if not bool(self.filled.all()):
            missing = int((~self.filled).sum())
            raise RuntimeError(f"SWD: {missing} of {self.count} images of a set were never added")
        for level in self.levels:
            _normalise_per_channel(level, channels=3)
        return self.levels


def _normalise_per_channel(descriptors: Tensor, channels: int, chunk: int = 1 << 16) -> None:
    """In place: per channel, subtract the mean and divide by the population std, both taken in
    float64 over all descriptors and positions (two passes over chunks, no float64 copy)."""
    view = rearrange(descriptors, "n (c s) -> n c s", c=channels)
    total = view.shape[0] * view.shape[2]
    mean = torch.zeros(channels, dtype=torch.float64)
    for part in view.split(chunk):
        mean += part.double().sum(dim=(0, 2))
    mean /= total
    var = torch.zeros(channels, dtype=torch.float64)
    for part in view.split(chunk):
        var += (part.double() - mean[None, :, None]).square().sum(dim=(0, 2))
    std = (var / total).sqrt()
    # A channel without any variation (flat images) has nothing to compare: leave it at zero
    # rather than divide by zero.
    std = torch.where(std > 0, std, torch.ones_like(std))
    view.sub_(mean.float()[None, :, None]).div_(std.float()[None, :, None])


def _sort_rows(x: Tensor) -> Tensor:
    # numpy's vectorised sort is several times faster than torch.sort on the CPU; both are exact.
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=1))
    return torch.sort(x, dim=1).values


def sliced_wasserstein(a: Tensor, b: Tensor, generator: torch.Generator, cfg: SWDConfig) -> float:
    """Mean over `cfg.repeats` of the mean |sorted(a @ u) - sorted(b @ u)| over descriptors and
    `cfg.directions` random unit directions u. a, b: [N, D] with equal N."""
    if a.shape != b.shape:
        raise ValueError(
            f"SWD: descriptor sets differ in shape ({tuple(a.shape)} vs {tuple(b.shape)}); both "
            "sets need the same image count"
        )
    results = []
    for _ in range(cfg.repeats):
        dirs = torch.randn(a.shape[1], cfg.directions, generator=generator, dtype=torch.float64)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).float()
        total = 0.0
        for part in dirs.split(cfg.projection_chunk, dim=1):
            proj_a = _sort_rows(part.T @ a.T)  # [directions, N]
            proj_b = _sort_rows(part.T @ b.T)
            total += float((proj_a - proj_b).abs().sum(dtype=torch.float64))
        results.append(total / (a.shape[0] * cfg.directions))
    return float(np.mean(results))


def _generators(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    streams = np.random.SeedSequence(seed).spawn(3)
    gens = []
    for stream in streams:
        g = torch.Generator()
        g.manual_seed(int(stream.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        gens.append(g)
    return gens[0], gens[1], gens[2]


class SlicedWassersteinDistance:
    """Streaming SWD between set A (e.g. real) and set B (e.g. generated) of `count` images each
    of `size` (height, width): `add("a", images, start)` / `add("b", ...)`, then `compute()`."""

    def __init__(self, count: int, size: tuple[int, int], cfg: SWDConfig | None = None) -> None:
        self.cfg = cfg or SWDConfig()
        if count < 1:
            raise ValueError(f"count: expected >= 1 image per set, got {count}")
        self.count = count
        self.sizes = level_sizes(size[0], size[1], self.cfg.min_size)
        gen_a, gen_b, self._directions = _generators(self.cfg.seed)
        centres_a = patch_centres(count, self.sizes, self.cfg, gen_a)
        centres_b = (
            centres_a
            if self.cfg.shared_positions
            else patch_centres(count, self.sizes, self.cfg, gen_b)
        )
        self.sets = {
            "a": PatchDescriptors(count, self.sizes, centres_a, self.cfg),
            "b": PatchDescriptors(count, self.sizes, centres_b, self.cfg),
        }

    def add(self, which: str, images: Tensor, start: int) -> None:
        if which not in self.sets:
            raise ValueError(f"which: expected 'a' or 'b', got {which!r}")
        self.sets[which].add(images, start)

    def compute(self) -> SWDResult:
        levels_a = self.sets["a"].normalised()
        levels_b = self.sets["b"].normalised()
        per_level = tuple(
            1e3 * sliced_wasserstein(a, b, self._directions, self.cfg)
            for a, b in zip(levels_a, levels_b, strict=True)
        )
        return SWDResult(tuple(self.sizes), per_level, float(np.mean(per_level)), self.count)


def swd_from_batches(
    batches_a: Iterable[Tensor],
    batches_b: Iterable[Tensor],
    count: int,
    size: tuple[int, int],
    cfg: SWDConfig | None = None,
    *,
    progress: bool = False,
) -> SWDResult:
    """SWD of two streams of image batches ([b, 3, H, W], in set order) of `count` images each."""
    metric = SlicedWassersteinDistance(count, size, cfg)
    for which, batches in (("a", batches_a), ("b", batches_b)):
        start = 0
        for batch in tqdm(batches, desc=f"SWD set {which}", disable=not progress, leave=False):
            metric.add(which, batch, start)
            start += batch.shape[0]
        if start != count:
            raise ValueError(f"SWD set {which}: got {start} images, expected {count}")
    return metric.compute()


def sliced_wasserstein_distance(
    images_a: Tensor, images_b: Tensor, cfg: SWDConfig | None = None, batch_size: int = 64
) -> SWDResult:
    """SWD of two in-memory image sets [N, 3, H, W] of equal count and size."""
    if images_a.shape != images_b.shape:
        raise ValueError(
            f"images_a {tuple(images_a.shape)} and images_b {tuple(images_b.shape)}: SWD needs "
            "equal counts and sizes"
        )
    size = (int(images_a.shape[-2]), int(images_a.shape[-1]))
    return swd_from_batches(
        images_a.split(batch_size), images_b.split(batch_size), len(images_a), size, cfg
    )
