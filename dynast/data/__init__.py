"""Data of dynast: the built-in synthetic exemplar-translation dataset, the plain folder format
that users bring their own data in, the paper's datasets in their original layouts (DeepFashion,
CelebA-HQ edges, ADE20K), and the tools around them (export, exemplar lists, pictures,
correspondence accuracy). See docs/data.md."""

from .build import build_dataset
from .config import DataConfig
from .correspondence import correspondence_accuracy
from .folder import FolderDataset
from .palette import semantic_to_rgb
from .sample import Sample
from .synthetic import SyntheticDataset

# The real-data loaders import OpenCV and scikit-image: loaded on first use only.
_LAZY = {
    "ADE20KDataset": ".ade20k",
    "CelebAHQEdgeDataset": ".celebahq_edge",
    "DeepFashionDataset": ".deepfashion",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADE20KDataset",
    "CelebAHQEdgeDataset",
    "DataConfig",
    "DeepFashionDataset",
    "FolderDataset",
    "Sample",
    "SyntheticDataset",
    "build_dataset",
    "correspondence_accuracy",
    "semantic_to_rgb",
]
