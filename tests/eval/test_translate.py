"""`python -m eval.translate` on tiny untrained generators of the three input kinds, each held in a
run folder whose config says its data (as training writes it): the encodings against the
loaders' own, the image against a direct call, and every refused input as one error line with
nothing written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _real_data import DF_HEIGHT, DF_WIDTH, write_celebahq, write_deepfashion
from PIL import Image

from dynast.config import preset
from dynast.data import DataConfig, build_dataset
from dynast.data.augment import Transform
from dynast.data.openpose import read_openpose
from dynast.data.pose_encoding import encode_pose
from dynast.generator import Generator
from dynast.io import load_generator, save_pretrained
from eval.generate import main as generate_main
from eval.model_input import model_data
from eval.translate import main as translate_main
from eval.translate_inputs import encode_pose_file
from eval.visualize import semantic_pixels, to_pixels

OPENPOSE = Path(__file__).parents[1] / "dynast" / "fixtures" / "openpose"
TINY = dataclasses.replace(
    preset("synthetic-64-narrow"), name="tiny-32", image_size=32, ngf=4, num_scales=3,
    max_multiplier=2,
)  # fmt: skip
KINDS = {"synthetic": 8, "deepfashion": 20, "celebahq-edge": 15}
TINY_EDGES = dataclasses.replace(TINY, semantic_nc=15)


def write_run(root: Path, kind: str) -> Path:
    """A run folder as training leaves it: config.json (model, data, train) and final/."""
    cfg = dataclasses.replace(TINY, semantic_nc=KINDS[kind])
    torch.manual_seed(len(kind))
    save_pretrained(Generator(cfg), root / "final")
    data = DataConfig(kind=kind, num_classes=KINDS[kind], image_size=32)
    run = {"model": cfg.to_dict(), "data": data.to_dict(), "train": {}}
    (root / "config.json").write_text(json.dumps(run))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    return {kind: write_run(base / kind, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """An exemplar photo of DeepFashion's size, 176 x 256 (not the model's)."""
    yy, xx = np.mgrid[0:256, 0:176]
    pixels = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("photo") / "dress.png"
    Image.fromarray(pixels).save(path)
    return path


def direct(run: Path, sample: dict) -> np.ndarray:
    generator = load_generator(run)
    with torch.no_grad():
        out = generator(
            sample["semantic"][None], sample["exemplar"][None], sample["exemplar_semantic"][None]
        )
    return to_pixels(out.image[0]).astype(int)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_pose_model_from_openpose_json(runs, photo, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = translate_main(
        ["--model", str(runs["deepfashion"]), "--pose", str(OPENPOSE / "coco18.json"),
         "--pose-size", "176,256", "--exemplar", str(photo),
         "--exemplar-pose", str(OPENPOSE / "body25_two_people.json"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "people[1] of 2" in printed and "BODY_25" in printed
    assert "176x256 -> 32x32, resized bicubic without keeping the aspect" in printed
    # Keypoints of a 176 x 256 image scaled by 32 / 256 onto a 22 x 32 canvas, then resized to
    # 32 x 32 by the loader's function; the exemplar's pose is in its photo's own pixels.
    pose = read_openpose(OPENPOSE / "coco18.json")
    scaled = pose.candidate.copy()
    scaled[:, :2] *= 32 / 256
    semantic = encode_pose(scaled, pose.subset, 32, 22, Transform.plain(32))
    exemplar = torch.from_numpy(
        np.array(Image.open(photo).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    )
    sample = {
        "semantic": semantic,
        "exemplar_semantic": semantic,  # the same pose, the same photo size
        "exemplar": exemplar.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5),
    }
    image = read_png(out / "image.png")
    assert image.shape == (32, 32, 3)
    assert np.abs(image - direct(runs["deepfashion"], sample)).max() <= 1
    record = json.loads((out / "translate.json").read_text())
    assert record["data"]["input_kind"] == "pose" and record["size"] == [32, 32]
    assert record["data"]["pose_size"] == [176, 256] and record["model_config"]["semantic_nc"] == 20
    assert record["environment"]["argv"] and any("people[1]" in n for n in record["notes"])
    assert read_png(out / "panel.png").shape[1] > 6 * 32
    assert sorted(p.name for p in out.iterdir()) == ["image.png", "panel.png", "translate.json"]


def test_pose_scaling_and_the_loaders_encoding(tmp_path) -> None:
    # At a resolution equal to the photo's height the keypoints are not scaled: the encoding of
    # the release's text files is the DeepFashion loader's, bit for bit (40 x 48 fixture photos).
    root = write_deepfashion(tmp_path / "df")
    dataset = build_dataset(
        DataConfig(kind="deepfashion", root=str(root), num_classes=20, image_size=DF_HEIGHT), "test"
    )
    base = root / "pose" / "MEN/Denim/id_00000003/01_1_front"
    encoded, note = encode_pose_file(
        Path(f"{base}_subset.txt"), "--pose", (DF_WIDTH, DF_HEIGHT), DF_HEIGHT, 0.05
    )
    index = dataset.keys.index(next(k for k in dataset.keys if "id_00000003/01_1_front" in k))
    assert torch.equal(encoded, dataset[index]["semantic"]) and "scaled" not in note
    # Keypoints of an image twice the size, coordinates doubled: the same encoding.
    pose = json.loads((OPENPOSE / "coco18.json").read_text())
    values = np.asarray(pose["people"][0]["pose_keypoints_2d"]).reshape(-1, 3)
    values[:, :2] *= 2
    pose["people"][0]["pose_keypoints_2d"] = values.reshape(-1).tolist()
    (tmp_path / "big.json").write_text(json.dumps(pose))
    small, _ = encode_pose_file(OPENPOSE / "coco18.json", "--pose", (176, 256), 64, 0.05)
    big, note = encode_pose_file(tmp_path / "big.json", "--pose", (352, 512), 64, 0.05)
    assert torch.equal(small, big) and "scaled by 0.125 to 44x64" in note


def test_edge_model_reads_one_face_of_the_layout(runs, tmp_path, capsys) -> None:
    root = write_celebahq(tmp_path / "celeba")
    faces = root / "CelebA-HQ-img"
    out = tmp_path / "out"
    argv = ["--model", str(runs["celebahq-edge"]), "--edges", str(faces / "5.jpg")]
    code = translate_main([*argv, "--exemplar", str(faces / "2001.jpg"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "face 5, 3 of 13 part masks (skin, nose, hair)" in capsys.readouterr().out
    test = build_dataset(
        DataConfig(kind="celebahq-edge", root=str(root), num_classes=15, image_size=32), "test"
    )
    # The dataset's one test pair is face 29922 with exemplar 5: swap in faces 5 and 2001 via
    # the dataset's own reader.
    target, _ = test.read(5, "t", Transform.plain(32))
    ex_semantic, ex_photo = test.read(2001, "t", Transform.plain(32))
    sample = {"semantic": target, "exemplar_semantic": ex_semantic, "exemplar": ex_photo}
    assert np.abs(read_png(out / "image.png") - direct(runs["celebahq-edge"], sample)).max() <= 1

    self_out = tmp_path / "self"
    code = translate_main([*argv, "--exemplar", str(faces / "5.jpg"), "--out", str(self_out)])
    assert code == 0
    assert "self reference" in capsys.readouterr().out


def test_class_map_model_matches_generate(runs, tmp_path, capsys) -> None:
    sample = build_dataset(DataConfig(num_classes=8, image_size=32), "test")[2]
    Image.fromarray(sample["label"].numpy().astype(np.uint8)).save(tmp_path / "layout.png")
    Image.fromarray(sample["exemplar_label"].numpy().astype(np.uint8)).save(tmp_path / "ex.png")
    Image.fromarray(to_pixels(sample["exemplar"])).resize((48, 40)).save(tmp_path / "photo.png")
    files = ["--semantic", str(tmp_path / "layout.png"), "--exemplar", str(tmp_path / "photo.png"),
             "--exemplar-semantic", str(tmp_path / "ex.png")]  # fmt: skip
    model = ["--model", str(runs["synthetic"])]
    assert translate_main([*model, *files, "--out", str(tmp_path / "t")]) == 0
    assert "synthetic data" in capsys.readouterr().out
    assert generate_main([*model, *files, "--out", str(tmp_path / "g")]) == 0
    assert np.array_equal(
        read_png(tmp_path / "t" / "image.png"), read_png(tmp_path / "g" / "images" / "layout.png")
    )


def test_panel_pictures_show_a_pose_as_its_skeleton() -> None:
    pose = read_openpose(OPENPOSE / "coco18.json")
    semantic = encode_pose(pose.candidate, pose.subset, 256, 176, Transform.plain(64))
    picture = semantic_pixels(semantic, "pose")
    assert np.array_equal(picture, (semantic[:3] * 255).round().permute(1, 2, 0).numpy())
    assert (picture.reshape(-1, 3) == 0).all(-1).mean() > 0.5, "black background"
    edges = semantic_pixels(torch.rand(15, 8, 8), "edges")
    assert (edges[..., 0] == edges[..., 2]).all()


def test_bad_input_is_one_error_and_nothing_written(runs, photo, tmp_path, capsys) -> None:
    (tmp_path / "empty.json").write_text('{"version": 1.3, "people": []}')
    (tmp_path / "short.json").write_text('{"people": [{"pose_keypoints_2d": [1, 2, 0.9]}]}')
    (tmp_path / "broken.jpg").write_text("not an image")
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(tmp_path / "nine.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "zero.png")
    celeba = write_celebahq(tmp_path / "celeba")
    pose_model = ["--model", str(runs["deepfashion"])]
    class_model = ["--model", str(runs["synthetic"])]
    ex_pose = ["--exemplar-pose", str(OPENPOSE / "coco18.json")]
    pose = ["--pose", str(OPENPOSE / "coco18.json")]
    cases = [
        ([*pose_model, "--pose", str(tmp_path / "empty.json"), "--exemplar", str(photo), *ex_pose],
         "empty.json: no people"),
        ([*pose_model, "--pose", str(tmp_path / "short.json"), "--exemplar", str(photo), *ex_pose],
         "has 3 values; expected 54 (COCO-18"),
        ([*class_model, "--semantic", str(tmp_path / "nine.png"), "--exemplar", str(photo),
          "--exemplar-semantic", str(tmp_path / "zero.png")],
         "nine.png: class index 9 is out of range for num_classes=8"),
        ([*class_model, *pose, "--exemplar", str(photo), *ex_pose],
         "--pose: the model 'tiny-32' reads classes input"),
        ([*pose_model, "--semantic", str(tmp_path / "zero.png"), "--exemplar", str(photo)],
         "--semantic: the model 'tiny-32' reads pose input"),
        ([*pose_model, *pose, "--exemplar", str(tmp_path / "broken.jpg"), *ex_pose],
         "broken.jpg: not a readable image"),
        ([*pose_model, *pose, "--exemplar", str(photo)], "--exemplar-pose is needed"),
        ([*pose_model, *pose, "--pose-size", "176x256", "--exemplar", str(photo), *ex_pose],
         "--pose-size: expected W,H"),
        (["--model", str(runs["celebahq-edge"]), "--edges", str(photo), "--exemplar", str(photo)],
         "expected a face in the CelebAMask-HQ layout"),
        (["--model", str(runs["celebahq-edge"]), "--edges",
          str(celeba / "CelebA-HQ-img" / "5.jpg"), "--exemplar", str(photo)],
         "reads the exemplar's own edges"),
    ]  # fmt: skip
    for argv, needle in cases:
        out = tmp_path / "never"
        capsys.readouterr()
        assert translate_main([*argv, "--out", str(out)]) == 2, needle
        err = capsys.readouterr().err
        assert needle in err and err.startswith("dynast-translate: error: "), (needle, err)
        assert err.count("\n") == 1 and "Traceback" not in err
        assert not out.exists(), needle
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    argv = [*class_model, "--semantic", str(tmp_path / "zero.png"), "--exemplar", str(photo)]
    argv += ["--exemplar-semantic", str(tmp_path / "zero.png"), "--out", str(blocked / "out")]
    assert translate_main(argv) == 2
    assert "a_file" in capsys.readouterr().err and blocked.read_text() == ""


def test_what_a_model_reads_comes_from_preset_run_or_name(runs, tmp_path) -> None:
    converted = preset("deepfashion-256")  # a converted release model carries its preset's name
    found = model_data(tmp_path, converted)
    assert found.kind == "pose" and "the model's preset 'deepfashion-256'" in found.source
    assert model_data(runs["celebahq-edge"] / "final", TINY_EDGES).kind == "edges"
    unknown = model_data(tmp_path, TINY)
    assert unknown.kind == "classes" and "class maps assumed" in unknown.source
    chosen = model_data(tmp_path, converted, preset="deepfashion-512")
    assert chosen.kind == "pose" and chosen.source == "--preset deepfashion-512"
    with pytest.raises(ValueError, match="reads 8 semantic channels but its data"):
        model_data(tmp_path, TINY, preset="deepfashion-256")
