"""Weights I/O: bit-exact round trip, strict loading errors, another preset's checkpoint, mixed
folders, and `load_generator` on pretrained, checkpoint and run folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynast.config import DynaSTConfig, preset
from dynast.generator import Generator
from dynast.io import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    CheckpointMismatchError,
    from_pretrained,
    load_generator,
    load_state_strict,
    read_config,
    save_pretrained,
)
from dynast.manifest import MANIFEST_FILE

TINY = DynaSTConfig(name="tiny", image_size=32, ngf=4, num_scales=3, pos_unit=2, prune_unit=2)


def _inputs(cfg: DynaSTConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    return (
        torch.rand(batch, cfg.semantic_nc, s, s, generator=gen),
        torch.rand(batch, 3, s, s, generator=gen) * 2 - 1,
        torch.rand(batch, cfg.semantic_nc, s, s, generator=gen),
    )


@pytest.fixture()
def trained(tmp_path):
    """A tiny generator whose batch-norm statistics and spectral-norm vectors moved off their
    initial values (one training-mode forward), saved to a folder."""
    torch.manual_seed(0)
    g = Generator(TINY).train()
    with torch.no_grad():
        g(*_inputs(TINY))
    return g, save_pretrained(g, tmp_path / "pretrained")


def test_round_trip_is_bit_exact(trained):
    g, directory = trained
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE]
    loaded = from_pretrained(directory)
    assert loaded.config == TINY and not loaded.training
    expected = g.state_dict()
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    g.eval()
    with torch.no_grad():
        a, b = g(*_inputs(TINY, seed=1)), loaded(*_inputs(TINY, seed=1))
    assert torch.equal(a.image, b.image)
    assert all(torch.equal(x, y) for x, y in zip(a.topks, b.topks, strict=True))


def test_saving_again_replaces_the_files(trained):
    g, directory = trained
    with torch.no_grad():
        g.to_rgb.bias.add_(1.0)
    save_pretrained(g, directory)
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE]
    assert torch.equal(from_pretrained(directory).to_rgb.bias, g.to_rgb.bias)


def test_strict_load_lists_missing_and_unexpected_keys(trained):
    _, directory = trained
    state = load_file(str(directory / WEIGHTS_FILE))
    del state["to_rgb.bias"]
    del state["pos_embed"]
    state["decoder.extra.weight"] = torch.zeros(3)
    state["embed_q.0.conv_0.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_strict(Generator(TINY), state, "a test dict")
    message = str(err.value)
    assert "missing keys ['pos_embed', 'to_rgb.bias']" in message
    assert "unexpected keys ['decoder.extra.weight']" in message
    assert "embed_q.0.conv_0.bias: (5,) in checkpoint, (16,) in model" in message

    # The same through a folder whose weights file lost a key.
    metadata = {"format": FORMAT, "config": json.dumps(TINY.to_dict())}
    del state["decoder.extra.weight"], state["embed_q.0.conv_0.bias"]
    save_file(state, str(directory / WEIGHTS_FILE), metadata)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*'embed_q.0.conv_0.bias'"):
        from_pretrained(directory)


def test_another_presets_checkpoint_is_one_clear_error(trained):
    _, directory = trained
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(directory, config=preset("deepfashion-256"))
    message = str(err.value)
    assert "is a 'tiny' generator but a 'deepfashion-256' generator was asked for" in message
    assert "ngf: 4 vs 64" in message and "semantic_nc: 8 vs 20" in message
    with pytest.raises(CheckpointMismatchError, match="'deepfashion-256' generator was asked"):
        load_generator(directory, config=preset("deepfashion-256"))
    assert from_pretrained(directory, config=TINY).config == TINY


def test_weights_of_another_config_beside_this_config_json(trained, tmp_path):
    """A folder whose config.json and model.safetensors come from different saves."""
    _, directory = trained
    other = tmp_path / "other"
    save_pretrained(Generator(DynaSTConfig(**{**TINY.to_dict(), "ngf": 2})), other)
    (directory / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointMismatchError, match=r"come from different saves.*ngf: 4 vs 2"):
        from_pretrained(directory)


def test_bad_folders(tmp_path, trained):
    _, directory = trained
    with pytest.raises(FileNotFoundError, match="not a save_pretrained folder"):
        from_pretrained(tmp_path / "empty")
    (directory / CONFIG_FILE).write_text(json.dumps({**TINY.to_dict(), "depth": 3}))
    with pytest.raises(ValueError, match=r"does not hold a valid DynaSTConfig.*\['depth'\]"):
        read_config(directory)
    (directory / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_config(directory)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CONFIG_FILE).write_text(json.dumps(TINY.to_dict()))
    save_file({"x": torch.zeros(1)}, str(foreign / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"was not written by dynast\.io\.save_pretrained"):
        from_pretrained(foreign)
    with pytest.raises(ValueError, match="expects a Generator"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "linear")


def test_load_generator_finds_the_weights_of_runs_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "run"
    generators = {}
    for step in (100, 2000, 300):
        g = Generator(TINY)
        with torch.no_grad():
            g.to_rgb.bias.fill_(step)
        generators[step] = g
        save_pretrained(g, run / "checkpoints" / f"checkpoint_{step:08d}" / "generator")
    # A checkpoint still being written (no generator weights yet) is skipped.
    (run / "checkpoints" / "checkpoint_00009999").mkdir()

    def bias(path):
        return float(load_generator(path).to_rgb.bias[0].detach())

    assert bias(run) == 2000  # newest complete checkpoint, by step number
    assert bias(run / "checkpoints" / "checkpoint_00000300") == 300
    assert bias(run / "checkpoints" / "checkpoint_00000100" / "generator") == 100
    final = Generator(TINY)
    with torch.no_grad():
        final.to_rgb.bias.fill_(-1)
    save_pretrained(final, run / "final")
    assert bias(run) == -1  # final/ wins
    with pytest.raises(FileNotFoundError, match="no generator weights under"):
        load_generator(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_generator(tmp_path / "missing")


def flip_middle(path):
    """Invert 64 bytes in the middle of a safetensors file, its header left intact."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    assert middle > 8 + int.from_bytes(data[:8], "little"), "the middle is in the header"
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def test_a_damaged_pretrained_folder_is_refused_naming_the_file(trained):
    from dynast.io import DamagedWeightsError
    from dynast.manifest import read_manifest

    _, directory = trained
    assert sorted(read_manifest(directory)) == [CONFIG_FILE, WEIGHTS_FILE]
    weights = directory / WEIGHTS_FILE
    intact = weights.read_bytes()
    flip_middle(weights)
    with pytest.raises(DamagedWeightsError, match="SHA-256") as info:
        load_generator(directory)
    assert str(weights) in str(info.value) and len(str(info.value).splitlines()) == 1
    weights.write_bytes(intact)
    (directory / CONFIG_FILE).write_text((directory / CONFIG_FILE).read_text() + "\n")
    with pytest.raises(DamagedWeightsError, match=f"{directory / CONFIG_FILE}: .* bytes"):
        from_pretrained(directory)
