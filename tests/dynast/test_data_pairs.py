"""`python -m dynast.data.pairs` on the synthetic export: k most similar training images per
target, deterministic, seeded split, and the similarity it ranks by."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from dynast.data import DataConfig
from dynast.data.export import export_synthetic
from dynast.data.folder import FolderDataset
from dynast.data.pairs import PairsOptions, label_features, main, split_names


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = DataConfig(
        image_size=32, num_classes=6, train_length=12, test_length=4, textures="procedural"
    )
    return export_synthetic(cfg, tmp_path_factory.mktemp("pairs") / "synthetic", progress=False)


def read_rows(path):
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_lists_for_the_synthetic_export(exported, tmp_path, capsys):
    out = tmp_path / "lists"
    args = ["--root", str(exported), "--out", str(out), "--k", "3", "--no-progress"]
    assert main([*args, "--test-fraction", "0.25", "--seed", "1"]) == 0
    assert "wrote exemplar lists for 24 train + 8 test images" in capsys.readouterr().out
    train = read_rows(out / "exemplars_train.csv")
    test = read_rows(out / "exemplars_test.csv")
    assert train[0] == ["target", "exemplar_1", "exemplar_2", "exemplar_3"]
    train_names = {row[0] for row in train[1:]}
    assert len(train_names) == 24 and len(test) - 1 == 8
    for row in train[1:] + test[1:]:
        assert row[0] not in row[1:] and len(set(row[1:])) == 3
        assert set(row[1:]) <= train_names, "exemplars are training images"
    pairs = read_rows(out / "pairs_train.csv")
    assert pairs[0] == ["target", "exemplar"] and pairs[1] == train[1][:2]
    # The written pairs are a folder dataset's pair lists: they load.
    for name in ("images", "labels", "dataset.json"):
        src = exported / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, out / name)
    data = FolderDataset(
        DataConfig(kind="folder", root=str(out), num_classes=6, image_size=32), "test"
    )
    assert len(data) == 8
    # Deterministic; existing lists are kept without --force; another seed, another split.
    again = tmp_path / "again"
    assert (
        main([*args[:2], "--out", str(again), *args[4:], "--test-fraction", "0.25", "--seed", "1"])
        == 0
    )
    assert (again / "exemplars_train.csv").read_text() == (out / "exemplars_train.csv").read_text()
    before = (out / "pairs_test.csv").read_text()
    assert main([*args, "--seed", "3"]) == 0  # the previous lists are kept beside
    assert (out / "pairs_test.csv.previous").read_text() == before
    assert main([*args, "--force", "--test-fraction", "0.25", "--seed", "2"]) == 0
    assert {r[0] for r in read_rows(out / "exemplars_test.csv")[1:]} != {r[0] for r in test[1:]}


def test_a_duplicate_layout_ranks_first(exported, tmp_path):
    root = tmp_path / "dup"
    shutil.copytree(exported, root)
    for folder in ("images", "labels"):
        shutil.copy(root / folder / "train_000003_target.png", root / folder / "zz_copy.png")
    assert (
        main(["--root", str(root), "--k", "2", "--test-fraction", "0", "--no-progress", "--force"])
        == 0
    )
    rows = {r[0]: r[1:] for r in read_rows(root / "exemplars_train.csv")[1:]}
    assert rows["zz_copy"][0] == "train_000003_target"
    assert rows["train_000003_target"][0] == "zz_copy"


def test_similarity_is_histogram_plus_layout_cosine():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(3, 16, 16))
    f = label_features(labels, 5, grid=2, layout_weight=0.5)
    hist = np.stack([np.bincount(m.ravel(), minlength=5) for m in labels]).astype(float)
    cells = np.stack(
        [
            np.concatenate(
                [
                    np.bincount(m[y : y + 8, x : x + 8].ravel(), minlength=5)
                    for y in (0, 8)
                    for x in (0, 8)
                ]
            )
            for m in labels
        ]
    ).astype(float)

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    want = cos(hist[0], hist[1]) + 0.5 * cos(cells[0], cells[1])
    assert float(f[0] @ f[1]) == pytest.approx(want, rel=1e-5)
    assert split_names(list("abcdefghij"), 0.3, 4) == split_names(list("abcdefghij"), 0.3, 4)
    with pytest.raises(ValueError, match="--k must be a positive integer"):
        PairsOptions(k=0)
    assert torch.isfinite(f).all()


def test_a_hand_made_list_survives_runs_again(exported, tmp_path):
    """Numbered backups: a second run never replaces the first run's backup of the user's list,
    and a list written again unchanged keeps no copy."""
    root = tmp_path / "data"
    shutil.copytree(exported, root)
    hand_made = "target,exemplar\ntrain_000001_target,train_000002_target\n"
    (root / "pairs_train.csv").write_text(hand_made)
    args = ["--root", str(root), "--k", "2", "--no-progress"]
    assert main(args) == 0
    first = (root / "pairs_train.csv").read_text()
    assert main(args) == 0  # the same lists again
    assert (root / "pairs_train.csv.previous").read_text() == hand_made
    assert not (root / "pairs_train.csv.previous-2").exists()
    assert main([*args, "--seed", "5"]) == 0  # another split
    assert (root / "pairs_train.csv.previous").read_text() == hand_made
    assert (root / "pairs_train.csv.previous-2").read_text() == first
