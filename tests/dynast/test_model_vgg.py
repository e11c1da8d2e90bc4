"""VGG19 features: torchvision's key layout loads strictly, the five ReLU outputs are the right
ones, weights are found through TORCH_HOME, and a missing file says where it should be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _assert import assert_close

from dynast.vgg import (
    CAFFE_BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG19_WEIGHTS_FILE,
    VGG19Features,
    caffe_input,
    resolve_vgg_weights,
)

# torchvision's vgg19 conv layers: (index in `features`, in channels, out channels).
TORCHVISION_CONVS = [
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256), (16, 256, 256),
    (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
    (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512),
]  # fmt: skip


def _torchvision_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision's vgg19 keys. The features have their real shapes;
    the classifier (dropped on load) gets small tensors under its real keys, since its real
    25088x4096 matrix alone would be a 400 MB test file."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, cin, cout in TORCHVISION_CONVS:
        std = (2.0 / (cin * 9)) ** 0.5
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * std
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    for index in (0, 3, 6):
        state[f"classifier.{index}.weight"] = torch.randn(4, 4, generator=gen)
        state[f"classifier.{index}.bias"] = torch.randn(4, generator=gen)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _torchvision_state_dict(seed=0)
    path = tmp_path_factory.mktemp("vgg") / VGG19_WEIGHTS_FILE
    torch.save(state, path)
    return path, state


def test_torchvision_layout_loads_strictly(weights_file):
    path, state = weights_file
    vgg = VGG19Features.from_file(path)
    loaded = vgg.state_dict()
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    assert set(loaded) == set(features)
    for key, value in features.items():
        assert torch.equal(loaded[key], value), key
    assert all(not p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training, "a frozen feature extractor stays in eval mode"


def test_features_are_the_five_relus(weights_file):
    path, state = weights_file
    vgg = VGG19Features.from_file(path)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 40, 56) * 2 - 1
    feats = vgg(image)
    shapes = [(64, 40, 56), (128, 20, 28), (256, 10, 14), (512, 5, 7), (512, 2, 3)]
    assert [tuple(f.shape) for f in feats] == [(2, *s) for s in shapes]

    # relu1_2 and relu2_2 by hand from the raw state dict, ImageNet normalisation included.
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def conv_relu(x, index):
        w, b = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
        return F.relu(F.conv2d(x, w, b, padding=1))

    x = ((image + 1) / 2 - mean) / std
    relu1_2 = conv_relu(conv_relu(x, 0), 2)
    relu2_2 = conv_relu(conv_relu(F.max_pool2d(relu1_2, 2), 5), 7)
    assert_close(feats[0], relu1_2, name="relu1_2")
    assert_close(feats[1], relu2_2, name="relu2_2")


def test_gradients_reach_the_image_only(weights_file):
    vgg = VGG19Features.from_file(weights_file[0])
    image = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    sum(f.mean() for f in vgg(image)).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_found_through_torch_home(weights_file, tmp_path, monkeypatch):
    path, _ = weights_file
    target = tmp_path / "hub" / "checkpoints" / VGG19_WEIGHTS_FILE
    target.parent.mkdir(parents=True)
    target.symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert resolve_vgg_weights(None) == target
    assert isinstance(VGG19Features.from_file(None), VGG19Features)


def test_missing_file_says_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / VGG19_WEIGHTS_FILE
    with pytest.raises(FileNotFoundError, match="no VGG19 weights given") as err:
        resolve_vgg_weights(None)
    assert str(expected) in str(err.value)
    with pytest.raises(FileNotFoundError, match="given explicitly"):
        resolve_vgg_weights(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match=VGG19_WEIGHTS_FILE):
        VGG19Features.from_file(None)


def test_wrong_layout_lists_the_keys(tmp_path):
    state = _torchvision_state_dict(seed=1)
    del state["features.7.bias"]
    state["features.99.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['features.7.bias'\]") as err:
        VGG19Features.from_file(path)
    assert "features.99.weight" in str(err.value)

    state = _torchvision_state_dict(seed=2)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"features.0.weight: \(64, 1, 3, 3\)"):
        VGG19Features.from_file(path)

    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="must hold a state dict"):
        VGG19Features.from_file(path)


def test_caffe_input_is_the_release_preprocessing():
    """BGR order, BGR mean, x255: a pure-red image in [-1, 1] gives B and G at -mean*255 and R at
    (1 - mean)*255; against torchvision normalisation the spread is about 57 times larger."""
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    out = caffe_input(red)[0, :, 0, 0]
    b, g, r = CAFFE_BGR_MEAN
    expected = torch.tensor([-b * 255, -g * 255, (1 - r) * 255])
    assert torch.allclose(out, expected, atol=1e-4)
    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    ours = ((image + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    ratio = caffe_input(image).std() / ours.std()
    assert 50 < float(ratio) < 65
