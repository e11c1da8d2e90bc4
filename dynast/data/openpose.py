"""OpenPose's JSON output (`--write_json`: `people[i].pose_keypoints_2d`) as the release's keypoint
tables, so that a pose estimated on any photo feeds the DeepFashion encoding (`pose_encoding`).

The two body layouts OpenPose writes are told apart by the length of `pose_keypoints_2d` (x, y,
confidence per keypoint): 54 values are COCO-18, the release's order; 75 are BODY_25, whose
MidHip (8) and six foot points (19-24) COCO-18 lacks, and whose other 18 points are COCO-18's in
another order (`COCO18_FROM_BODY25`). A keypoint whose confidence is below `min_confidence`
(OpenPose writes 0, 0, 0 for one it did not find) is missing: part index -1 in the subset, as in
the release's `_subset.txt`. Of several people, the one with the largest summed confidence of
its 18 COCO keypoints is taken.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pose_encoding import NUM_KEYPOINTS

# BODY_25 index of each COCO-18 keypoint: nose, neck, right arm (3), left arm (3), right leg (3),
# left leg (3), eyes, ears. BODY_25 puts MidHip at 8 and the feet at 19-24.
COCO18_FROM_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
LAYOUTS = {3 * NUM_KEYPOINTS: "COCO-18", 3 * 25: "BODY_25"}
DEFAULT_MIN_CONFIDENCE = 0.05


@dataclass(frozen=True)
class Pose:
    """One person's keypoints as the release's tables: candidate [N, 4] rows (x, y, score, id)
    of the present keypoints, subset [18] int64 (a candidate row per COCO part, -1 missing);
    which person of how many, in which layout, and why that person."""

    candidate: np.ndarray
    subset: np.ndarray
    person: int
    people: int
    layout: str
    confidence: float

    def describe(self) -> str:
        present = int((self.subset >= 0).sum())
        which = f"people[{self.person}] of {self.people}"
        if self.people > 1:
            which += f" (the most confident: summed keypoint confidence {self.confidence:.2f})"
        return f"{which}, {self.layout}, {present} of {NUM_KEYPOINTS} keypoints present"


def coco18(values: list[float], path: Path, person: int) -> tuple[np.ndarray, str]:
    """A flat pose_keypoints_2d list -> [18, 3] (x, y, confidence) in COCO-18 order, layout."""
    layout = LAYOUTS.get(len(values))
    if layout is None:
        raise ValueError(
            f"{path}: people[{person}].pose_keypoints_2d has {len(values)} values; expected 54 "
            "(COCO-18: 18 keypoints x (x, y, confidence)) or 75 (BODY_25)"
        )
    try:
        points = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: people[{person}].pose_keypoints_2d must hold numbers only"
        ) from None
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: people[{person}].pose_keypoints_2d holds NaN or infinity")
    if layout == "BODY_25":
        points = points[list(COCO18_FROM_BODY25)]
    return points, layout


def release_tables(points: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """[18, 3] keypoints -> (candidate [N, 4], subset [18]): the present keypoints become candidate
    rows in part order, the others -1 in the subset."""
    present = points[:, 2] >= min_confidence
    subset = np.full(NUM_KEYPOINTS, -1, dtype=np.int64)
    subset[present] = np.arange(int(present.sum()))
    rows = points[present]
    candidate = np.column_stack([rows, np.arange(len(rows), dtype=np.float64)])
    return candidate.reshape(-1, 4), subset


def read_openpose(path: str | Path, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> Pose:
    """The most confident person of an OpenPose JSON file; ValueError naming the file for a file
    that is not such JSON, holds no people, or keypoints of another length."""
    path = Path(path)
    if not math.isfinite(min_confidence) or not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"--min-confidence: expected a number in [0, 1], got {min_confidence}")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: pose file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not an OpenPose JSON file ({error})") from None
    people = data.get("people") if isinstance(data, dict) else None
    if not isinstance(people, list) or not people:
        raise ValueError(
            f"{path}: no people in this OpenPose JSON (expected a non-empty 'people' list with "
            "'pose_keypoints_2d' per person)"
        )
    best: tuple[float, int, np.ndarray, str] | None = None
    for i, person in enumerate(people):
        values = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
        if not isinstance(values, list):
            raise ValueError(f"{path}: people[{i}] has no 'pose_keypoints_2d' list")
        points, layout = coco18(values, path, i)
        score = float(points[:, 2].sum())
        if best is None or score > best[0]:
            best = (score, i, points, layout)
    score, index, points, layout = best
    candidate, subset = release_tables(points, min_confidence)
    return Pose(candidate, subset, index, len(people), layout, score)
