"""semantic_to_rgb and the pair-grid picture tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynast.data import semantic_to_rgb
from dynast.data.palette import palette
from dynast.data.visualize import main as visualize_main


def test_semantic_to_rgb_paints_the_argmax_class() -> None:
    generator = torch.Generator().manual_seed(0)
    semantic = torch.rand(2, 11, 5, 7, generator=generator)
    rgb = semantic_to_rgb(semantic)
    assert rgb.shape == (2, 3, 5, 7) and rgb.dtype == torch.float32
    assert rgb.min() >= -1 and rgb.max() <= 1
    colours = palette(11) * 2 - 1
    for b in range(2):
        for y in range(5):
            for x in range(7):
                want = colours[int(semantic[b, :, y, x].argmax())]
                assert np.allclose(rgb[b, :, y, x].numpy(), want)


def test_palette_is_fixed_and_distinct() -> None:
    assert np.array_equal(palette(8), palette(20)[:8])  # a class keeps its colour
    colours = palette(20)
    assert np.array_equal(colours[0], np.zeros(3))
    gaps = np.abs(colours[:, None] - colours[None]).max(-1) + np.eye(20)
    assert gaps.min() > 0.05


def test_semantic_to_rgb_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"semantic must be a \[B, Cs, H, W\] tensor"):
        semantic_to_rgb(torch.zeros(3, 4, 4))


def test_visualize_writes_a_grid(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    args = ["--out", str(out), "--count", "3", "--image-size", "16", "--zoom", "2"]
    assert visualize_main([*args, "--textures", "procedural"]) == 0
    grid = np.asarray(Image.open(out))
    gap = 2
    assert grid.shape == (3 * (32 + gap) + gap, 4 * (32 + gap) + gap, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
