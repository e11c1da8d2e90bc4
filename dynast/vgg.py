"""VGG19 features for the perceptual losses (docs/method.md section 5), from a local ImageNet
weights file in torchvision's layout. Nothing here downloads.

torchvision cannot be imported next to our CPU torch, so the conv stack is defined here with
torchvision's module indices: the state dict of torchvision's `vgg19` (`features.0.weight`, ...,
`features.34.bias`, `classifier.{0,3,6}.{weight,bias}`) loads strictly, except that the
`classifier.*` keys are dropped on purpose (the losses read convolutional features only).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .io import load_torch_file
from .state_dicts import key_mismatches

VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"

# torchvision's `cfgs["E"]`: conv widths, "M" = 2x2 max pool.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")
_LAYOUT = (*_LAYOUT, 512, 512, 512, 512, "M")
# Indices in `features` of the ReLUs the losses read, and their names.
FEATURE_LAYERS = (3, 8, 13, 22, 31)
FEATURE_NAMES = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The release's `vgg_preprocess` (Caffe convention): BGR order, BGR ImageNet mean, x255, no std.
CAFFE_BGR_MEAN = (0.40760392, 0.45795686, 0.48501961)
_IGNORED_PREFIX = "classifier."


def default_vgg_weights_path() -> Path:
    """`<torch.hub.get_dir()>/checkpoints/vgg19-dcbb9e9d.pth`: where torchvision would have cached
    the file (`$TORCH_HOME/hub`, by default ~/.cache/torch/hub)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_WEIGHTS_FILE


def resolve_vgg_weights(path: str | os.PathLike | None) -> Path:
    """The weights file: `path` when given, else the default torchvision cache location.

    FileNotFoundError saying which file goes where when it does not exist."""
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise FileNotFoundError(
                f"VGG19 weights file {str(given)!r} (given explicitly) does not exist or is not a "
                f"file; it must be torchvision's ImageNet VGG19 state dict ({VGG19_WEIGHTS_FILE})"
            )
        return given
    default = default_vgg_weights_path()
    if not default.is_file():
        raise FileNotFoundError(
            f"no VGG19 weights given and none at {str(default)!r}. Copy torchvision's ImageNet "
            f"VGG19 weights ({VGG19_WEIGHTS_FILE}, from "
            f"https://download.pytorch.org/models/{VGG19_WEIGHTS_FILE}) there, set TORCH_HOME to "
            "the folder that holds hub/checkpoints/, or pass the file's path explicitly"
        )
    return default


def caffe_input(image: Tensor) -> Tensor:
    """The release's VGG input for an image in [-1, 1] (its `vgg_preprocess` with
    `--vgg_normal_correct`): [0, 1], RGB -> BGR, minus the BGR ImageNet mean, times 255. Against
    torchvision's `(x - mean) / std` this is about 255 * 0.226 = 57.5 times larger. The mean is
    a float32 tensor cast to the image's dtype, as the release builds it (`torch.Tensor([...])`):
    in float64 its decimal values would differ from the release's by float32 rounding."""
    mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32, device=image.device)
    mean = mean.to(image.dtype).view(1, 3, 1, 1)
    return (((image + 1) / 2).flip(1) - mean) * 255


class VGG19Features(nn.Module):
    """VGG19 conv stack returning relu1_2, relu2_2, relu3_2, relu4_2, relu5_2 of an image in
    [-1, 1] (ImageNet normalisation applied inside). Parameters are frozen; layers after relu5_2
    exist only so torchvision's state dict loads strictly, and are never run."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
                layers.append(nn.ReLU())
                channels = item
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | os.PathLike | None = None) -> VGG19Features:
        """Load torchvision's VGG19 state dict from `path` (see `resolve_vgg_weights`)."""
        file = resolve_vgg_weights(path)
        state = load_torch_file(file, "VGG19 weights")
        if not isinstance(state, dict):
            raise ValueError(
                f"{str(file)!r} must hold a state dict (a dict of tensors), "
                f"got {type(state).__name__}"
            )
        state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIX)}
        model = cls()
        missing, unexpected, wrong = key_mismatches(state, model.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{str(file)!r} is not torchvision's VGG19 state dict: missing keys {missing}, "
                f"unexpected keys {unexpected} ({_IGNORED_PREFIX}* keys are ignored)"
            )
        if wrong:
            raise ValueError(f"{str(file)!r} has tensors of the wrong shape: {wrong}")
        model.load_state_dict(state, strict=True)
        return model

    def train(self, mode: bool = True) -> VGG19Features:
        # A frozen feature extractor: stay in eval mode whatever the trainer asks.
        return super().train(False)

    def forward(self, image: Tensor) -> list[Tensor]:
        """image [B, 3, H, W] in [-1, 1] -> [relu1_2, relu2_2, relu3_2, relu4_2, relu5_2]."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        x = ((image + 1) / 2 - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return self.features_of(x)

    def features_of(self, x: Tensor) -> list[Tensor]:
        """The five ReLU outputs of an already preprocessed input (`forward` normalises the
        torchvision way; `caffe_input` gives the release's convention, for comparisons)."""
        outputs = []
        for index, layer in enumerate(self.features[: FEATURE_LAYERS[-1] + 1]):
            x = layer(x)
            if index in FEATURE_LAYERS:
                outputs.append(x)
        return outputs
