"""FID: feature statistics of image sets and the Fréchet distance, both by torchmetrics'
`FrechetInceptionDistance` fed with our own extractor (`feature=`).

Reference statistics are stored as `.npz` holding `mu` and `sigma` (float64; the keys pytorch-fid
reads too) and `meta`, a JSON string: count, image size, file format, extractor, preprocessing,
weights hash. Statistics are only compared when extractor, preprocessing and weights hash agree.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from tqdm import tqdm

from kernels.files import write_atomically

STATS_FORMAT = "dynast-fid-stats/1"
# Metadata that must agree between two statistics for their distance to mean anything.
COMPATIBILITY_KEYS = ("extractor", "preprocessing", "weights_sha256", "feature_dim")


@dataclass(frozen=True)
class FeatureStats:
    """Mean [D] and covariance [D, D] (unbiased, float64) of `count` feature vectors, with the
    metadata that says how they were made."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0], self.mu.shape[0]):
            raise ValueError(
                f"FeatureStats: mu {self.mu.shape} and sigma {self.sigma.shape} do not fit"
            )
        if self.count < 2:
            raise ValueError(
                f"FeatureStats: need at least 2 samples for a covariance, got {self.count}"
            )


class StatsOnly(nn.Module):
    """Stands in for the extractor when both sides are given as statistics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, images: Tensor) -> Tensor:
        raise RuntimeError("StatsOnly: this FID metric holds statistics only; it has no extractor")


def new_metric(extractor: nn.Module) -> FrechetInceptionDistance:
    """torchmetrics' FID around `extractor` (uint8 images -> [B, D] float64 features, with a
    `num_features` attribute)."""
    return FrechetInceptionDistance(feature=extractor, reset_real_features=False)


def update_metric(
    metric: FrechetInceptionDistance,
    batches: Iterable[Tensor],
    *,
    real: bool,
    device: torch.device,
    total: int | None = None,
    desc: str = "Inception features",
) -> int:
    """Feed uint8 batches [b, 3, H, W] to one side of the metric; returns the image count."""
    seen = 0
    with tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for batch in batches:
            metric.update(batch.to(device), real=real)
            seen += batch.shape[0]
            bar.update(batch.shape[0])
    return seen


def stats_of(
    metric: FrechetInceptionDistance, *, real: bool, meta: dict[str, object]
) -> FeatureStats:
    """The statistics torchmetrics accumulated for one side, as mean and unbiased covariance."""
    side = "real" if real else "fake"
    n = int(getattr(metric, f"{side}_features_num_samples"))
    if n < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {n}")
    total = getattr(metric, f"{side}_features_sum").detach().cpu().double()
    outer = getattr(metric, f"{side}_features_cov_sum").detach().cpu().double()
    mu = total / n
    sigma = (outer - n * torch.outer(mu, mu)) / (n - 1)
    return FeatureStats(mu.numpy(), sigma.numpy(), n, dict(meta))


def load_stats_into(metric: FrechetInceptionDistance, stats: FeatureStats, *, real: bool) -> None:
    """Set one side of the metric's state so that it holds exactly `stats`."""
    side = "real" if real else "fake"
    state_sum = getattr(metric, f"{side}_features_sum")
    if state_sum.shape[0] != stats.mu.shape[0]:
        raise ValueError(
            f"statistics of dimension {stats.mu.shape[0]} given to a metric of "
            f"{state_sum.shape[0]} features"
        )
    mu = torch.from_numpy(stats.mu).double()
    sigma = torch.from_numpy(stats.sigma).double()
    n = stats.count
    device = state_sum.device
    setattr(metric, f"{side}_features_sum", (mu * n).to(device))
    cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
    setattr(metric, f"{side}_features_cov_sum", cov_sum.to(device))
    setattr(metric, f"{side}_features_num_samples", torch.tensor(n, device=device))
    # torchmetrics casts its result to the dtype of the last features it saw (float64 here).
    if not hasattr(metric, "orig_dtype"):
        metric.orig_dtype = torch.float64


def frechet_distance(real: FeatureStats, fake: FeatureStats) -> float:
    """FID between two statistics, computed by torchmetrics."""
    check_compatible(real.meta, fake.meta)
    metric = new_metric(StatsOnly(real.mu.shape[0]))
    load_stats_into(metric, real, real=True)
    load_stats_into(metric, fake, real=False)
    with warnings.catch_warnings():
        # Both sides were set from statistics, so torchmetrics never saw an `update`.
        warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
        return float(metric.compute())


def check_compatible(
    a: dict[str, object],
    b: dict[str, object],
    what: str = "statistics",
    keys: tuple[str, ...] = COMPATIBILITY_KEYS,
) -> None:
    """Raise when two metadata records disagree on anything (of `keys`) that changes the
    features."""
    diffs = [
        f"{k}: {a.get(k)!r} vs {b.get(k)!r}"
        for k in keys
        if (k in a or k in b) and a.get(k) != b.get(k)
    ]
    if diffs:
        raise ValueError(f"{what} were made differently, not comparable: " + "; ".join(diffs))


def save_stats(path: str | Path, stats: FeatureStats) -> None:
    """Write `.npz` (mu, sigma, meta) through a temporary file renamed into place."""
    meta = {"format": STATS_FORMAT, **stats.meta, "count": stats.count}
    encoded = np.array(json.dumps(meta, sort_keys=True))

    def write(tmp: Path) -> None:
        # Through a file object: given a name, numpy would append ".npz" to the temporary name.
        with open(tmp, "wb") as f:
            np.savez(f, mu=stats.mu, sigma=stats.sigma, meta=encoded)

    write_atomically(Path(path), write)


def load_stats(path: str | Path) -> FeatureStats:
    """Read a `.npz` written by `save_stats`; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such statistics file")
    if not zipfile.is_zipfile(path):
        # np.load would read anything else as a pickle and call it "pickled (object) data".
        raise ValueError(
            f"{path}: cannot be read as a .npz statistics file: not an npz file (not a zip "
            "archive); make statistics with `python -m eval ref`"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if not {"mu", "sigma", "meta"} <= keys:
                raise ValueError(
                    f"{path}: not a dynast statistics file (keys {sorted(keys)}; expected mu, "
                    "sigma, meta); make one with `python -m eval ref`"
                )
            mu, sigma, meta = data["mu"], data["sigma"], json.loads(str(data["meta"]))
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and "dynast statistics" in str(error):
            raise
        raise ValueError(f"{path}: cannot be read as a .npz statistics file: {error}") from error
    if meta.get("format") != STATS_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {STATS_FORMAT!r}")
    # Checked here, not left to the distance: a NaN reaching the matrix square root crashes
    # inside MKL (a segfault) after every feature of the other set has been computed.
    for name, values in (("mu", mu), ("sigma", sigma)):
        if not np.issubdtype(values.dtype, np.floating) or not np.isfinite(values).all():
            raise ValueError(
                f"{path}: {name} holds non-finite values (NaN or inf) or is not floating point; "
                "make the statistics again with `python -m eval ref`"
            )
    try:
        return FeatureStats(
            mu.astype(np.float64), sigma.astype(np.float64), int(meta["count"]), meta
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not valid statistics ({error})") from error
