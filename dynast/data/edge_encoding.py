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


def encode_edges(
    photo: Image.Image, parts: dict[str, Image.Image | None], transform: Transform
) -> Tensor:
    """[15, crop, crop] float32 in [0, 1] from the photo and its part masks (None: missing)."""
    load = transform.load_size
    image = photo.resize((load, load), BILINEAR)
    inner = np.ones((load, load), dtype=np.uint8)
    edges = np.zeros((load, load), dtype=np.uint8)
    maps = np.empty((len(INNER_PARTS), transform.crop_size, transform.crop_size), np.uint8)
    for i, name in enumerate(INNER_PARTS):
        edge = np.zeros((load, load), dtype=np.uint8)
        part = parts.get(name)
        if part is not None:
            mask = np.array(part.convert("L").resize((load, load), NEAREST))
            inner[mask == 255] = 1 if name == "hair" else 0
            edges = add_contours(edges, mask)
            edge = add_contours(edge, mask)
        distance = cv2.distanceTransform(255 - edge * 255, cv2.DIST_L1, 3)
        distance = np.clip(distance / 3, 0, 255).astype(np.uint8)
        maps[i] = transform.apply(Image.fromarray(distance), BILINEAR)
    background = canny(np.array(image.convert("L"))) * inner
    every = edges + background
    every[every > 1] = 1
    edges[edges > 1] = 1
    first = transform.apply(Image.fromarray(every * 255), NEAREST)
    last = transform.apply(Image.fromarray(edges * 255), NEAREST)
    stacked = np.concatenate([first[None], maps, last[None]])
    return torch.from_numpy(stacked).float().div(255).contiguous()
