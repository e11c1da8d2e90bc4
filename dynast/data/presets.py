"""The data side of every training preset: which model preset it builds on and how its data is
read. Training (`train.config.TRAINING_PRESETS` adds a recipe) and evaluation (`--preset NAME`
takes a preset's data) both read it, so it lives below them.
"""

from __future__ import annotations

from typing import Any

from ..config import preset as model_preset
from .config import DataConfig

# The real-data presets: each trains the released model of its name on its dataset.
RELEASED_PRESETS = ("ade20k-256", "celebahq-edge-256", "deepfashion-256", "deepfashion-512")

# The model preset (dynast.config.PRESETS) each training preset builds on: the one of its name,
# or, for another recipe of the same model, of its name without the suffix.
PRESET_MODELS: dict[str, str] = {
    "synthetic-64": "synthetic-64",
    "synthetic-64-long": "synthetic-64",
    "synthetic-64-narrow": "synthetic-64-narrow",
    **{name: name for name in RELEASED_PRESETS},
}
PRESET_NAMES = tuple(sorted(PRESET_MODELS))

# The data side of each released preset (docs/method.md section 6; docs/data.md). DeepFashion
# follows DynaST's train_deepfashion.sh (load 256 = crop, --no_flip, --video_like, reference
# probabilities 0); CelebA-HQ edges and ADE20K follow CoCosNet's dataset defaults (load 286, crop
# 256, flips) and its training defaults real_reference_probability 0.7 / hard 0.2, since DynaST
# released no recipe for them. The synthetic presets take DataConfig's defaults.
_RELEASED_DATA: dict[str, dict[str, Any]] = {
    "deepfashion-256": {"kind": "deepfashion"},
    "deepfashion-512": {"kind": "deepfashion"},
    "celebahq-edge-256": {
        "kind": "celebahq-edge",
        "load_size": 286,
        "flip": True,
        "real_reference_probability": 0.7,
        "hard_reference_probability": 0.2,
    },
    "ade20k-256": {
        "kind": "ade20k",
        "load_size": 286,
        "flip": True,
        "real_reference_probability": 0.7,
        "hard_reference_probability": 0.2,
    },
}


def preset_data(name: str) -> DataConfig:
    """The data config of the training preset `name`, at its model's image size and classes; a
    real-data preset's folder is given on the command line (`--data.root DIR`). ValueError
    listing the names for an unknown one."""
    if name not in PRESET_MODELS:
        raise ValueError(f"--preset: unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
    model = model_preset(PRESET_MODELS[name])
    options = _RELEASED_DATA.get(name, {})
    return DataConfig(image_size=model.image_size, num_classes=model.semantic_nc, **options)
