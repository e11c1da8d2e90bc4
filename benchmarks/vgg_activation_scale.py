"""How much larger the release's VGG activations are than ours, per loss layer.

The release feeds its Caffe-converted VGG19 (`vgg19_conv.pth`) BGR images x255 (`caffe_input`);
we feed torchvision's VGG19 ImageNet-normalised RGB. Its loss weights (VGG-L1 over five layers,
MSE at relu4_2) were tuned on its activation scale, so the ratio of mean |activation| per layer
says what factor would make our VGG terms comparable: L1 terms scale with it, the MSE with its
square.

    python -m benchmarks.vgg_activation_scale [--torchvision vgg19-dcbb9e9d.pth]
        [--caffe vgg19_conv.pth] [--images 16] [--size 256]

Without weight files one randomly initialised network (He-normal weights, which keep activation
magnitudes steady through the ReLU stack as trained weights do; zero biases) sees both inputs:
that isolates the input convention, which is all that can be measured without the files.
With both files, each convention runs its own weights (the real comparison). Images: the
synthetic dataset's targets. Prints one JSON line per layer.
"""

from __future__ import annotations

import argparse
import json

import torch

from dynast.data import DataConfig, build_dataset
from dynast.vgg import FEATURE_NAMES, VGG19Features, caffe_input

# Release checkpoint names of the conv layers, in order (its VGG19_feature_color_torchversion).
_CAFFE_CONVS = [
    f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for i in range(1, n + 1)
]


def load_caffe(path: str) -> VGG19Features:
    """The release's `vgg19_conv.pth` loaded into our layer layout (same convs, other names)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = VGG19Features()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    mapped = {}
    for index, (name, conv) in enumerate(zip(_CAFFE_CONVS, convs, strict=True)):
        position = list(model.features).index(conv)
        mapped[f"features.{position}.weight"] = state[f"{name}.weight"]
        mapped[f"features.{position}.bias"] = state[f"{name}.bias"]
        del index
    model.load_state_dict(mapped, strict=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchvision", help="torchvision's vgg19-dcbb9e9d.pth")
    parser.add_argument("--caffe", help="the release's vgg19_conv.pth")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.torchvision:
        ours = VGG19Features.from_file(args.torchvision)
    else:
        ours = VGG19Features()
        for module in ours.features:
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                torch.nn.init.zeros_(module.bias)
    theirs = load_caffe(args.caffe) if args.caffe else ours
    data = build_dataset(DataConfig(image_size=args.size, test_length=args.images), "test")
    images = torch.stack([data[i]["target"] for i in range(args.images)])
    with torch.no_grad():
        a = ours(images)
        b = theirs.features_of(caffe_input(images))
    weights = "files" if args.caffe and args.torchvision else "random He-normal, shared"
    for name, x, y in zip(FEATURE_NAMES, a, b, strict=True):
        ratio = float(y.abs().mean() / x.abs().mean())
        row = {
            "layer": name,
            "ours_mean_abs": float(x.abs().mean()),
            "release_mean_abs": float(y.abs().mean()),
            "ratio": ratio,
            "weights": weights,
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
