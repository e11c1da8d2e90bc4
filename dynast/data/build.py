"""One entry point from a DataConfig to a dataset."""

from __future__ import annotations

from torch.utils.data import Dataset

from .config import SPLITS, DataConfig
from .folder import FolderDataset
from .synthetic import SyntheticDataset


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The `split` ("train" | "test") of the dataset `cfg` describes; items are `Sample`s."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.kind == "synthetic":
        return SyntheticDataset(cfg, split)
    if cfg.kind == "deepfashion":
        from .deepfashion import DeepFashionDataset

        return DeepFashionDataset(cfg, split)
    if cfg.kind == "celebahq-edge":
        from .celebahq_edge import CelebAHQEdgeDataset

        return CelebAHQEdgeDataset(cfg, split)
    if cfg.kind == "ade20k":
        from .ade20k import ADE20KDataset

        return ADE20KDataset(cfg, split)
    return FolderDataset(cfg, split)
