"""What a generator reads as its semantic input, and from which data pipeline its training inputs
came: a pose (DeepFashion's 20-channel encoding), face edges (CelebA-HQ's 15 channels) or a class
map (one-hot; synthetic, folder and ADE20K data).

A model does not record its data; in order, the answer comes from `--preset NAME` (a training
preset's data), the `config.json` of the training run that holds the model, or the training
preset of the model's own name (a converted release model is named for its preset). A model
none of these describe reads class maps, as `eval.generate` assumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dynast.config import DynaSTConfig
from dynast.data import DataConfig
from dynast.data.presets import PRESET_MODELS, preset_data

POSE, EDGES, CLASSES = "pose", "edges", "classes"
INPUT_KINDS = {"deepfashion": POSE, "celebahq-edge": EDGES}
# What each kind's input flags are called, for the errors that say which one a model takes.
INPUT_FLAGS = {POSE: "--pose", EDGES: "--edges", CLASSES: "--semantic"}


def input_kind(data_kind: str) -> str:
    """The semantic input of a data kind: "pose", "edges" or "classes"."""
    return INPUT_KINDS.get(data_kind, CLASSES)


@dataclass(frozen=True)
class ModelData:
    """The data pipeline a model was trained with, and where that was read."""

    data: DataConfig
    source: str

    @property
    def kind(self) -> str:
        return input_kind(self.data.kind)

    def describe(self) -> str:
        return f"{self.kind} input ({self.data.kind} data; from {self.source})"


def model_data(model_dir: Path, cfg: DynaSTConfig, preset: str | None = None) -> ModelData:
    """The model's data pipeline (see the module docstring); the image size is the model's."""
    from eval.generate import find_run_config

    if preset is not None:
        data, source = preset_data(preset), f"--preset {preset}"
    elif (run := find_run_config(model_dir)) is not None:
        path, config = run
        try:
            data = DataConfig.from_dict(config["data"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: its 'data' section is not a DataConfig: {error}") from None
        source = str(path)
    elif cfg.name in PRESET_MODELS:
        data, source = preset_data(cfg.name), f"the model's preset {cfg.name!r}"
    else:
        data = DataConfig(kind="folder", num_classes=cfg.semantic_nc, image_size=cfg.image_size)
        source = f"no run config and no preset named {cfg.name!r}: class maps assumed"
    if data.num_classes != cfg.semantic_nc:
        raise ValueError(
            f"the model reads {cfg.semantic_nc} semantic channels but its data ({source}) has "
            f"{data.num_classes}"
        )
    return ModelData(data, source)
