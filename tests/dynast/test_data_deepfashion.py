"""DeepFashion (kind "deepfashion"): the release's pose encoding checked against channels computed
independently from hand-placed keypoints, the pairing rules with the identity check and the
reference probabilities, determinism, and bad input named by file and list line."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from _real_data import DF_HEIGHT, DF_IMAGES, DF_WIDTH, write_deepfashion
from _release_data import release_pairs
from PIL import Image

from dynast.data import DataConfig, build_dataset
from dynast.data.augment import Transform
from dynast.data.deepfashion import DeepFashionDataset
from dynast.data.lists import choose_reference
from dynast.data.pose_encoding import (
    COLOURS,
    draw_pose,
    encode_pose,
    read_keypoints,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_deepfashion(tmp_path_factory.mktemp("deepfashion") / "any_name")


def config(root, **kwargs) -> DataConfig:
    return DataConfig(kind="deepfashion", root=str(root), num_classes=20, image_size=32, **kwargs)


def l1_distance(mask: np.ndarray) -> np.ndarray:
    """Brute-force city-block distance of every pixel to the nearest True pixel."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    return (np.abs(yy[..., None] - ys) + np.abs(xx[..., None] - xs)).min(-1)


def test_one_limb_one_missing_keypoint_by_hand(root):
    candidate, subset = read_keypoints(root / "pose/WOMEN/Dresses/id_00000001/01_1_front", "t")
    assert subset.tolist() == [-1, 0, 1] + [-1] * 15  # parts 1 (neck) and 2 (shoulder)
    skeleton, limbs = draw_pose(candidate, subset, DF_HEIGHT, DF_WIDTH)
    # Limb 0 joins parts 1 and 2, (20, 10) and (12, 10): length 8, a circle of radius 4 about
    # (16, 10). Every other limb has a missing end.
    assert all(limb is None for limb in limbs[1:])
    mask = limbs[0] == 255
    yy, xx = np.mgrid[0:DF_HEIGHT, 0:DF_WIDTH]
    radius = np.hypot(xx - 16, yy - 10)
    assert mask[radius <= 3.5].all() and not mask[radius >= 5].any()
    # Skeleton colours, channel-reversed (the release's BGR canvas): outside the limb only the
    # disc of part 1 at x = 23; inside the limb at (16, 12) 0.6 x limb colour over black; at
    # (16, 10) the disc of part 2 blended 0.4 under the limb colour.
    assert skeleton[10, 23].tolist() == list(COLOURS[1][::-1])
    assert skeleton[12, 16].tolist() == [0, 0, 153]
    assert skeleton[10, 16].tolist() == [0, 68, 255]
    assert skeleton[40, 5].tolist() == [0, 0, 0]
    # Encoded without any resize: the limb map is the L1 distance / 3, truncated, clipped.
    square = encode_pose(candidate, subset, 40, 40, Transform.plain(40))
    _, square_limbs = draw_pose(candidate, subset, 40, 40)
    expected = np.minimum(l1_distance(square_limbs[0] == 255) // 3, 255)
    got = (square[3] * 255).round().numpy()
    assert np.array_equal(got, expected)
    assert (square[4:] == 1).all(), "limbs with a missing end are 255 everywhere"
    assert square.shape == (20, 40, 40) and 0 <= square.min() and square.max() <= 1


def test_drawn_at_the_image_size_then_resized_as_the_release(root):
    candidate, subset = read_keypoints(root / "pose/WOMEN/Dresses/id_00000001/01_1_front", "t")
    encoded = encode_pose(candidate, subset, DF_HEIGHT, DF_WIDTH, Transform.plain(32))
    skeleton, limbs = draw_pose(candidate, subset, DF_HEIGHT, DF_WIDTH)
    nearest = np.asarray(Image.fromarray(skeleton).resize((32, 32), Image.Resampling.NEAREST))
    assert np.array_equal((encoded[:3] * 255).round().permute(1, 2, 0).numpy(), nearest)
    distance = np.minimum(l1_distance(limbs[0] == 255) // 3, 255).astype(np.uint8)
    bilinear = Image.fromarray(distance).resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal((encoded[3] * 255).round().numpy(), np.asarray(bilinear))


def test_sample_fields_and_release_pairing(root, caplog):
    with caplog.at_level(logging.WARNING, logger="dynast.data"):
        train = build_dataset(config(root), "train")
    assert "1 of 4 exemplars show another person" in caplog.text
    keys = [f"img/{below}" for below, _ in DF_IMAGES]
    # Self pairs first (backslashes or not), else the last entry of the ref line.
    assert [p.exemplar for p in train.pairs] == [keys[1], keys[0], keys[4], keys[2]]
    flags = [bool(train[i]["same_appearance"]) for i in range(4)]
    assert flags == [True, True, False, True]  # image 2's exemplar is another person
    release = build_dataset(config(root, check_identity=False), "train")
    assert all(bool(release[i]["same_appearance"]) for i in range(4))
    sample = train[0]
    assert sample["semantic"].shape == sample["exemplar_semantic"].shape == (20, 32, 32)
    assert sample["exemplar"].shape == sample["target"].shape == (3, 32, 32)
    assert (sample["label"] == -1).all() and (sample["exemplar_label"] == -1).all()
    assert (
        bool(sample["has_target"]) and -1 <= sample["target"].min() <= sample["target"].max() <= 1
    )
    test = build_dataset(config(root), "test")
    # The list's order (not sorted); the same rule: image 5's self pair, image 4's last ref_test
    # entry (not its first, 5).
    assert [(p.key, p.exemplar) for p in test.pairs] == [(keys[5], keys[4]), (keys[4], keys[0])]
    assert not any(bool(test[i]["same_appearance"]) for i in range(2))
    first, again = test[0], test[0]
    assert all(torch.equal(first[k], again[k]) for k in ("semantic", "exemplar", "target"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_order_and_exemplars_are_the_releases(tmp_path, split):
    """The release's own loader on the same tree (lists as CoCosNet distributes them): its
    `Pix2pixDataset.initialize` order and the exemplar its `__getitem__` reads under
    `--video_like` (`get_ref_video_like`, then `val[0]`), sample by sample."""
    root = write_deepfashion(tmp_path / "deepfashion", backslashes="all")
    theirs = release_pairs("deepfashion", root, split)
    ours = build_dataset(config(root, check_identity=False), split)
    assert [(p.key, p.exemplar) for p in ours.pairs] == [(i, e) for i, e, _ in theirs]
    flags = [bool(ours[i]["same_appearance"]) for i in range(len(ours))]
    assert flags == [self_ref == 1.0 for _, _, self_ref in theirs] == [split == "train"] * len(ours)


def test_reference_probabilities_follow_the_release_rule(root):
    assert [choose_reference(u, 0.7, 0.2) for u in (0.1, 0.5, 0.8)] == ["hard", "easy", "self"]
    assert choose_reference(0.0, 0.0, 1.0) == "self"
    easy = build_dataset(config(root, real_reference_probability=1.0), "train")
    hard = build_dataset(
        config(root, real_reference_probability=1.0, hard_reference_probability=1.0), "train"
    )
    base = build_dataset(config(root), "train")
    for i in range(4):
        assert not bool(easy[i]["same_appearance"]) and not bool(hard[i]["same_appearance"])
        assert torch.equal(easy[i]["exemplar"], base[i]["exemplar"]) or base.pairs[i].same_person
    assert hard.hard_reference(2) == hard.hard_reference(2) in hard.keys
    mixed = build_dataset(config(root, real_reference_probability=0.5), "train")
    counts = 0
    for epoch in range(40):
        mixed.set_epoch(epoch)
        counts += sum(not bool(mixed[i]["same_appearance"]) for i in (0, 1, 3))
    assert 30 < counts < 90  # ~60 of 120 draws


def test_training_randomness_is_seeded_by_seed_epoch_index(root):
    data = build_dataset(config(root, load_size=40, flip=True), "train")
    data.set_epoch(3)
    a = data[1]
    again = build_dataset(config(root, load_size=40, flip=True), "train")
    again.set_epoch(3)
    assert torch.equal(a["semantic"], again[1]["semantic"])
    crops = set()
    for epoch in range(6):
        data.set_epoch(epoch)
        crops.add(data[1]["target"].sum().item())
    assert len(crops) > 1, "another epoch draws another crop"


def test_any_root_name_and_entry_without_reference(tmp_path):
    root = write_deepfashion(tmp_path / "Some Folder")
    lines = (root / "deepfashion_ref.txt").read_text().splitlines()
    (root / "deepfashion_ref.txt").write_text("\n".join([*lines[:2], lines[2].split(",")[0]]))
    with pytest.raises(ValueError, match=r"deepfashion_ref.txt:3: .* has no reference"):
        build_dataset(config(root), "train")


@pytest.mark.parametrize(
    "damage,message",
    [
        (
            "image",
            r"01_2_side.jpg: image not found \(referenced by .*deepfashion_self_pair.txt:1\)",
        ),
        ("train_image", r"02_1_front.jpg: image not found \(referenced by .*train.txt:3\)"),
        ("pose", r"02_3_back_subset.txt: keypoint file not found \(referenced by .*train.txt:4\)"),
        ("columns", r"01_1_front_candidate.txt: expected 4 columns .*by .*train.txt:1\)"),
        ("nan", r"01_1_front_candidate.txt: contains NaN .*by .*train.txt:1\)"),
        ("beyond", r"01_1_front_subset.txt: part index 7 is beyond the 2 candidates .*train.txt:1"),
        ("malformed", r"01_1_front_subset.txt: malformed keypoint file .*by .*train.txt:1\)"),
        ("two_items", r"train.txt:2: expected one image path"),
        ("empty", r"train.txt: the list is empty"),
        ("layout", r"not the DeepFashion .* expected img/, pose/ but pose missing; found: .*img/"),
    ],
)
def test_bad_input_names_the_file_and_line(tmp_path, damage, message):
    root = write_deepfashion(tmp_path / "df")
    pose = root / "pose/WOMEN/Dresses/id_00000001/01_1_front"
    if damage == "image":
        (root / "img/WOMEN/Dresses/id_00000001/01_2_side.jpg").unlink()
    elif damage == "train_image":
        (root / "img/WOMEN/Dresses/id_00000002/02_1_front.jpg").unlink()
    elif damage == "pose":
        (root / "pose/WOMEN/Dresses/id_00000002/02_3_back_subset.txt").unlink()
    elif damage == "columns":
        (root / f"{pose}_candidate.txt").write_text("1 2 3\n4 5 6\n")
    elif damage == "nan":
        (root / f"{pose}_candidate.txt").write_text("1 2 0.9 0\nnan 5 0.9 1\n")
    elif damage == "malformed":
        (root / f"{pose}_subset.txt").write_text("-1 0 x\n")
    elif damage == "two_items":
        lines = (root / "train.txt").read_text().splitlines()
        (root / "train.txt").write_text("\n".join([lines[0], f"{lines[1]},{lines[0]}", *lines[2:]]))
    elif damage == "beyond":
        (root / f"{pose}_subset.txt").write_text(" ".join(["-1", "0", "7"] + ["-1"] * 17))
    elif damage == "empty":
        (root / "train.txt").write_text("\n\n")
    elif damage == "layout":
        shutil.rmtree(root / "pose")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        data = build_dataset(config(root), "train")
        data[0]


def test_num_classes_must_match_the_encoding(root):
    with pytest.raises(ValueError, match="kind='deepfashion' produces 20 semantic channels"):
        DataConfig(kind="deepfashion", root=str(root), num_classes=8)
    assert isinstance(build_dataset(config(root), "test"), DeepFashionDataset)


def test_training_on_a_broken_tree_is_one_clear_line(tmp_path, capsys):
    """`train/main.py --preset deepfashion-256` with a missing keypoint file: exit 1, one line
    naming the file and the list line, no traceback, the run folder's files kept."""
    from train.main import main

    root = write_deepfashion(tmp_path / "df")
    (root / "pose/WOMEN/Dresses/id_00000002/02_3_back_candidate.txt").unlink()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    code = main(
        ["--preset", "deepfashion-256", "--data.root", str(root), "--output-dir", str(run_dir),
         "--model.image_size", "32", "--data.image_size", "32", "--model.ngf", "8",
         "--model.ndf", "8", "--model.num_scales", "3", "--model.pos_unit", "4",
         "--model.prune_unit", "4", "--model.disc_layers", "3", "--model.num_discriminators",
         "1", "--train.loss.vgg", "0", "--train.loss.vgg_mse", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert "02_3_back_candidate.txt: keypoint file not found" in err and "train.txt:4" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert (run_dir / "notes.txt").read_text() == "keep me"
