"""Convert the authors' released checkpoints (Huage001/DynaST, `util.save_network` pickles
`latest_net_G.pth` / `latest_net_D.pth`) into dynast weights.

    python -m dynast.convert release --generator latest_net_G.pth \\
        [--discriminator latest_net_D.pth] --preset deepfashion-256 --out DIR [--force]

writes a `save_pretrained` folder (read by `dynast.io.load_generator` and
`python -m eval.generate --model DIR`) and, with a discriminator, `discriminator.safetensors`
beside it, then a manifest of all its files. `--out` must be new or empty (`--force` replaces a
folder whole; a training run folder is refused even then): the folder is written beside it and
swapped in when complete. `--generator` may also name a release checkpoint folder
(`checkpoints/<name>/`): its `latest_net_G.pth` is read, and its `latest_net_D.pth` too unless
`--discriminator` says otherwise.

The mapping is one explicit table (`generator_rules`, `discriminator_rules`), built from the
preset: every release key has a rule, a rule either copies the tensor to one of our keys (reshaped
where the layer type differs) or drops it with a reason. Anything the table does not cover, any
key it expects but the file lacks, and any tensor of the wrong shape are reported together in one
`ReleaseMismatchError`. Files are read with `torch.load(weights_only=True)`, so a pickle that
carries code is refused instead of run.

Release names -> ours (the release numbers its four scales 4 = coarsest ... 1 = finest; our
index `s` runs 0 = coarsest ... 3 = finest, so release level = 4 - s):

- `encoder_{q,kv}.layer{i+1}.0` (spectral conv), `.2` (residual) ->
  `encoder_{q,kv}.stages.{i}.conv`, `.residual`;
- `embed_q{l}`, `embed_kv{l}` -> `embed_q.{s}`, `embed_kv.{s}`;
- `transformer_{l}.{j}.{f,g,h,f_prune,g_prune}` (1x1 convs) ->
  `transformer.{s}.{j}.{to_q,to_k,to_v,to_q_prune,to_k_prune}` (Linear: the 1x1 kernel dropped);
  `.spade` -> `.spade`, `.res_block` -> `.residual`;
- `decoder_{l+1}{l}.1`, `decoder_q{l+1}{l}.1`, `decoder_kv{l+1}{l}.1`, `pos_{l+1}{l}.1` ->
  `up_x.{s-1}.conv`, `up_q...`, `up_kv...`, `up_pos...`;
- `embed_3`, `embed_2` -> `fuse.0`, `fuse.1`; `embed_q1` -> `embed_q.3`, which the released
  presets (`tie_finest_fusion`) also run as their finest fusion block, as the release's forward
  runs `embed_q1` there; a model without the tie gets a copy in `fuse.2`; `embed_1` (never
  called) dropped;
- `decoder_10.0` -> `to_rgb`;
- SPADE `mlp_shared.0`, `mlp_gamma`, `mlp_beta` -> `shared`, `gamma`, `beta`;
- ResidualBlock `model.{0,1,3,4}`, `relu` -> `conv_0`, `norm_0`, `conv_1`, `norm_1`, `act`;
  `model.2.weight` is the same PReLU listed again: checked equal to `relu.weight`, dropped;
- SPADEResnetBlock `relu` -> `act`;
- old spectral norm `weight_orig`, `weight_u`, `weight_v` -> `parametrizations.weight.original`,
  `parametrizations.weight.0._u`, `parametrizations.weight.0._v` (`dynast.spectral_norm`, which
  iterates in the hook-based order of the release);
- `discriminator_{i}.model{n}.0` -> `scales.{i}.layers.{n}.0`; the biases of the instance-normed
  convs (the norm removes them) and the never-called `dec` branch are dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from kernels.files import write_atomically

from .config import PRESETS, DynaSTConfig, preset
from .discriminator import MultiscaleDiscriminator
from .generator import Generator
from .io import CONFIG_FILE, WEIGHTS_FILE, load_state_strict, load_torch_file, save_pretrained
from .manifest import write_manifest
from .output_folder import check_output_folder, write_folder

GENERATOR_FILE = "latest_net_G.pth"
DISCRIMINATOR_FILE = "latest_net_D.pth"
DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
DISCRIMINATOR_FORMAT = "dynast-discriminator"
RELEASE_SCALES = 4  # the release's generator is written out for exactly four scales
SOURCE_FILE = "converted_from.json"

COPY = "copy"
CONV1X1_TO_LINEAR = "conv1x1->linear"
DROP = "drop"
DROP_IF_EQUAL = "drop-if-equal"


class ReleaseMismatchError(ValueError):
    """A release state dict that the mapping table does not fit."""


@dataclass(frozen=True)
class Rule:
    """What happens to one release key: `copy` / `conv1x1->linear` to `target`, `drop` (with
    `reason`), or `drop-if-equal` (dropped after checking it equals the release key `equal_to`)."""

    source: str
    action: str
    target: str | None = None
    reason: str = ""
    equal_to: str | None = None


# ----------------------------------------------------------------------------- the table


def _conv(src: str, dst: str) -> list[Rule]:
    return [Rule(f"{src}.{p}", COPY, f"{dst}.{p}") for p in ("weight", "bias")]


def _conv1x1(src: str, dst: str) -> list[Rule]:
    return [
        Rule(f"{src}.weight", CONV1X1_TO_LINEAR, f"{dst}.weight"),
        Rule(f"{src}.bias", COPY, f"{dst}.bias"),
    ]


def _spectral_conv(src: str, dst: str, *, bias: str = "copy") -> list[Rule]:
    """The release's hook-based spectral norm -> `dynast.spectral_norm` (same state, other keys)."""
    p = f"{dst}.parametrizations.weight"
    rules = [
        Rule(f"{src}.weight_orig", COPY, f"{p}.original"),
        Rule(f"{src}.weight_u", COPY, f"{p}.0._u"),
        Rule(f"{src}.weight_v", COPY, f"{p}.0._v"),
    ]
    if bias == "copy":
        rules.append(Rule(f"{src}.bias", COPY, f"{dst}.bias"))
    else:
        rules.append(Rule(f"{src}.bias", DROP, reason=bias))
    return rules


