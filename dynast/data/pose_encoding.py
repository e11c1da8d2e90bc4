"""DeepFashion's 20-channel pose encoding (the release's `get_label_tensor`, CoCosNet
`data/deepfashion_dataset.py`), drawn with OpenCV so the rasterisation matches the release.

From OpenPose's keypoints (candidate rows x, y, score, id; one subset row of 18 COCO part indices
into the candidates, -1 when missing, then a score and a part count), at the image's own size:
- a colour skeleton: a disc of radius 4 per present keypoint in the fixed 18-colour palette, then
  for each of the first 17 limbs of LIMB_SEQ whose two ends are present an ellipse of half-width
  4 along the limb, filled in the limb's colour on a copy and blended 0.4 (old) / 0.6 (copy).
  The release draws the palette's RGB triples into a BGR canvas and converts it to RGB at the
  end, so every colour lands channel-reversed; kept here;
- 17 limb maps: the L1 distance transform to the limb's ellipse, / 3, clipped to 255, truncated
  to uint8 (all 255 for a limb with a missing end).
Then resize to the load size (the skeleton nearest, the distance maps bilinear), crop, flip, and
scale to [0, 1]: 3 + 17 channels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor

from .augment import BILINEAR, NEAREST, Transform

# OpenPose COCO limbs, 1-based keypoint indices; the release lists 19 and draws the first 17.
LIMB_SEQ = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12),
    (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)  # fmt: skip
NUM_LIMBS = 17
NUM_KEYPOINTS = 18
COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
DISC_RADIUS = 4
STICK_WIDTH = 4
CHANNELS = 3 + NUM_LIMBS
SUBSET_COLUMNS = (NUM_KEYPOINTS, NUM_KEYPOINTS + 2)  # part indices [, score, part count]
CANDIDATE_COLUMNS = 4  # x, y, score, id


def _load_table(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keypoint file not found (referenced by {where})")
    try:
        with warnings.catch_warnings():
            # An empty file (no person detected) only warns; its shape is checked below.
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: malformed keypoint file ({e}; referenced by {where})") from None


def read_keypoints(base: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(candidate [N, 4] float64, subset [18] int64) from `<base>_candidate.txt` and
    `<base>_subset.txt`. ValueError naming the file and `where` (the list line that referenced
    it) for a wrong column count, a NaN, more than one person, or a subset index that is not -1
    and not a candidate row."""
    candidate_path = Path(f"{base}_candidate.txt")
    subset_path = Path(f"{base}_subset.txt")
    candidate = _load_table(candidate_path, where)
    subset = _load_table(subset_path, where)
    if candidate.size == 0:
        candidate = np.zeros((0, CANDIDATE_COLUMNS))
    if candidate.shape[1] != CANDIDATE_COLUMNS:
        raise ValueError(
            f"{candidate_path}: expected {CANDIDATE_COLUMNS} columns (x, y, score, id), got "
            f"{candidate.shape[1]} (referenced by {where})"
        )
    if subset.shape[0] != 1 or subset.shape[1] not in SUBSET_COLUMNS:
        raise ValueError(
            f"{subset_path}: expected one row of {NUM_KEYPOINTS} part indices (plus score and "
            f"part count: {SUBSET_COLUMNS[1]} columns), got shape {subset.shape} (referenced by "
            f"{where})"
        )
    for path, table in ((candidate_path, candidate), (subset_path, subset)):
        if not np.isfinite(table).all():
            raise ValueError(f"{path}: contains NaN or infinite values (referenced by {where})")
    parts = subset[0, :NUM_KEYPOINTS]
    if (parts != np.round(parts)).any():
        raise ValueError(
            f"{subset_path}: part indices must be integers, got {parts.tolist()} (referenced by "
            f"{where})"
        )
    parts = parts.astype(np.int64)
    bad = (parts < -1) | (parts >= len(candidate))
    if bad.any():
        raise ValueError(
            f"{subset_path}: part index {int(parts[bad][0])} is beyond the {len(candidate)} "
            f"candidates of {candidate_path} (expected -1 or 0..{len(candidate) - 1}; referenced "
            f"by {where})"
        )
    return candidate, parts


def draw_pose(
    candidate: np.ndarray, subset: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The skeleton [H, W, 3] uint8 (RGB, channel-reversed palette as the release) and per limb
    its filled ellipse [H, W] uint8 (255 inside), None for a limb with a missing end."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)  # the release's BGR canvas
    for i in range(NUM_KEYPOINTS):
        index = subset[i]
        if index == -1:
            continue
        x, y = candidate[index][0:2]
        cv2.circle(canvas, (int(x), int(y)), DISC_RADIUS, COLOURS[i], thickness=-1)
    limbs: list[np.ndarray | None] = []
    for i in range(NUM_LIMBS):
        ends = subset[np.array(LIMB_SEQ[i]) - 1]
        if (ends == -1).any():
            limbs.append(None)
            continue
        # The release's names: Y holds the x coordinates and X the y coordinates.
        ys = candidate[ends, 0]
        xs = candidate[ends, 1]
        mean_x, mean_y = np.mean(xs), np.mean(ys)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly(
            (int(mean_y), int(mean_x)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
        )
        limb_canvas = canvas.copy()
        cv2.fillConvexPoly(limb_canvas, polygon, COLOURS[i])
        canvas = cv2.addWeighted(canvas, 0.4, limb_canvas, 0.6, 0)
        mask = np.zeros((height, width), dtype=np.uint8)
        cv2.fillConvexPoly(mask, polygon, 255)
        limbs.append(mask)
    return np.ascontiguousarray(canvas[:, :, ::-1]), limbs


def distance_map(mask: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """uint8 [H, W]: L1 distance to the mask's pixels / 3, clipped to 255 (255 without mask)."""
    if mask is None:
        return np.full((height, width), 255, dtype=np.uint8)
    distance = cv2.distanceTransform(255 - mask, cv2.DIST_L1, 3)
    return np.clip(distance / 3, 0, 255).astype(np.uint8)


def encode_pose(
    candidate: np.ndarray, subset: np.ndarray, height: int, width: int, transform: Transform
) -> Tensor:
    """[20, crop, crop] float32 in [0, 1]: the skeleton's 3 channels, then the 17 limb maps,
    drawn at height x width (the photo's size) and resized / cropped / flipped by `transform`."""
    skeleton, limbs = draw_pose(candidate, subset, height, width)
    # Drawn at the load size already (DeepFashion's 256 px photos at load 256): PIL's resize
    # would return a copy, so skip the round trip.
    at_load = (height, width) == (transform.load_size, transform.load_size)
    crop = transform.crop_size
    out = np.empty((CHANNELS, crop, crop), dtype=np.uint8)
    if at_load:
        out[:3] = rearrange(transform.crop_flip(skeleton), "h w c -> c h w")
    else:
        resized = transform.apply(Image.fromarray(skeleton, "RGB"), NEAREST)
        out[:3] = rearrange(resized, "h w c -> c h w")
    for i, mask in enumerate(limbs):
        if mask is None:  # constant 255 under any resize, crop and flip
            out[3 + i] = 255
            continue
        distance = distance_map(mask, height, width)
        if at_load:
            out[3 + i] = transform.crop_flip(distance)
        else:
            out[3 + i] = transform.apply(Image.fromarray(distance), BILINEAR)
    return torch.from_numpy(out).float().div_(255)
