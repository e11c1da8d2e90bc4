"""Release checkpoint conversion (`dynast.convert`), without the authors' files.

A release-layout state dict is built from `fixtures/release_deepfashion256_keys.json` (the keys
and shapes the release's modules register, with provenance) filled with random values; the tests
convert it through the CLI and check that every key is accounted for, that tensors land where the
table says, that the converted model loads and runs, and that bad files give one clear error."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from dynast.blocks import conv2d
from dynast.config import preset
from dynast.convert import (
    DISCRIMINATOR_FILE,
    DISCRIMINATOR_WEIGHTS,
    DROP,
    DROP_IF_EQUAL,
    GENERATOR_FILE,
    ReleaseMismatchError,
    convert_generator,
    discriminator_rules,
    generator_rules,
    load_release_state,
    main,
)
from dynast.discriminator import MultiscaleDiscriminator
from dynast.generator import Generator
from dynast.io import load_generator, verify_pretrained
from dynast.manifest import read_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "release_deepfashion256_keys.json"
PRESET = "deepfashion-256"
RELEASE_GENERATOR_PARAMETERS = 92_459_470
# docs/model.md: the release's count less its never-called embed_1 (244,737), since the preset's
# finest fusion block is embed_q1 itself (tie_finest_fusion).
OURS_GENERATOR_PARAMETERS = 92_214_733


@pytest.fixture(scope="module")
def layout() -> dict:
    return json.loads(FIXTURE.read_text())


def _release_state(items: list, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors in the release layout; the duplicated PReLU slot repeats its twin, as a
    shared module does in a real state dict."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in items:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(0, 1000, (), generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    for key in state:
        if key.endswith("model.2.weight"):
            state[key] = state[key.replace("model.2.weight", "relu.weight")].clone()
    return state


@pytest.fixture(scope="module")
def release_state(layout) -> dict[str, torch.Tensor]:
    return _release_state(layout["generator"], 0)


@pytest.fixture(scope="module")
def release_files(tmp_path_factory, layout, release_state) -> Path:
    folder = tmp_path_factory.mktemp("release") / "checkpoints" / "deepfashion"
    folder.mkdir(parents=True)
    torch.save(release_state, folder / GENERATOR_FILE)
    torch.save(_release_state(layout["discriminator"], 1), folder / DISCRIMINATOR_FILE)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, release_files) -> Path:
    out = tmp_path_factory.mktemp("converted")
    args = ["release", "--generator", str(release_files / GENERATOR_FILE)]
    args += ["--discriminator", str(release_files / DISCRIMINATOR_FILE)]
    assert main([*args, "--preset", PRESET, "--out", str(out)]) == 0
    return out


def test_fixture_has_provenance_and_the_released_sizes(layout):
    prov = layout["provenance"]
    assert prov["repo"] == "Huage001/DynaST" and len(prov["commit"]) == 40
    assert "models/networks/generator.py" in prov["files"]
    learned = {
        key: math.prod(shape)
        for key, shape in layout["generator"]
        if not key.endswith(("_u", "_v", "running_mean", "running_var", "num_batches_tracked"))
    }
    duplicates = [key for key, _ in layout["generator"] if key.endswith("model.2.weight")]
    # The release counts each shared PReLU once; the state dict lists it twice.
    assert sum(learned.values()) - len(duplicates) == RELEASE_GENERATOR_PARAMETERS
    embed_1 = sum(n for key, n in learned.items() if key.startswith("embed_1."))
    assert RELEASE_GENERATOR_PARAMETERS - embed_1 == OURS_GENERATOR_PARAMETERS
    assert sum(p.numel() for p in Generator(preset(PRESET)).parameters()) == (
        OURS_GENERATOR_PARAMETERS
    )
    # Untied, the finest fusion block is a module of its own, as large as embed_1.
    untied = dataclasses.replace(preset(PRESET), tie_finest_fusion=False)
    assert sum(p.numel() for p in Generator(untied).parameters()) == (RELEASE_GENERATOR_PARAMETERS)


def test_every_release_key_has_exactly_the_rules_the_layout_needs(layout):
    cfg = preset(PRESET)
    for name, rules in (
        ("generator", generator_rules(cfg)),
        ("discriminator", discriminator_rules(cfg)),
    ):
        keys = {key for key, _ in layout[name]}
        assert {r.source for r in rules} == keys, name
    dropped = [r.source for r in generator_rules(cfg) if r.action == DROP]
    assert dropped and all(k.startswith("embed_1.") for k in dropped)
    twins = [r for r in generator_rules(cfg) if r.action == DROP_IF_EQUAL]
    assert len(twins) == 16 and all(r.source.endswith("model.2.weight") for r in twins)
    d_dropped = {r.source for r in discriminator_rules(cfg) if r.action == DROP}
    assert all(".dec." in k or k.endswith(".bias") for k in d_dropped)


def test_converted_generator_holds_the_release_tensors_and_runs(converted, release_files):
    release = torch.load(release_files / GENERATOR_FILE, weights_only=True)
    ours = load_file(str(converted / "model.safetensors"))
    pairs = {
        "pos_embed": "pos_embed",
        "encoder_kv.layer3.0.weight_orig": (
            "encoder_kv.stages.2.conv.parametrizations.weight.original"
        ),
        "encoder_q.layer1.0.weight_u": "encoder_q.stages.0.conv.parametrizations.weight.0._u",
        "encoder_q.layer4.2.model.4.running_var": "encoder_q.stages.3.residual.norm_1.running_var",
        "embed_q4.norm_1.mlp_shared.0.weight": "embed_q.0.norm_1.shared.weight",
        "transformer_2.1.g_prune.bias": "transformer.2.1.to_k_prune.bias",
        "transformer_3.0.res_block.relu.weight": "transformer.1.0.residual.act.weight",
        "decoder_32.1.weight": "up_x.1.conv.weight",
        "pos_21.1.bias": "up_pos.2.conv.bias",
        "embed_2.conv_1.weight_v": "fuse.1.conv_1.parametrizations.weight.0._v",
        "embed_q1.conv_0.weight_orig": "embed_q.3.conv_0.parametrizations.weight.original",
        "decoder_10.0.weight": "to_rgb.weight",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(release[theirs], ours[mine]), (theirs, mine)
    # Tied: the finest fusion block is embed_q.3, no fuse.2 of its own.
    assert not any(key.startswith("fuse.2.") for key in ours)
    assert torch.equal(
        release["transformer_4.1.f.weight"][:, :, 0, 0], ours["transformer.0.1.to_q.weight"]
    )
    source = json.loads((converted / "converted_from.json").read_text())
    assert source["preset"] == PRESET and source["generator"].endswith(GENERATOR_FILE)

    generator = load_generator(converted, config=preset(PRESET))
    gen = torch.Generator().manual_seed(0)
    semantic = torch.rand(1, 20, 64, 64, generator=gen)
    exemplar = torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1
    with torch.no_grad():
        image = generator(semantic, exemplar, semantic.flip(-1)).image
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_converted_discriminator_is_saved_beside_and_runs(converted, release_files):
    path = converted / DISCRIMINATOR_WEIGHTS
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["config"])["name"] == PRESET
    release = torch.load(release_files / DISCRIMINATOR_FILE, weights_only=True)
    state = load_file(str(path))
    assert not any(".dec." in k for k in state)
    name = "scales.1.layers.2.0.parametrizations.weight.original"
    assert torch.equal(state[name], release["discriminator_1.model2.0.weight_orig"])
    assert torch.equal(state["scales.0.layers.4.0.bias"], release["discriminator_0.model4.0.bias"])
    disc = MultiscaleDiscriminator(preset(PRESET)).eval()
    disc.load_state_dict(state, strict=True)
    with torch.no_grad():
        logits = disc(torch.rand(1, 20, 64, 64), torch.rand(1, 3, 64, 64))[-1][-1]
    assert torch.isfinite(logits).all()


def test_release_folder_picks_both_files(tmp_path, release_files, capsys):
    out = tmp_path / "out"
    assert (
        main(["release", "--generator", str(release_files), "--preset", PRESET, "--out", str(out)])
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / DISCRIMINATOR_WEIGHTS).is_file()
    printed = capsys.readouterr().out
    assert "embed_q.3 itself (tie_finest_fusion)" in printed and "embed_q1" in printed
    # The folder is not empty: refused, unchanged, unless --force.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["release", "--generator", str(release_files / GENERATOR_FILE), "--preset", PRESET]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "--force" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # With --force the folder is replaced whole: the earlier discriminator goes with it.
    assert main([*args, "--out", str(out), "--force"]) == 0
    assert not (out / DISCRIMINATOR_WEIGHTS).exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging left beside
    verify_pretrained(out)  # its manifest lists every file the conversion wrote
    assert sorted(read_manifest(out)) == ["config.json", "converted_from.json", "model.safetensors"]


def test_untied_model_gets_a_copy_of_embed_q1_as_its_finest_fusion():
    # The names do not depend on the widths: a narrow copy of the preset builds in a blink.
    narrow = dataclasses.replace(preset(PRESET), ngf=4, pos_unit=2, prune_unit=2)
    untied = dataclasses.replace(narrow, tie_finest_fusion=False)
    for cfg, homes in ((untied, {"embed_q.3", "fuse.2"}), (narrow, {"embed_q.3"})):
        rules = generator_rules(cfg)
        source = "embed_q1.conv_0.weight_orig"
        assert {r.target.split(".conv_0")[0] for r in rules if r.source == source} == homes
        model = Generator(cfg)
        finest = model.fuse[2] if "fuse.2" in homes else model.embed_q[3]
        assert model.fusion_block(3) is finest


def test_old_spectral_norm_state_gives_the_same_conv_in_eval():
    """The one place where the mapping changes the mechanism, not only the name: the release's
    hook-based spectral norm and our parametrization must compute the same weight from the same
    `weight_orig`, `u`, `v`."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nn.utils.spectral_norm(nn.Conv2d(6, 5, 3, padding=1, padding_mode="reflect"))
    theirs.train()
    x = torch.randn(2, 6, 8, 8)
    for _ in range(3):  # move u, v away from their initial values, as training does
        theirs(x)
    theirs.eval()
    ours = conv2d(6, 5, 3, gain=0.02, spectral=True).eval()
    p = "parametrizations.weight"
    ours.load_state_dict(
        {
            "bias": theirs.bias,
            f"{p}.original": theirs.weight_orig,
            f"{p}.0._u": theirs.weight_u,
            f"{p}.0._v": theirs.weight_v,
        }
    )
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_one_error_lists_every_problem(release_state, tmp_path, capsys):
    state = dict(release_state)
    del state["transformer_1.1.h.bias"]
    state["transformer_4.2.f.weight"] = torch.zeros(3)
    state["decoder_q32.1.weight"] = torch.zeros(128, 256, 1, 1)
    state["transformer_2.0.f.weight"] = torch.zeros(160, 160, 3, 3)
    state["encoder_kv.layer2.2.model.2.weight"] = torch.tensor([9.0])
    with pytest.raises(ReleaseMismatchError) as err:
        convert_generator(state, preset(PRESET), "test")
    message = str(err.value)
    for part in (
        "transformer_1.1.h.bias",
        "transformer_4.2.f.weight",
        "decoder_q32.1.weight",
        "transformer_2.0.f.weight",
        "encoder_kv.layer2.2.model.2.weight != encoder_kv.layer2.2.relu.weight",
        "1 missing",
        "1 unmapped",
        "2 mis-shaped",
    ):
        assert part in message
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    out = tmp_path / "out"
    assert main(["release", "--generator", str(path), "--preset", PRESET, "--out", str(out)]) == 2
    assert "transformer_1.1.h.bias" in capsys.readouterr().err
    assert not out.exists()


