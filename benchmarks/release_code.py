"""The authors' released DynaST code (`../shared/release-dynast/`), imported for measurement.

The release is a yardstick, never a dependency: this module imports it from a folder given as an
argument, builds what its `train.py` builds (options, `Pix2PixTrainer` with the generator, the
discriminator, VGG19 and the losses), and leaves the interpreter as it found it. Its top-level
packages (`models`, `data`, `options`, `util`, `trainers`) and the `stubs/` it ships for
`torchvision` and `cv2` have generic names, so they are importable only inside `imported_release`:

    with imported_release(root) as release:
        opt = release.deepfashion_options(size=128, batch=2, vgg_path=path)
        trainer = release.trainer(opt)
    trainer.run_generator_one_step(data)      # the objects keep working afterwards

Used by `benchmarks/bench_release_step.py` (its training step, timed) and by the test that
compares dynast's training step with it term by term (tests/train/test_release_step.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from dynast.vgg import VGG19Features

ROOT = Path(__file__).resolve().parents[1]
# Beside the repository (`/work/shared` from `/work/main`; `/work/wt/shared` is a link to it).
DEFAULT_RELEASE_ROOT = ROOT.parent / "shared" / "release-dynast"
RELEASE_ROOT_ENV = "DYNAST_RELEASE_ROOT"
# Files whose absence means the folder is not the release.
_REQUIRED = (
    "models/pix2pix_model.py",
    "trainers/pix2pix_trainer.py",
    "options/train_options.py",
    "stubs",
)
# The release's DeepFashion training command (its README: train_deepfashion.sh), less the options
# a measurement sets itself (batch, size, width, amp, GPU, VGG file, checkpoint folder).
DEEPFASHION_TRAIN_ARGS = (
    "--name", "deepfashion", "--dataset_mode", "deepfashion", "--dataroot", "unused",
    "--niter", "80", "--niter_decay", "20", "--which_perceptual", "4_2",
    "--weight_perceptual", "0.001", "--vgg_normal_correct", "--no_flip", "--video_like",
    "--netG", "dynast", "--weight_warp_self", "1000.0", "--lr", "0.0001",
    "--n_layers", "2", "--init_type", "xavier",
)  # fmt: skip
DEEPFASHION_NGF = 64
# The release's VGG19 (`VGG19_feature_color_torchversion`) names its convolutions conv{b}_{i};
# torchvision's `features` indexes them. Index of each conv in `features`, in order.
_VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
_VGG_BLOCKS = ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4))  # (block, convolutions in it)
_VGG_CONV_NAMES = tuple(f"conv{b}_{i}" for b, n in _VGG_BLOCKS for i in range(1, n + 1))


def release_root(path: str | os.PathLike | None = None) -> Path:
    """The release folder: `path`, else `$DYNAST_RELEASE_ROOT`, else `../shared/release-dynast`
    beside the repository. FileNotFoundError naming the folder when it does not hold the release."""
    chosen = Path(path or os.environ.get(RELEASE_ROOT_ENV) or DEFAULT_RELEASE_ROOT).expanduser()
    missing = [name for name in _REQUIRED if not (chosen / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{chosen} does not hold the authors' released DynaST code (missing {missing}); "
            f"give its folder with --release-root or ${RELEASE_ROOT_ENV}"
        )
    return chosen.resolve()


def _top_level_names(root: Path) -> set[str]:
    """Module names the release (and its stubs) would occupy at the top level."""
    names = set()
    for folder in (root, root / "stubs"):
        for entry in folder.iterdir():
            if entry.is_dir() and (entry / "__init__.py").exists():
                names.add(entry.name)
            elif entry.suffix == ".py":
                names.add(entry.stem)
    return names


def _owned(name: str, tops: set[str]) -> bool:
    return name.split(".", 1)[0] in tops


@dataclass
class Release:
    """The release's modules, usable while `imported_release` holds them on `sys.path`."""

    root: Path
    train_options: ModuleType
    pix2pix_model: ModuleType
    pix2pix_trainer: ModuleType

    def deepfashion_options(
        self,
        *,
        size: int,
        batch: int,
        vgg_path: str | os.PathLike,
        amp: bool = False,
        gpu: int = -1,
        ngf: int = DEEPFASHION_NGF,
    ) -> argparse.Namespace:
        """`TrainOptions().parse()` as the release's DeepFashion training command gives it, at
        `size` px (load = crop) and `batch`, on GPU `gpu` (-1: the CPU), with its fp16 amp when
        `amp`; `ngf` other than its 64 narrows the generator (a cheaper model with the same
        structure, for tests). Its option printout is swallowed; the option files it writes go
        to a temporary folder that is removed again. Like the release's `train.py`, parsing seeds
        torch, numpy and random with 1234 and sets `torch.backends.cudnn.benchmark`."""
        argv = [
            "train.py",
            *DEEPFASHION_TRAIN_ARGS,
            "--ngf", str(ngf), "--batchSize", str(batch), "--load_size", str(size),
            "--crop_size", str(size), "--gpu_ids", str(gpu), "--vgg_path", str(vgg_path),
        ]  # fmt: skip
        if amp:
            argv.append("--amp")
        saved_argv = sys.argv
        with tempfile.TemporaryDirectory(prefix="release-options-") as folder:
            sys.argv = [*argv, "--checkpoints_dir", folder]
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    opt = self.train_options.TrainOptions().parse()
            finally:
                sys.argv = saved_argv
        opt.checkpoints_dir = None  # the folder is gone: nothing may be saved there
        return opt

    def trainer(self, opt: argparse.Namespace):
        """The release's `Pix2PixTrainer(opt)`: its model (generator, discriminator, VGG19,
        losses) and optimisers. Its network summaries are swallowed.

        Its `create_optimizers` passes `betas=(0, 0.9)`, an int and a float, which torch 2.13's
        Adam refuses ("betas must be either both floats or both Tensors"); while the trainer is
        built, `torch.optim.Adam` is an Adam that reads the betas as floats: the same optimiser
        the release ran on the torch of its day."""
        with contextlib.redirect_stdout(io.StringIO()), _adam_with_float_betas():
            return self.pix2pix_trainer.Pix2PixTrainer(opt)


