"""Grey-level texture crops from the photos that scikit-image bundles in its package folder.

scikit-image is a development dependency only: these files are read straight from its installed
package folder with PIL (nothing is imported from it and nothing is downloaded). Without it the
synthetic dataset uses procedural patterns alone (`DataConfig.textures`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# File, and how many source pixels make one pixel of a 64-pixel sample: chosen so that bricks,
# pebbles, blades, fur and wood grain come out a few pixels wide, i.e. texture rather than noise.
PHOTO_SOURCES: tuple[tuple[str, float], ...] = (
    ("brick.png", 4.0),
    ("grass.png", 1.5),
    ("gravel.png", 1.5),
    ("coffee.png", 2.0),
    ("chelsea.png", 1.5),
    ("ihc.png", 2.0),
)


def _skimage_data_folder() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def photo_textures_available() -> bool:
    """True when scikit-image is installed with every bundled photo that the textures use."""
    folder = _skimage_data_folder()
    return folder is not None and all((folder / name).is_file() for name, _ in PHOTO_SOURCES)


@functools.lru_cache(maxsize=4)
def photo_textures(image_size: int) -> tuple[np.ndarray, ...]:
    """The texture photos as grey float32 maps in [0, 1], contrast-stretched, scaled for samples
    of `image_size` pixels. Raises FileNotFoundError when scikit-image or a photo is missing."""
    folder = _skimage_data_folder()
    if folder is None:
        raise FileNotFoundError(
            "textures='photo' needs scikit-image (pip install scikit-image): its bundled photos "
            "are the texture source; use textures='procedural' without it"
        )
    textures = []
    for name, shrink in PHOTO_SOURCES:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: bundled scikit-image photo missing")
        with Image.open(path) as photo:
            grey = photo.convert("L")
            factor = image_size / (64.0 * shrink)
            size = (max(8, round(grey.width * factor)), max(8, round(grey.height * factor)))
            resample = Image.Resampling.BOX if factor < 1 else Image.Resampling.BICUBIC
            grey = grey.resize(size, resample)
            values = np.asarray(grey, dtype=np.float32)
        low, high = np.percentile(values, [2.0, 98.0])
        texture = np.clip((values - low) / max(high - low, 1.0), 0.0, 1.0)
        texture.setflags(write=False)  # shared through the cache
        textures.append(texture)
    return tuple(textures)