def _batch_norm(src: str, dst: str) -> list[Rule]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return [Rule(f"{src}.{n}", COPY, f"{dst}.{n}") for n in names]


def _spade(src: str, dst: str) -> list[Rule]:
    return [
        *_conv(f"{src}.mlp_shared.0", f"{dst}.shared"),
        *_conv(f"{src}.mlp_gamma", f"{dst}.gamma"),
        *_conv(f"{src}.mlp_beta", f"{dst}.beta"),
    ]


def _residual(src: str, dst: str) -> list[Rule]:
    return [
        Rule(f"{src}.relu.weight", COPY, f"{dst}.act.weight"),
        *_conv(f"{src}.model.0", f"{dst}.conv_0"),
        *_batch_norm(f"{src}.model.1", f"{dst}.norm_0"),
        Rule(
            f"{src}.model.2.weight",
            DROP_IF_EQUAL,
            reason="the same PReLU as relu, listed twice",
            equal_to=f"{src}.relu.weight",
        ),
        *_conv(f"{src}.model.3", f"{dst}.conv_1"),
        *_batch_norm(f"{src}.model.4", f"{dst}.norm_1"),
    ]


def _spade_res(src: str, dst: str) -> list[Rule]:
    return [
        *_spectral_conv(f"{src}.conv_0", f"{dst}.conv_0"),
        *_spectral_conv(f"{src}.conv_1", f"{dst}.conv_1"),
        *_spade(f"{src}.norm_0", f"{dst}.norm_0"),
        *_spade(f"{src}.norm_1", f"{dst}.norm_1"),
        Rule(f"{src}.relu.weight", COPY, f"{dst}.act.weight"),
    ]


def _dropped(rules: list[Rule], reason: str) -> list[Rule]:
    return [Rule(r.source, DROP, reason=reason) for r in rules]


def _check_expressible(cfg: DynaSTConfig) -> None:
    if cfg.num_scales != RELEASE_SCALES:
        raise ValueError(
            f"--preset {cfg.name!r} has num_scales={cfg.num_scales}; the release's generator "
            f"has exactly {RELEASE_SCALES}"
        )


