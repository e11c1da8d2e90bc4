"""The plain folder format: export round trip, the export command, and every bad input."""

from __future__ import annotations

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

from dynast.data import DataConfig, FolderDataset, SyntheticDataset, build_dataset
from dynast.data.export import export_synthetic
from dynast.data.export import main as export_main
from dynast.data.labels import one_hot, resize_labels
from kernels.files import write_atomically

SIZE, CLASSES = 40, 6
SOURCE = DataConfig(image_size=SIZE, num_classes=CLASSES, train_length=3, test_length=4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_synthetic(SOURCE, tmp_path_factory.mktemp("export") / "synthetic", progress=False)


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    """A private copy of the export, free to break."""
    return Path(shutil.copytree(exported, tmp_path / "data"))


def _config(root: Path, **changes: object) -> DataConfig:
    fields = {"kind": "folder", "root": str(root), "image_size": SIZE, "num_classes": CLASSES}
    return DataConfig(**{**fields, **changes})


@pytest.mark.parametrize("split", ["train", "test"])
def test_export_round_trip_equals_on_the_fly(exported: Path, split: str) -> None:
    on_the_fly = SyntheticDataset(SOURCE, split)
    loaded = build_dataset(_config(exported), split)
    assert isinstance(loaded, FolderDataset) and len(loaded) == len(on_the_fly)
    for i in range(len(loaded)):
        got, want = loaded[i], on_the_fly[i]
        assert got["index"] == want["index"] == i
        for key in ("label", "exemplar_label", "semantic", "exemplar_semantic", "has_target"):
            assert torch.equal(got[key], want[key]), key
        for key in ("target", "exemplar"):  # 8-bit PNG: at most half a level of 2/255
            assert (got[key] - want[key]).abs().max() <= 1.0 / 255 + 1e-6, key
    assert loaded.class_names == ("background", *(f"class_{c}" for c in range(1, CLASSES)))


def test_loader_resizes_images_bilinear_and_labels_nearest(exported: Path) -> None:
    big = build_dataset(_config(exported, image_size=56), "test")[1]
    want = SyntheticDataset(SOURCE, "test")[1]
    assert big["target"].shape == (3, 56, 56) and big["semantic"].shape == (CLASSES, 56, 56)
    assert torch.equal(big["label"], torch.from_numpy(resize_labels(want["label"].numpy(), 56, 56)))
    assert (big["exemplar"].mean() - want["exemplar"].mean()).abs() < 0.02


def test_resize_labels_matches_pil_nearest() -> None:
    label = np.random.default_rng(0).integers(0, 200, (23, 31)).astype(np.uint8)
    for height, width in ((7, 10), (23, 31), (50, 64), (11, 93)):
        pil = np.asarray(Image.fromarray(label).resize((width, height), Image.Resampling.NEAREST))
        assert np.array_equal(resize_labels(label, height, width), pil), (height, width)


def test_one_hot_puts_class_v_in_channel_v() -> None:
    labels = np.random.default_rng(0).integers(0, 151, (9, 7))
    for view in (labels, labels[:, ::-1], labels.astype(np.uint8)):  # strided, narrow dtype
        values = torch.from_numpy(view.astype(np.int64))
        expected = torch.nn.functional.one_hot(values, 151).permute(2, 0, 1).float()
        hot = one_hot(view, 151)
        assert hot.dtype == torch.float32 and hot.is_contiguous() and torch.equal(hot, expected)


def test_palette_and_16_bit_labels_are_read(folder: Path) -> None:
    path = folder / "labels" / "test_000000_target.png"
    values = np.asarray(Image.open(path))
    want = build_dataset(_config(folder), "test")[0]["label"]
    palette_image = Image.fromarray(values, mode="L").convert("P")
    palette_image.putpalette([v for c in range(256) for v in (c, 255 - c, 7)])
    palette_image.save(path)
    assert torch.equal(build_dataset(_config(folder), "test")[0]["label"], want)
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert torch.equal(build_dataset(_config(folder), "test")[0]["label"], want)


def test_16_bit_photos_are_scaled_not_clipped(folder: Path) -> None:
    """A 16-bit grey photo (PIL mode I;16) reads as the same picture as its 8-bit version:
    scaled from 0..65535, where PIL's RGB conversion would clip it to white."""
    path = folder / "images" / "test_000000_target.png"
    grey = np.asarray(Image.open(path).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # g * 257 / 65535 == g / 255
    assert Image.open(path).mode == "I;16"
    target = build_dataset(_config(folder), "test")[0]["target"]
    expected = torch.from_numpy(grey.astype(np.float32) * (2.0 / 255.0) - 1.0)
    assert target.shape == (3, SIZE, SIZE)
    assert (target - expected).abs().max() <= 1e-6


def test_missing_target_image_means_no_ground_truth(folder: Path) -> None:
    (folder / "images" / "test_000002_target.png").unlink()
    sample = build_dataset(_config(folder), "test")[2]
    assert not bool(sample["has_target"]) and torch.equal(
        sample["target"], torch.zeros(3, SIZE, SIZE)
    )
    assert bool(build_dataset(_config(folder), "test")[1]["has_target"])


def test_jpeg_images_and_sub_folders_are_found(folder: Path) -> None:
    (folder / "images" / "sub").mkdir()
    (folder / "labels" / "sub").mkdir()
    Image.open(folder / "images" / "test_000000_exemplar.png").save(
        folder / "images" / "sub" / "a.JPG", quality=95
    )
    shutil.copy(folder / "labels" / "test_000000_exemplar.png", folder / "labels" / "sub" / "a.png")
    (folder / "pairs_test.csv").write_text("target,exemplar\ntest_000000_target,sub/a\n")
    sample = build_dataset(_config(folder), "test")[0]
    want = SyntheticDataset(SOURCE, "test")[0]
    assert torch.equal(sample["exemplar_label"], want["exemplar_label"])
    assert (sample["exemplar"] - want["exemplar"]).abs().mean() < 0.05  # JPEG


# --- bad inputs: each one clear error naming the file or argument ------------------------------


def _break_and_load(folder: Path, split: str = "test", **changes: object):
    dataset = build_dataset(_config(folder, **changes), split)
    return [dataset[i] for i in range(len(dataset))]


def test_missing_exemplar_image(folder: Path) -> None:
    (folder / "images" / "test_000001_exemplar.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/test_000001_exemplar\..*not found"):
        _break_and_load(folder)


def test_missing_label(folder: Path) -> None:
    (folder / "labels" / "test_000003_target.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels/test_000003_target\.png: label map"):
        _break_and_load(folder)


def test_image_that_is_not_an_image(folder: Path) -> None:
    (folder / "images" / "test_000000_exemplar.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"test_000000_exemplar\.png: not a readable image"):
        _break_and_load(folder)


def test_truncated_image(folder: Path) -> None:
    path = folder / "images" / "test_000002_target.png"
    path.write_bytes(path.read_bytes()[:120])  # the header survives, the pixels do not
    dataset = build_dataset(_config(folder), "test")
    with pytest.raises(ValueError, match=r"test_000002_target\.png: corrupt image"):
        dataset[2]


def test_label_with_class_out_of_range(folder: Path) -> None:
    path = folder / "labels" / "test_000001_exemplar.png"
    label = np.asarray(Image.open(path)).copy()
    label[3, 4] = CLASSES
    Image.fromarray(label).save(path)
    dataset = build_dataset(_config(folder), "test")
    with pytest.raises(
        ValueError, match=rf"test_000001_exemplar\.png: class index {CLASSES} is out"
    ):
        dataset[1]


def test_colour_label_map(folder: Path) -> None:
    path = folder / "labels" / "test_000000_target.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ValueError, match=r"test_000000_target\.png: label maps must be single"):
        _break_and_load(folder)


def test_image_size_differs_from_its_label(folder: Path) -> None:
    path = folder / "images" / "test_000003_exemplar.png"
    Image.open(path).resize((SIZE + 2, SIZE)).save(path)
    with pytest.raises(
        ValueError, match=r"test_000003_exemplar\.png: size 42x40 \(width x height\) differs from"
    ):
        _break_and_load(folder)


def test_exemplar_size_differs_from_target(folder: Path) -> None:
    for kind in ("images", "labels"):
        path = folder / kind / "test_000001_exemplar.png"
        resample = Image.Resampling.NEAREST
        Image.open(path).resize((SIZE * 2, SIZE * 2), resample).save(path)
    with pytest.raises(ValueError, match=r"test_000001_exemplar\.png: size .* the target's"):
        _break_and_load(folder)
    samples = _break_and_load(folder, match_pair_sizes=False)
    assert samples[1]["exemplar"].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize(
    "text,message",
    [
        ("exemplar,target\na,b\n", r"pairs_test\.csv:1: expected the header"),
        ("", r"pairs_test\.csv:1: expected the header .*empty file"),
        ("target,exemplar\ntest_000000_target\n", r"pairs_test\.csv:2: expected 2 columns"),
        ("target,exemplar\n\na,b,c\n", r"pairs_test\.csv:3: expected 2 columns"),
        ("target,exemplar\n ,test_000000_exemplar\n", r"pairs_test\.csv:2: empty name"),
        ("target,exemplar\nx.png,y\n", r"pairs_test\.csv:2: name 'x.png' .* without its file"),
        ("target,exemplar\n../x,y\n", r"pairs_test\.csv:2: name '\.\./x' must be a relative"),
        ("target,exemplar\n", r"pairs_test\.csv: the split is empty"),
        ("target,exemplar\n\n\n", r"pairs_test\.csv: the split is empty"),
    ],
    ids=[
        "header",
        "empty-file",
        "one-column",
        "three-columns",
        "blank-name",
        "extension",
        "outside",
        "empty-split",
        "blank-lines-only",
    ],
)
def test_malformed_pairs_csv(folder: Path, text: str, message: str) -> None:
    (folder / "pairs_test.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        _break_and_load(folder)


def test_missing_pairs_csv_and_folder(folder: Path) -> None:
    (folder / "pairs_train.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"pairs_train\.csv: pairs file not found"):
        _break_and_load(folder, "train")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        _break_and_load(folder / "nowhere")


def test_dataset_json_must_agree(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset\.json says num_classes=6 but the data config"):
        build_dataset(DataConfig(kind="folder", root=str(folder), image_size=SIZE), "test")
    (folder / "dataset.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"dataset\.json: not valid JSON"):
        _break_and_load(folder)
    (folder / "dataset.json").write_text(json.dumps({"num_classes": CLASSES, "names": []}))
    with pytest.raises(ValueError, match=r"dataset\.json: unknown keys \['names'\]"):
        _break_and_load(folder)
    (folder / "dataset.json").unlink()  # optional
    assert len(_break_and_load(folder)) == 4


def test_ambiguous_name_and_length_cap(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"test_length=9 but .*pairs_test\.csv has only 4 pairs"):
        _break_and_load(folder, test_length=9)
    assert len(_break_and_load(folder, test_length=2)) == 2
    Image.open(folder / "images" / "test_000000_target.png").save(
        folder / "images" / "test_000000_target.jpg"
    )
    with pytest.raises(ValueError, match="'test_000000_target' matches several files"):
        _break_and_load(folder)


# --- export and atomic writes -----------------------------------------------------------------


def test_export_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out), "--count-train", "2", "--count-test", "1", "--image-size", "24"]
    args += ["--num-classes", "4", "--seed", "5", "--textures", "procedural"]
    done = subprocess.run(
        [sys.executable, "-m", "dynast.data.export", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2 train + 1 test pairs" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset.json",
        "images",
        "labels",
        "pairs_test.csv",
        "pairs_train.csv",
    ]
    assert len(list((out / "images").iterdir())) == 6
    assert json.loads((out / "dataset.json").read_text())["source"]["seed"] == 5
    # A second export into the non-empty folder is refused, and with --force replaces it.
    (out / "stale.txt").write_text("x")
    with pytest.raises(SystemExit):
        export_main([*args, "--no-progress"])
    assert (out / "stale.txt").exists()
    assert export_main([*args, "--no-progress", "--force", "--count-train", "1"]) == 0
    assert not (out / "stale.txt").exists()
    assert (out / "pairs_train.csv").read_text().count("\n") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folders left behind


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "a.txt", fail)
    assert os.listdir(tmp_path) == []
