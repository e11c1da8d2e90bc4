"""Data of dynast: the built-in synthetic exemplar-translation dataset, the plain folder format
that users bring their own data in, and the tools around them (export, pictures, correspondence
accuracy). See docs/data.md."""

from .build import build_dataset
from .config import DataConfig
from .correspondence import correspondence_accuracy
from .folder import FolderDataset
from .palette import semantic_to_rgb
from .sample import Sample
from .synthetic import SyntheticDataset

__all__ = [
    "DataConfig",
    "FolderDataset",
    "Sample",
    "SyntheticDataset",
    "build_dataset",
    "correspondence_accuracy",
    "semantic_to_rgb",
]