def test_another_architecture_is_refused(release_state):
    state = release_state
    with pytest.raises(ReleaseMismatchError, match="mis-shaped"):
        convert_generator(state, preset("ade20k-256"), "test")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_carrying_code_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    path = tmp_path / GENERATOR_FILE
    torch.save({"pos_embed": torch.zeros(1), "evil": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_release_state(path, "--generator")
    assert (
        main(
            ["release", "--generator", str(path), "--preset", PRESET, "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "weights_only" in capsys.readouterr().err
    assert not marker.exists()


def test_missing_files_and_folders_name_the_argument(tmp_path, capsys):
    args = ["--preset", PRESET, "--out", str(tmp_path / "o")]
    assert main(["release", "--generator", str(tmp_path / "nope.pth"), *args]) == 2
    assert "--generator" in capsys.readouterr().err
    assert main(["release", "--generator", str(tmp_path), *args]) == 2
    assert GENERATOR_FILE in capsys.readouterr().err


def test_never_into_a_run_folder_and_bad_files_are_one_error_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}, "data": {}, "train": {}}))
    good = tmp_path / GENERATOR_FILE
    torch.save({"pos_embed": torch.zeros(2)}, good)
    args = ["release", "--preset", PRESET]
    assert main([*args, "--generator", str(good), "--out", str(run), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training run folder" in err[0], err
    assert json.loads((run / "config.json").read_text()) == {"model": {}, "data": {}, "train": {}}
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    truncated = tmp_path / "truncated.pth"
    torch.save({"pos_embed": torch.zeros(100_000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    for path in (text, truncated):
        assert main([*args, "--generator", str(path), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dynast-convert: error: --generator"), err
        assert str(path) in err[0]
    assert not (tmp_path / "o").exists()
