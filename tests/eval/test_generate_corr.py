"""`python -m eval.generate` and `python -m eval corr` on a tiny untrained generator saved with
save_pretrained: files written and their contents against direct calls of the API."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynast.config import preset
from dynast.data import DataConfig, build_dataset, correspondence_accuracy
from dynast.data.export import export_synthetic
from dynast.generator import Generator
from dynast.io import load_generator, save_pretrained
from dynast.manifest import write_manifest
from eval.generate import main as generate_main
from eval.visualize import candidate_counts, heat_pixels, to_pixels

REPO = Path(__file__).resolve().parents[2]
# synthetic-64-narrow shrunk: 32 px, three scales (8, 16, 32), narrower channels.
TINY = dataclasses.replace(
    preset("synthetic-64-narrow"),
    name="tiny-32",
    image_size=32,
    ngf=4,
    num_scales=3,
    max_multiplier=2,
)
BLOCK_SIZES = [(8, 8), (8, 8), (16, 16), (16, 16), (32, 32), (32, 32)]


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(Generator(TINY), tmp_path_factory.mktemp("tiny") / "model")


def pairs_batch(count: int, seed: int = 0) -> dict:
    dataset = build_dataset(DataConfig(num_classes=8, image_size=32, seed=seed), "test")
    return torch.utils.data.default_collate([dataset[i] for i in range(count)])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG", path
        return np.asarray(image.convert("RGB"))


def test_generate_writes_images_targets_and_visualisations(model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = run_module(
        "eval.generate", "--model", str(model_dir), "--out", str(out), "--count", "3",
        "--batch-size", "2", "--targets", "--visualize",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = [f"{i:06d}" for i in range(3)]
    assert sorted(p.stem for p in (out / "images").iterdir()) == names

    generator = load_generator(model_dir)
    batch = pairs_batch(3)
    with torch.no_grad():
        direct = generator(
            batch["semantic"], batch["exemplar"], batch["exemplar_semantic"],
            with_warps=True, with_sparsity=True,
        )  # fmt: skip
    assert direct.block_sizes == BLOCK_SIZES
    counts = candidate_counts(TINY, direct.block_sizes)
    assert counts == [64, 64, 16, 20, 16, 20]
    for b, name in enumerate(names):
        image = read_png(out / "images" / f"{name}.png").astype(int)
        assert image.shape == (32, 32, 3)
        # Batches of 2 in the CLI, of 3 here: allow one level of rounding difference.
        assert np.abs(image - to_pixels(direct.image[b]).astype(int)).max() <= 1
        assert np.array_equal(
            read_png(out / "targets" / f"{name}.png"), to_pixels(batch["target"][b])
        )
        for j, (h, w) in enumerate(BLOCK_SIZES):
            warp = read_png(out / "warps" / f"{name}_block{j}_{h}x{w}.png")
            assert warp.shape == (h, w, 3)
            assert np.abs(warp.astype(int) - to_pixels(direct.warps[j][b]).astype(int)).max() <= 1
            kept = read_png(out / "kept" / f"{name}_block{j}_{h}x{w}.png")
            assert np.array_equal(kept, heat_pixels(direct.kept[j][b], float(counts[j])))
            conf = read_png(out / "conf" / f"{name}_block{j}_{h}x{w}.png")
            assert conf.shape == (h, w, 3)
        panel = read_png(out / "panels" / f"{name}.png")
        assert panel.shape[0] > 4 * 32 and panel.shape[1] > 6 * 32  # 4 rows, 6 block columns

    record = json.loads((out / "generation.json").read_text())
    assert record["count"] == 3 and record["format"] == "png" and record["size"] == [32, 32]
    assert record["model_config"]["name"] == "tiny-32"
    assert record["data"]["kind"] == "synthetic" and record["data"]["split"] == "test"


def test_generate_jpeg_says_the_format_moves_fid(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "jpg"
    code = generate_main(
        ["--model", str(model_dir), "--out", str(out), "--count", "1", "--format", "jpg"]
    )
    assert code == 0
    assert "moves FID" in capsys.readouterr().err
    with Image.open(out / "images" / "000000.jpg") as image:
        assert image.format == "JPEG" and image.size == (32, 32)
    assert json.loads((out / "generation.json").read_text())["format"] == "jpg"


def test_generate_one_semantic_map_and_one_exemplar(model_dir, tmp_path) -> None:
    sample = build_dataset(DataConfig(num_classes=8, image_size=32), "test")[4]
    Image.fromarray(sample["label"].numpy().astype(np.uint8)).save(tmp_path / "layout.png")
    Image.fromarray(sample["exemplar_label"].numpy().astype(np.uint8)).save(tmp_path / "ex.png")
    Image.fromarray(to_pixels(sample["exemplar"])).save(tmp_path / "photo.png")
    out = tmp_path / "single"
    code = generate_main(
        ["--model", str(model_dir), "--out", str(out), "--semantic", str(tmp_path / "layout.png"),
         "--exemplar", str(tmp_path / "photo.png"), "--exemplar-semantic", str(tmp_path / "ex.png"),
         "--visualize"]
    )  # fmt: skip
    assert code == 0
    generator = load_generator(model_dir)
    with torch.no_grad():
        direct = generator(
            sample["semantic"][None], sample["exemplar"][None], sample["exemplar_semantic"][None]
        )
    image = read_png(out / "images" / "layout.png").astype(int)
    assert np.abs(image - to_pixels(direct.image[0]).astype(int)).max() <= 1
    assert (out / "panels" / "layout.png").is_file()


def test_generate_reads_the_data_config_of_a_run_folder(model_dir, tmp_path) -> None:
    run = tmp_path / "run"
    save_pretrained(load_generator(model_dir), run / "final")
    data = DataConfig(num_classes=8, image_size=32, seed=5, test_length=7)
    (run / "config.json").write_text(
        json.dumps({"model": TINY.to_dict(), "data": data.to_dict(), "train": {}})
    )
    out = tmp_path / "from_run"
    assert generate_main(["--model", str(run), "--out", str(out), "--first", "5"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000005.png", "000006.png"]
    record = json.loads((out / "generation.json").read_text())
    assert record["data"]["config"]["seed"] == 5


def test_generate_reads_a_folder_dataset(model_dir, tmp_path) -> None:
    root = export_synthetic(
        DataConfig(num_classes=8, image_size=32, train_length=1, test_length=2),
        tmp_path / "data",
        progress=False,
    )
    out = tmp_path / "from_folder"
    argv = ["--model", str(model_dir), "--data-root", str(root), "--out", str(out), "--targets"]
    assert generate_main(argv) == 0
    assert sorted(p.name for p in (out / "targets").iterdir()) == ["000000.png", "000001.png"]
    record = json.loads((out / "generation.json").read_text())
    assert record["data"]["kind"] == "folder" and record["count"] == 2


def test_generate_bad_input(model_dir, tmp_path, capsys) -> None:
    def error(argv: list[str], needle: str) -> None:
        capsys.readouterr()
        assert generate_main(argv) == 2
        assert needle in capsys.readouterr().err

    out = str(tmp_path / "x")
    error(["--model", str(tmp_path / "absent"), "--out", out], "is not a folder")
    error(["--model", str(tmp_path), "--out", out], "no generator weights")
    error(["--model", str(model_dir), "--out", out, "--semantic", "a.png"], "--exemplar")
    error(
        ["--model", str(model_dir), "--out", out, "--semantic", "a.png", "--exemplar", "b.png",
         "--exemplar-semantic", "c.png"],
        "does not exist",
    )  # fmt: skip
    error(["--model", str(model_dir), "--out", out, "--first", "100000"], "--first")


def test_corr_per_scale_matches_the_api(model_dir, tmp_path) -> None:
    results = tmp_path / "corr.jsonl"
    proc = run_module(
        "eval", "corr", "--model", str(model_dir), "--count", "3", "--batch-size", "2",
        "--results", str(results),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    record = json.loads(results.read_text())
    per_scale = record["metrics"]["correspondence"]["per_scale"]
    assert set(per_scale) == {"8x8", "16x16", "32x32"}
    assert all(0.0 <= v <= 1.0 for v in per_scale.values())
    assert record["count"] == 3 and record["model_config"]["name"] == "tiny-32"
    for scale in ("8x8", "16x16", "32x32"):
        assert scale in proc.stdout

    generator = load_generator(model_dir)
    batch = pairs_batch(3)
    with torch.no_grad():
        out = generator(batch["semantic"], batch["exemplar"], batch["exemplar_semantic"])
    for j in (1, 3, 5):  # the last block of each scale
        h, w = out.block_sizes[j]
        expected = correspondence_accuracy(
            out.topks[j][..., 0], batch["label"], batch["exemplar_label"], (h, w)
        ).mean()
        assert per_scale[f"{h}x{w}"] == pytest.approx(float(expected), abs=1e-6)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynast-generate: error: "), err
    return err[0]


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _flip_middle(path: Path) -> None:
    """Invert 64 bytes in the middle of a safetensors file, its header left intact."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    assert middle > 8 + int.from_bytes(data[:8], "little"), "the middle is in the header"
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def test_a_used_out_is_refused_and_force_replaces_it_whole(model_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["--model", str(model_dir), "--out", str(out)]
    assert generate_main([*args, "--count", "4"]) == 0
    before = _files(out)
    capsys.readouterr()
    assert generate_main([*args, "--count", "2", "--data-seed", "1"]) == 2
    error = _one_error(capsys)
    assert f"--out {out} is not empty" in error and "--force" in error
    assert _files(out) == before
    assert generate_main([*args, "--count", "2", "--data-seed", "1", "--force"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    record = json.loads((out / "generation.json").read_text())
    assert record["count"] == 2 and record["data"]["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left beside


def test_out_under_a_file_a_run_folder_or_holding_the_model_is_refused(
    model_dir, tmp_path, capsys
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = ["--model", str(model_dir)]
    for out, needle in (
        (notes / "gen", f"lies under {notes}, a file"),
        (run, "is a training run folder"),
        (model_dir.parent, f"holds {model_dir}"),
    ):
        assert generate_main([*model, "--out", str(out), "--force"]) == 2
        assert needle in _one_error(capsys)
    assert notes.read_text() == "mine" and list(run.iterdir()) == [run / "checkpoints"]
    assert (model_dir / "model.safetensors").is_file()


def test_damaged_final_is_refused_and_nothing_is_written(model_dir, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "final")
    weights = run / "final" / "model.safetensors"
    _flip_middle(weights)
    out = tmp_path / "out"
    for model in (run, run / "final"):
        assert generate_main(["--model", str(model), "--out", str(out)]) == 2
        error = _one_error(capsys)
        assert str(weights) in error and "SHA-256" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_without_final_uses_its_newest_checkpoint_that_verifies(
    model_dir, tmp_path, capsys
) -> None:
    """Checkpoint 4's generator is damaged: generation takes checkpoint 2 and says so. Checkpoint
    2 is of the older kind whose generator/ has no manifest of its own (the checkpoint's lists
    it)."""
    run = tmp_path / "run"
    for step in (2, 4):
        folder = run / "checkpoints" / f"checkpoint_{step:08d}"
        shutil.copytree(model_dir, folder / "generator")
        if step == 2:
            (folder / "generator" / "manifest.json").unlink()
        write_manifest(folder)
    _flip_middle(run / "checkpoints" / "checkpoint_00000004" / "generator" / "model.safetensors")
    out = tmp_path / "out"
    assert generate_main(["--model", str(run), "--out", str(out), "--count", "1"]) == 0
    err = capsys.readouterr().err
    assert "skipped damaged checkpoint checkpoint_00000004" in err
    assert "using checkpoint_00000002, its newest checkpoint that verifies" in err
    record = json.loads((out / "generation.json").read_text())
    chosen = run / "checkpoints" / "checkpoint_00000002" / "generator"
    assert record["model"] == str(chosen.resolve())


def test_a_16_bit_exemplar_is_scaled_not_clipped(model_dir, tmp_path) -> None:
    from eval.generate import SinglePair, build_parser

    grey = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "photo.png")
    assert Image.open(tmp_path / "photo.png").mode == "I;16"
    label = np.zeros((32, 32), dtype=np.uint8)
    label[:, 16:] = 1
    Image.fromarray(label).save(tmp_path / "layout.png")
    layout = str(tmp_path / "layout.png")
    args = build_parser().parse_args(
        ["--model", str(model_dir), "--out", str(tmp_path / "out"), "--semantic", layout,
         "--exemplar", str(tmp_path / "photo.png"), "--exemplar-semantic", layout]
    )  # fmt: skip
    exemplar = SinglePair(args, TINY)[0]["exemplar"]
    expected = torch.from_numpy(grey.astype(np.float32) / 65535 * 2 - 1).expand(3, 32, 32)
    assert (exemplar - expected).abs().max() <= 1e-6