class _FloatBetasAdam(torch.optim.Adam):
    def __init__(self, params, *args, betas=(0.9, 0.999), **kwargs) -> None:
        if not any(isinstance(b, Tensor) for b in betas):
            betas = tuple(float(b) for b in betas)
        super().__init__(params, *args, betas=betas, **kwargs)


@contextlib.contextmanager
def _adam_with_float_betas() -> Iterator[None]:
    adam = torch.optim.Adam
    torch.optim.Adam = _FloatBetasAdam
    try:
        yield
    finally:
        torch.optim.Adam = adam


@contextlib.contextmanager
def imported_release(root: str | os.PathLike | None = None) -> Iterator[Release]:
    """Import the release from `root` (see `release_root`) for the duration of the block.

    Its folder and `stubs/` go first on `sys.path`, and modules of the same top-level names that
    were loaded before are set aside. On exit `sys.path` is restored and `sys.modules` holds
    exactly the modules of those names it held before: objects built inside keep working (their
    modules stay alive through them), but `import models` no longer finds the release."""
    folder = release_root(root)
    tops = _top_level_names(folder)
    saved_path = list(sys.path)
    saved = {name: mod for name, mod in sys.modules.items() if _owned(name, tops)}
    for name in saved:
        del sys.modules[name]
    sys.path[:0] = [str(folder / "stubs"), str(folder)]
    try:
        import importlib

        release = Release(
            root=folder,
            train_options=importlib.import_module("options.train_options"),
            pix2pix_model=importlib.import_module("models.pix2pix_model"),
            pix2pix_trainer=importlib.import_module("trainers.pix2pix_trainer"),
        )
        yield release
    finally:
        sys.path[:] = saved_path
        for name in [n for n in sys.modules if _owned(n, tops)]:
            del sys.modules[name]
        sys.modules.update(saved)


def release_batch(
    size: int,
    self_ref: tuple[float, ...],
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """A batch in the layout the release's DeepFashion loader collates: `label` and `label_ref`
    with its 20 channels in [0, 1], `image` and `ref` in [-1, 1], one `self_ref` flag per pair
    (float64, as `default_collate` makes of its Python floats); random, from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    b = len(self_ref)

    def draw(channels: int, low: float) -> Tensor:
        x = torch.rand(b, channels, size, size, generator=gen, dtype=torch.float64)
        return (x * (1 - low) + low).to(dtype)

    return {
        "label": draw(20, 0.0),
        "image": draw(3, -1.0),
        "self_ref": torch.tensor(self_ref, dtype=torch.float64),
        "ref": draw(3, -1.0),
        "label_ref": draw(20, 0.0),
    }


def release_vgg_state(vgg: VGG19Features) -> dict[str, Tensor]:
    """`vgg`'s convolution weights under the release's VGG19 names (`conv1_1.weight`, ...), the
    layout its `--vgg_path` file must have."""
    state = {}
    for index, name in zip(_VGG_CONV_INDICES, _VGG_CONV_NAMES, strict=True):
        conv = vgg.features[index]
        state[f"{name}.weight"] = conv.weight.detach().clone()
        state[f"{name}.bias"] = conv.bias.detach().clone()
    return state


def random_vgg(seed: int = 0) -> VGG19Features:
    """A VGG19 with He-normal weights and small random biases: the activations keep their scale
    through the stack (PyTorch's default init shrinks them about 2.4x per layer), so every loss
    layer carries signal. Timing does not depend on the values, and no machine here holds the
    ImageNet file."""
    gen = torch.Generator().manual_seed(seed)
    vgg = VGG19Features()
    with torch.no_grad():
        for index in _VGG_CONV_INDICES:
            conv = vgg.features[index]
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.01)
    return vgg


def write_release_vgg(vgg: VGG19Features, path: str | os.PathLike) -> Path:
    """Save `vgg` in the release's layout to `path` (a file its `--vgg_path` loads)."""
    path = Path(path)
    torch.save(release_vgg_state(vgg), path)
    return path
