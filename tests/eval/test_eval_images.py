"""Image folders: modes converted or refused, empty folders, unreadable files, mixed sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.images import FolderImages, ImageFolderError, read_image, scan_folder


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trips_exactly(tmp_path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    got = read_image(save(tmp_path / "a.png", array))
    assert got.dtype == torch.uint8 and got.shape == (3, 9, 13)
    assert torch.equal(got, torch.from_numpy(array).permute(2, 0, 1))


def test_greyscale_and_palette_are_expanded_to_rgb(tmp_path) -> None:
    grey = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    got = read_image(save(tmp_path / "g.png", grey))
    assert got.shape == (3, 8, 8)
    assert all(torch.equal(got[c], torch.from_numpy(grey)) for c in range(3))
    rgb = np.random.default_rng(2).integers(0, 4, (8, 8, 3), dtype=np.uint8) * 60
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(tmp_path / "p.png")
    assert torch.equal(read_image(tmp_path / "p.png"), torch.from_numpy(rgb).permute(2, 0, 1))


def test_opaque_alpha_is_dropped_and_transparency_refused(tmp_path) -> None:
    rgba = np.random.default_rng(3).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    got = read_image(save(tmp_path / "opaque.png", rgba))
    assert torch.equal(got, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).contiguous())
    rgba[2, 3, 3] = 10
    with pytest.raises(ImageFolderError, match="transparent"):
        read_image(save(tmp_path / "transparent.png", rgba))


def test_unsupported_modes_are_refused_by_name(tmp_path) -> None:
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8)).save(cmyk)
    with pytest.raises(ImageFolderError, match=r"c\.jpg.*CMYK"):
        read_image(cmyk)
    (tmp_path / "sixteen").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(tmp_path / "sixteen" / "deep.png")
    with pytest.raises(ImageFolderError, match=r"deep\.png"):
        scan_folder(tmp_path / "sixteen")


def test_empty_folder_and_missing_folder(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFolderError, match="no images"):
        scan_folder(tmp_path, "--fake")
    with pytest.raises(ImageFolderError, match="not a folder"):
        scan_folder(tmp_path / "absent", "--real")


def test_unreadable_file_is_named(tmp_path) -> None:
    save(tmp_path / "good.png", np.zeros((8, 8, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageFolderError, match=r"broken\.png"):
        scan_folder(tmp_path)


def test_truncated_file_fails_when_decoded(tmp_path) -> None:
    array = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = save(tmp_path / "t.png", array)
    path.write_bytes(path.read_bytes()[:-200])
    folder = scan_folder(tmp_path)  # headers are fine
    with pytest.raises(ImageFolderError, match=r"t\.png"):
        FolderImages(folder)[0]


def test_mixed_sizes_and_duplicate_names_are_refused(tmp_path) -> None:
    save(tmp_path / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    save(tmp_path / "b.png", np.zeros((8, 9, 3), dtype=np.uint8))
    with pytest.raises(ImageFolderError, match="differ in size"):
        scan_folder(tmp_path)
    (tmp_path / "b.png").unlink()
    save(tmp_path / "a.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ImageFolderError, match="share a name"):
        scan_folder(tmp_path)


def test_folder_summary_records_count_size_and_format(tmp_path) -> None:
    for name in ("b", "a", "c"):
        save(tmp_path / f"{name}.jpeg", np.zeros((5, 6, 3), dtype=np.uint8))
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "ignored.png", np.zeros((7, 7, 3), dtype=np.uint8))
    folder = scan_folder(tmp_path)
    assert folder.names == ("a", "b", "c")
    assert folder.summary() == {"path": str(tmp_path), "count": 3, "size": [5, 6], "format": "jpg"}
    save(tmp_path / "d.png", np.zeros((5, 6, 3), dtype=np.uint8))
    assert scan_folder(tmp_path).format == "mixed:jpg,png"
