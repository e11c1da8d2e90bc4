"""OpenPose JSON as the release's keypoint tables: hand-written files of one pose in COCO-18 and
in BODY_25 (with a second, less confident person), and the same pose as the release's
`_candidate.txt` / `_subset.txt` pair, all give the same 20-channel encoding, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynast.data.augment import Transform
from dynast.data.openpose import COCO18_FROM_BODY25, read_openpose
from dynast.data.pose_encoding import encode_pose, read_keypoints

FIXTURES = Path(__file__).parent / "fixtures" / "openpose"
# The fixtures' pose: a person in a 176 x 256 image (DeepFashion's size). Right wrist at
# confidence 0.03 and right ear at 0 (OpenPose's "not found") are missing at the default
# threshold 0.05; the left ankle, at exactly 0.05, is present.
WIDTH, HEIGHT = 176, 256
MISSING = [4, 16]


def encoding(candidate: np.ndarray, subset: np.ndarray, size: int = 64) -> torch.Tensor:
    return encode_pose(candidate, subset, HEIGHT, WIDTH, Transform.plain(size))


def test_coco18_reads_the_release_tables() -> None:
    pose = read_openpose(FIXTURES / "coco18.json")
    assert pose.layout == "COCO-18" and pose.people == 1 and pose.person == 0
    expected = [i for i in range(18) if i not in MISSING]
    assert np.flatnonzero(pose.subset >= 0).tolist() == expected
    assert pose.subset[MISSING].tolist() == [-1, -1]
    # Candidate rows in part order: (x, y, score, id); the nose and the left ankle.
    assert pose.candidate[pose.subset[0]].tolist() == [88, 40, 0.9, 0]
    assert pose.candidate[pose.subset[13]].tolist() == [106, 236, 0.05, 12]
    assert "16 of 18 keypoints present" in pose.describe()


def test_body25_and_coco18_of_one_pose_encode_bit_for_bit_alike() -> None:
    coco = read_openpose(FIXTURES / "coco18.json")
    body = read_openpose(FIXTURES / "body25_two_people.json")
    # Two people: the second one, far more confident, is taken and named.
    assert body.layout == "BODY_25" and body.people == 2 and body.person == 1
    assert "people[1] of 2" in body.describe() and "most confident" in body.describe()
    assert np.array_equal(body.subset, coco.subset)
    assert np.array_equal(body.candidate, coco.candidate)
    a, b = encoding(coco.candidate, coco.subset), encoding(body.candidate, body.subset)
    assert a.shape == (20, 64, 64)
    assert torch.equal(a, b)
    assert (a[:3] > 0).any(), "the skeleton is drawn"


def test_release_text_files_give_the_json_encoding() -> None:
    candidate, subset = read_keypoints(FIXTURES / "person", "test")
    pose = read_openpose(FIXTURES / "coco18.json")
    assert np.array_equal(subset, pose.subset)
    assert torch.equal(encoding(candidate, subset), encoding(pose.candidate, pose.subset))


def test_min_confidence_is_a_missing_subset_entry(tmp_path) -> None:
    strict = read_openpose(FIXTURES / "coco18.json", min_confidence=0.06)
    assert strict.subset[13] == -1  # the left ankle at 0.05
    # The same as a subset file that marks it -1, and every limb through it is dropped.
    candidate, subset = read_keypoints(FIXTURES / "person", "test")
    subset = subset.copy()
    subset[13] = -1
    assert torch.equal(encoding(candidate, subset), encoding(strict.candidate, strict.subset))
    limb = 11  # LIMB_SEQ[11] = (13, 14): left knee to left ankle
    assert (encoding(strict.candidate, strict.subset)[3 + limb] == 1).all()
    every = read_openpose(FIXTURES / "coco18.json", min_confidence=0.0)
    assert (every.subset >= 0).all()


def test_body25_mapping_is_coco_order() -> None:
    # MidHip (8) and the six foot points (19-24) have no COCO-18 counterpart.
    assert sorted(set(range(25)) - set(COCO18_FROM_BODY25)) == [8, 19, 20, 21, 22, 23, 24]
    assert list(COCO18_FROM_BODY25[:8]) == list(range(8))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"version": 1.3, "people": []}, "no people"),
        ({"people": [{"pose_keypoints_2d": [1.0, 2.0, 0.5] * 17}]}, "has 51 values"),
        ({"people": [{"face_keypoints_2d": []}]}, "no 'pose_keypoints_2d'"),
        ({"people": [{"pose_keypoints_2d": ["a"] * 54}]}, "numbers only"),
        ([1, 2, 3], "no people"),
    ],
)
def test_bad_json_names_the_file(tmp_path, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as error:
        read_openpose(path)
    assert str(path) in str(error.value)


def test_not_json_names_the_file(tmp_path) -> None:
    path = tmp_path / "pose.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not an OpenPose JSON file"):
        read_openpose(path)
