"""CelebA-HQ's 15-channel edge encoding (the release's `get_label_tensor` of CoCosNet
`data/celebahqedge_dataset.py`).

Everything is computed at the load size: the photo resized bilinear (for Canny), each part mask of
CelebAMask-HQ resized nearest. Per part of INNER_PARTS (a missing file is an empty part): its
contour (pixels whose right/left/lower/upper neighbour has another mask value) and the L1 distance
transform to that contour / 3, clipped to 255 (uint8). The face-interior mask is 1 except on the
parts, the hair (last) giving its pixels back; Canny edges of the grey photo (scikit-image
defaults) inside it are added to the union of contours. Channels: [all edges, 13 distance maps,
part contours], each cropped and flipped by the sample's transform and scaled to [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .augment import BILINEAR, NEAREST, Transform

INNER_PARTS = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "l_ear", "r_ear", "nose", "u_lip", "mouth",
    "l_lip", "eye_g", "hair",
)  # fmt: skip
CHANNELS = 2 + len(INNER_PARTS)


def add_contours(edge: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mark, in place, both pixels of every horizontally or vertically adjacent pair whose mask
    values differ (the release's `get_edges`, same order of updates)."""
    edge[:, 1:] = edge[:, 1:] | (mask[:, 1:] != mask[:, :-1])
    edge[:, :-1] = edge[:, :-1] | (mask[:, 1:] != mask[:, :-1])
    edge[1:, :] = edge[1:, :] | (mask[1:, :] != mask[:-1, :])
    edge[:-1, :] = edge[:-1, :] | (mask[1:, :] != mask[:-1, :])
    return edge


def canny(grey: np.ndarray) -> np.ndarray:
    """scikit-image's Canny with its defaults (sigma 1, thresholds 10% / 20% of the dtype range),
    as the release calls it."""
    try:
        from skimage import feature
    except ImportError:
        raise ValueError(
            "kind 'celebahq-edge' needs scikit-image for its Canny edges: pip install scikit-image"
        ) from None
    return feature.canny(grey)


def edges_at_load(
    photo: Image.Image, parts: dict[str, Image.Image | None], load: int
) -> np.ndarray:
    """uint8 [15, load, load]: the encoding before the crop and flip (every channel is computed
    at the load size, so one draw's crop and flip commute with it)."""
    image = photo.resize((load, load), BILINEAR)
    inner = np.ones((load, load), dtype=np.uint8)
    edges = np.zeros((load, load), dtype=np.uint8)
    out = np.empty((CHANNELS, load, load), np.uint8)
    for i, name in enumerate(INNER_PARTS):
        edge = np.zeros((load, load), dtype=np.uint8)
        part = parts.get(name)
        if part is not None:
            mask = np.array(part.convert("L").resize((load, load), NEAREST))
            inner[mask == 255] = 1 if name == "hair" else 0
            edges = add_contours(edges, mask)
            edge = add_contours(edge, mask)
        distance = cv2.distanceTransform(255 - edge * 255, cv2.DIST_L1, 3)
        # The release resizes this map bilinear to the load size it already has: a no-op.
        out[1 + i] = np.clip(distance / 3, 0, 255).astype(np.uint8)
    background = canny(np.array(image.convert("L"))) * inner
    every = edges + background
    every[every > 1] = 1
    edges[edges > 1] = 1
    out[0] = every * 255
    out[-1] = edges * 255
    return out


def crop_encoding(encoding: np.ndarray, transform: Transform) -> Tensor:
    """[C, load, load] uint8 -> [C, crop, crop] float32 in [0, 1] under the draw's crop / flip."""
    cropped = transform.crop_flip(np.ascontiguousarray(encoding.transpose(1, 2, 0)))
    return torch.from_numpy(np.ascontiguousarray(cropped.transpose(2, 0, 1))).float().div_(255)


def encode_edges(
    photo: Image.Image, parts: dict[str, Image.Image | None], transform: Transform
) -> Tensor:
    """[15, crop, crop] float32 in [0, 1] from the photo and its part masks (None: missing)."""
    return crop_encoding(edges_at_load(photo, parts, transform.load_size), transform)