def generator_rules(cfg: DynaSTConfig) -> list[Rule]:
    """Every key of a release `DynaSTGenerator` built for `cfg`, and where it goes."""
    _check_expressible(cfg)
    rules = [Rule("pos_embed", COPY, "pos_embed")]
    for side in ("q", "kv"):
        for i in range(cfg.num_scales):
            src, dst = f"encoder_{side}.layer{i + 1}", f"encoder_{side}.stages.{i}"
            rules += _spectral_conv(f"{src}.0", f"{dst}.conv")
            rules += _residual(f"{src}.2", f"{dst}.residual")
    projections = {"f": "to_q", "g": "to_k", "h": "to_v", "f_prune": "to_q_prune"}
    projections["g_prune"] = "to_k_prune"
    for s in range(cfg.num_scales):
        level = cfg.num_scales - s
        rules += _spade_res(f"embed_q{level}", f"embed_q.{s}")
        rules += _spade_res(f"embed_kv{level}", f"embed_kv.{s}")
        for j in range(cfg.blocks_per_scale):
            src, dst = f"transformer_{level}.{j}", f"transformer.{s}.{j}"
            for theirs, ours in projections.items():
                rules += _conv1x1(f"{src}.{theirs}", f"{dst}.{ours}")
            rules += _spade(f"{src}.spade", f"{dst}.spade")
            rules += _residual(f"{src}.res_block", f"{dst}.residual")
        if s > 0:
            pair = f"{level + 1}{level}"
            rules += _conv(f"decoder_{pair}.1", f"up_x.{s - 1}.conv")
            rules += _conv(f"decoder_q{pair}.1", f"up_q.{s - 1}.conv")
            rules += _conv(f"decoder_kv{pair}.1", f"up_kv.{s - 1}.conv")
            rules += _conv(f"pos_{pair}.1", f"up_pos.{s - 1}.conv")
            fusion = _spade_res(f"embed_{level}", f"fuse.{s - 1}")
            if level == 1:
                # The release's forward fuses the finest scale with embed_q1, not embed_1: tied,
                # that is embed_q.3 itself (mapped above); untied, fuse.2 gets a copy.
                rules += _dropped(fusion, "embed_1 is built but never called by the release")
                if not cfg.tie_finest_fusion:
                    rules += _spade_res("embed_q1", f"fuse.{s - 1}")
            else:
                rules += fusion
    rules += _conv("decoder_10.0", "to_rgb")
    return rules


def discriminator_rules(cfg: DynaSTConfig) -> list[Rule]:
    """Every key of a release `MultiscaleDiscriminator` built for `cfg`, and where it goes."""
    rules: list[Rule] = []
    layers = cfg.disc_layers
    for i in range(cfg.num_discriminators):
        src, dst = f"discriminator_{i}", f"scales.{i}.layers"
        for k in range(layers - 1):
            conv = _spectral_conv(f"{src}.dec.{4 * k + 1}", "unused")
            rules += _dropped(conv, "the dec branch is built but never called by the release")
        last_dec = _conv(f"{src}.dec.{4 * (layers - 1)}", "unused")
        rules += _dropped(last_dec, "the dec branch is built but never called by the release")
        rules += _conv(f"{src}.model0.0", f"{dst}.0.0")
        for n in range(1, layers):
            cancelled = "instance norm (no affine) removes a per-channel bias"
            rules += _spectral_conv(f"{src}.model{n}.0", f"{dst}.{n}.0", bias=cancelled)
        rules += _conv(f"{src}.model{layers}.0", f"{dst}.{layers}.0")
    return rules


# ----------------------------------------------------------------------------- applying it


def _target_shape(rule: Rule, shape: torch.Size) -> tuple[int, ...]:
    if rule.action == CONV1X1_TO_LINEAR:
        return tuple(shape[:2]) if len(shape) == 4 and tuple(shape[2:]) == (1, 1) else ()
    return tuple(shape)


