"""Train DynaST: `dynast-train [--preset NAME] [--group.field VALUE ...]`.

With no arguments: the `synthetic-64` preset on the built-in synthetic data, into
runs/synthetic-64. Re-running the same command resumes from the newest complete checkpoint.
Also runs as `python train/main.py`, `python -m train.main`,
`torchrun --nproc_per_node N train/main.py` and `accelerate launch [--quiet] train/main.py`
(Accelerate's launcher reports every failure as exit status 1, after a CalledProcessError
traceback unless `--quiet`; see docs/training.md).

Run by its path, this file imports the installed `dynast` and `train` packages (`pip install -e
.`); without an install, run it from the repository root as `python -m train.main` (also
`accelerate launch -m train.main`, `torchrun -m train.main`) or with `PYTHONPATH=.`.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dynast.config import DEFAULT_PRESET
from dynast.discriminator import check_image_size
from dynast.overrides import apply_overrides, field_names, refuse_repeats
from train.config import PRESET_NAMES, RunConfig, run_preset
from train.precision import LAUNCHER_VARIABLE, PrecisionChoice, choose_precision, cpu_bf16

# Named flags and the field each one sets.
NAMED_FLAGS = {
    "max_steps": "train.max_steps",
    "output_dir": "train.output_dir",
    "vgg_weights": "train.vgg_weights",
    "mixed_precision": "train.mixed_precision",
}
# What --no-vgg sets: both VGG terms off.
NO_VGG = (("train.loss.vgg", "0"), ("train.loss.vgg_mse", "0"))


def build_parser() -> argparse.ArgumentParser:
    fields = "\n".join(f"  --{name}" for name in field_names(run_preset(DEFAULT_PRESET)))
    parser = argparse.ArgumentParser(
        prog="train/main.py",
        description="Train DynaST (generator + discriminator) with Accelerate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Any config field can be set with --group.field VALUE (or --group.field=VALUE); "
        "'none' clears an optional field. Fields:\n" + fields,
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESET_NAMES)
    parser.add_argument(
        "--max-steps",
        type=str,
        help="= --train.max_steps (replaces an epoch-based preset's max_epochs)",
    )
    parser.add_argument("--output-dir", type=str, help="run folder (= --train.output_dir)")
    parser.add_argument(
        "--vgg-weights", type=str, help="VGG19 weights file (= --train.vgg_weights)"
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        help="= --train.mixed_precision; wins over the preset and over accelerate launch's "
        "--mixed_precision (docs/training.md, 'Mixed precision')",
    )
    parser.add_argument(
        "--no-vgg",
        action="store_true",
        help="train without the VGG19 losses (= --train.loss.vgg 0 --train.loss.vgg_mse 0); "
        "the paper's datasets need VGG19 weights otherwise",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config as JSON and exit"
    )
    return parser


def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """`--group.field VALUE` / `--group.field=VALUE` tokens -> [(dotted, value)]."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise ValueError(
                f"unknown argument {token!r}: config fields are set with --group.field VALUE "
                "(groups: model, data, train); see --help"
            )
        name, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ValueError(f"--{name}: missing value")
            value = tokens[i + 1]
            i += 1
        pairs.append((name, value))
        i += 1
    return pairs


@dataclass(frozen=True, kw_only=True)
class ResolvedRun:
    """A command line resolved: the run's config (with the precision it will use), whether it is
    a dry run, and the precision line the run prints."""

    config: RunConfig
    dry_run: bool
    precision: PrecisionChoice


def resolve_run(argv: Sequence[str] | None = None) -> ResolvedRun:
    """The command line resolved; ValueError for any bad name or value."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    pairs = parse_overrides(rest)
    settings = [(f"--{dotted}", dotted) for dotted, _ in pairs]
    for flag, dotted in NAMED_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            pairs.append((dotted, value))
            settings.insert(0, (f"--{flag.replace('_', '-')}", dotted))
    refuse_repeats(settings)
    named = {dotted for dotted, _ in pairs}
    if args.no_vgg:
        clash = sorted(named & {dotted for dotted, _ in NO_VGG})
        if clash:
            raise ValueError(f"--no-vgg sets {' and '.join(clash)} to 0: give one or the other")
        pairs += list(NO_VGG)
    preset = run_preset(args.preset)
    if preset.train.max_epochs and "train.max_steps" in named and "train.max_epochs" not in named:
        # A step count on the command line is the run length asked for: without this, an
        # epoch-based preset would ignore it silently.
        pairs += [("train.max_epochs", "0"), ("train.decay_epochs", "0")]
    cfg = apply_overrides(preset, pairs)
    # Training needs the discriminator to fit the images: refused here, so --dry-run says so too.
    check_image_size(cfg.model)
    precision = choose_precision(
        cfg.train.mixed_precision,
        preset=None if "train.mixed_precision" in named else args.preset,
        launcher=os.environ.get(LAUNCHER_VARIABLE),
        cuda=torch.cuda.is_available(),
        cpu=cpu_bf16(),
    )
    # The config records the precision the run uses (the run folder's config.json too).
    train_cfg = dataclasses.replace(cfg.train, mixed_precision=precision.precision)
    return ResolvedRun(
        config=dataclasses.replace(cfg, train=train_cfg), dry_run=args.dry_run, precision=precision
    )


def resolve_config(argv: Sequence[str] | None = None) -> tuple[RunConfig, bool]:
    """(resolved config, dry run?) from the command line; ValueError for any bad name or value."""
    run = resolve_run(argv)
    return run.config, run.dry_run


# Set by `accelerate launch` (its single-process launcher) and by torchrun (also behind
# `accelerate launch --multi_gpu`) in the environment of the processes they start.
LAUNCHER_VARIABLES = ("ACCELERATE_USE_CPU", "TORCHELASTIC_RUN_ID")
_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> bool:
    """Under a launcher, ask Linux to send us SIGTERM when the launcher dies: a launcher killed
    with SIGKILL cannot stop its children, and a trainer left running would keep writing the run
    folder (and holding its lock) with nobody watching. Not done for a plain `python
    train/main.py`, whose parent is a shell: `nohup python train/main.py &` must outlive it.
    Returns whether it was set."""
    if not sys.platform.startswith("linux") or not any(
        name in os.environ for name in LAUNCHER_VARIABLES
    ):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    die_with_launcher()
    try:
        run = resolve_run(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run.dry_run:
        print(run.precision.line, file=sys.stderr)
        print(json.dumps(run.config.to_dict(), indent=2))
        return 0
    # Imported here so that --dry-run and argument errors stay quick.
    from train.errors import TrainingError
    from train.loop import train
    from train.threads import configure_threads

    configure_threads()
    try:
        train(run.config, precision=run.precision)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