def apply_rules(
    rules: list[Rule], state: dict[str, Tensor], expected: dict[str, Tensor], what: str
) -> dict[str, Tensor]:
    """Map `state` (release keys) onto `expected` (our state dict) with `rules`; returns our
    state dict. Every problem of the file - release keys with no rule, keys the rules need but
    `state` lacks, tensors whose shape does not fit ours, duplicated keys that differ - is
    collected into one ReleaseMismatchError. (Our keys that no rule fills would be a bug of the
    table itself: AssertionError.)"""
    sources = {r.source for r in rules}
    unmapped = sorted(set(state) - sources)
    missing = sorted(sources - set(state))
    wrong, unequal = [], []
    out: dict[str, Tensor] = {}
    for rule in rules:
        if rule.source not in state:
            continue
        value = state[rule.source]
        if rule.action == DROP:
            continue
        if rule.action == DROP_IF_EQUAL:
            other = state.get(rule.equal_to)
            if other is not None and not torch.equal(value, other):
                unequal.append(f"{rule.source} != {rule.equal_to}")
        else:
            ours = expected.get(rule.target)
            if ours is None:
                raise AssertionError(f"mapping table names {rule.target!r}, not in our model")
            if _target_shape(rule, value.shape) != tuple(ours.shape):
                wrong.append(
                    f"{rule.source}: {tuple(value.shape)} in the file, {rule.target} needs "
                    f"{tuple(ours.shape)}"
                    + (" as a [out, in, 1, 1] conv" if rule.action == CONV1X1_TO_LINEAR else "")
                )
                continue
            out[rule.target] = value.reshape(ours.shape)  # loading copies it
    unfilled = sorted(set(expected) - {r.target for r in rules if r.target})
    if unfilled:
        raise AssertionError(f"mapping table leaves our keys unfilled: {unfilled}")
    if unmapped or missing or wrong or unequal:
        parts = []
        for label, items in (
            ("unmapped keys (not in the release layout for this preset)", unmapped),
            ("missing keys", missing),
            ("mis-shaped keys", wrong),
            ("duplicated PReLU keys that differ", unequal),
        ):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items))
        raise ReleaseMismatchError(f"{what} does not fit the release layout: " + "; ".join(parts))
    return out


def load_release_state(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A release `.pth` state dict, read with `weights_only=True` (a pickle that would run code,
    a text file or a truncated file is refused with a ValueError naming the file)."""
    state = load_torch_file(path, what)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{what}: {str(path)!r} must hold a state dict (str -> tensor), "
            f"got {type(state).__name__}"
        )
    return state


def _load_into(
    factory: Callable[[], nn.Module], rules: list[Rule], state: dict[str, Tensor], what: str
) -> nn.Module:
    """Build the module `factory` makes on the meta device (shapes only: every tensor of it is
    about to be overwritten, so running the initialisers would be wasted), map `state` onto its
    state dict, then give it real storage and load the mapped tensors strictly."""
    with torch.device("meta"):
        module = factory()
    mapped = apply_rules(rules, state, module.state_dict(), what)
    module = module.to_empty(device="cpu")
    if isinstance(module, Generator):
        load_state_strict(module, mapped, what)
    else:
        module.load_state_dict(mapped, strict=True)
    return module.eval()


def convert_generator(state: dict[str, Tensor], cfg: DynaSTConfig, what: str) -> Generator:
    """A `Generator(cfg)` holding the release weights `state` (strictly loaded, eval mode)."""
    return _load_into(partial(Generator, cfg), generator_rules(cfg), state, what)


def convert_discriminator(
    state: dict[str, Tensor], cfg: DynaSTConfig, what: str
) -> MultiscaleDiscriminator:
    """A `MultiscaleDiscriminator(cfg)` holding the release weights `state` (eval mode)."""
    return _load_into(partial(MultiscaleDiscriminator, cfg), discriminator_rules(cfg), state, what)


def save_discriminator(discriminator: MultiscaleDiscriminator, directory: Path) -> Path:
    """`directory/discriminator.safetensors`, with the model config in its metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()}
    config_text = json.dumps(discriminator.config.to_dict(), sort_keys=True)
    metadata = {"format": DISCRIMINATOR_FORMAT, "config": config_text}
    path = directory / DISCRIMINATOR_WEIGHTS
    write_atomically(path, lambda p: save_file(state, str(p), metadata))
    return path


def _resolve(generator: str, discriminator: str | None) -> tuple[Path, Path | None]:
    g_path = Path(generator)
    d_path = Path(discriminator) if discriminator else None
    if g_path.is_dir():
        folder = g_path
        g_path = folder / GENERATOR_FILE
        if not g_path.is_file():
            raise FileNotFoundError(
                f"--generator: folder {str(folder)!r} has no {GENERATOR_FILE} (expected a release "
                "checkpoint folder checkpoints/<name>/ or the .pth file itself)"
            )
        if d_path is None and (folder / DISCRIMINATOR_FILE).is_file():
            d_path = folder / DISCRIMINATOR_FILE
    if d_path is not None and d_path.is_dir():
        if not (d_path / DISCRIMINATOR_FILE).is_file():
            raise FileNotFoundError(
                f"--discriminator: folder {str(d_path)!r} has no {DISCRIMINATOR_FILE}"
            )
        d_path = d_path / DISCRIMINATOR_FILE
    return g_path, d_path


def convert_release(
    generator: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset_name: str,
    discriminator: str | os.PathLike | None = None,
    say=print,
    force: bool = False,
) -> Path:
    """Convert release checkpoint files (or a release checkpoint folder) into the new folder
    `out`: a folder that is not empty is refused unless `force`, a training run folder always
    (`dynast.output_folder`); the output is written beside it and swapped in when complete."""
    cfg = preset(preset_name)
    out = check_output_folder(out, "--out", force=force, inputs=(generator, discriminator))
    g_path, d_path = _resolve(str(generator), str(discriminator) if discriminator else None)
    g_rules = generator_rules(cfg)
    net_g = convert_generator(
        load_release_state(g_path, "--generator"), cfg, f"--generator {str(g_path)!r}"
    )
    net_d = None
    if d_path is not None:
        net_d = convert_discriminator(
            load_release_state(d_path, "--discriminator"), cfg, f"--discriminator {str(d_path)!r}"
        )
    source = {
        "release": "Huage001/DynaST",
        "preset": cfg.name,
        "generator": str(g_path.resolve()),
        "discriminator": str(d_path.resolve()) if d_path else None,
    }

    def write(folder: Path) -> None:
        save_pretrained(net_g, folder)
        if net_d is not None:
            save_discriminator(net_d, folder)
        text = json.dumps(source, indent=2)
        write_atomically(folder / SOURCE_FILE, lambda p: p.write_text(text))
        write_manifest(folder)  # again, last: it vouches for the discriminator and source too

    write_folder(out, write)
    written = [str(out / name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    if net_d is not None:
        written.append(str(out / DISCRIMINATOR_WEIGHTS))

    copied = sum(r.action in (COPY, CONV1X1_TO_LINEAR) for r in g_rules)
    say(f"generator: {g_path} -> {out} ({cfg.name}; {copied} tensors mapped)")
    finest = cfg.num_scales - 1
    if cfg.tie_finest_fusion:
        where = f"is embed_q.{finest} itself (tie_finest_fusion), which holds embed_q1's weights"
    else:
        where = f"fuse.{finest - 1} receives a copy of embed_q1's weights"
    say(
        f"  note: our finest fusion block {where}, because the release's forward runs embed_q1 "
        "there; its embed_1 is never called and is dropped"
    )
    say(
        "  dropped: "
        f"{sum(r.action == DROP for r in g_rules)} embed_1 tensors, "
        f"{sum(r.action == DROP_IF_EQUAL for r in g_rules)} duplicated PReLU weights "
        "(checked equal)"
    )
    if net_d is not None:
        d_rules = discriminator_rules(cfg)
        dec = sum(".dec." in r.source for r in d_rules)
        bias = sum(r.action == DROP and ".dec." not in r.source for r in d_rules)
        say(
            f"discriminator: {d_path} -> {out / DISCRIMINATOR_WEIGHTS} (dropped {dec} tensors "
            f"of the unused dec branch, {bias} biases cancelled by instance norm)"
        )
    say("wrote " + ", ".join(written))
    return out


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynast-convert", description="Convert released checkpoints into dynast weights."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    release = sub.add_parser(
        "release",
        help="the authors' Huage001/DynaST checkpoints (latest_net_G.pth / latest_net_D.pth)",
    )
    release.add_argument(
        "--generator",
        required=True,
        help=f"{GENERATOR_FILE}, or a release checkpoint folder holding it",
    )
    release.add_argument("--discriminator", help=f"{DISCRIMINATOR_FILE} (or its folder); optional")
    release.add_argument("--preset", required=True, choices=sorted(PRESETS))
    release.add_argument("--out", required=True, help="new output folder (save_pretrained layout)")
    release.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty --out whole (never a training run folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        convert_release(
            args.generator,
            args.out,
            preset_name=args.preset,
            discriminator=args.discriminator,
            force=args.force,
        )
    except (ValueError, OSError) as err:
        print(f"dynast-convert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
