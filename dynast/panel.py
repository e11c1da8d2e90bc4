"""Labelled panels: tiles in rows on white, each row labelled on the left and its tiles captioned
above. The pictures of `eval.generate --visualize` and `eval.translate`, and the training sample
grids, are drawn with it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Tiles smaller than this are enlarged (nearest, by a whole factor) so that labels fit them.
MIN_TILE = 96
FONT_SIZE = 12
_INK = (0, 0, 0)


@dataclass(frozen=True)
class PanelRow:
    """One row of a labelled panel: its label (left), tiles, and captions above the tiles."""

    label: str
    tiles: Sequence[np.ndarray | None]
    captions: Sequence[str] | None = None


def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return math.ceil(right - left)


def labelled_panel(rows: Sequence[PanelRow], gap: int = 6) -> np.ndarray:
    """Tiles [H, W, 3] uint8 (one size; None leaves a blank) in rows on white, each row labelled
    on the left and its captions written above its tiles."""
    tile = next(t for row in rows for t in row.tiles if t is not None)
    zoom = max(1, math.ceil(MIN_TILE / min(tile.shape[:2])))
    th, tw = tile.shape[0] * zoom, tile.shape[1] * zoom
    font = _font()
    line = FONT_SIZE + 4
    columns = max(len(row.tiles) for row in rows)
    widths = [tw] * columns
    for row in rows:
        for c, caption in enumerate(row.captions or ()):
            widths[c] = max(widths[c], _text_width(font, caption) + gap)
    margin = max(_text_width(font, row.label) for row in rows) + 2 * gap
    heights = [(line if row.captions else 0) + th + gap for row in rows]
    canvas = Image.new("RGB", (margin + sum(w + gap for w in widths), gap + sum(heights)), "white")
    draw = ImageDraw.Draw(canvas)
    y = gap
    for row, height in zip(rows, heights, strict=True):
        top = y + (line if row.captions else 0)
        draw.text((gap, top + th // 2), row.label, fill=_INK, font=font, anchor="lm")
        x = margin
        for c in range(columns):
            caption = row.captions[c] if row.captions and c < len(row.captions) else ""
            if caption:
                draw.text((x + widths[c] // 2, y), caption, fill=_INK, font=font, anchor="ma")
            t = row.tiles[c] if c < len(row.tiles) else None
            if t is not None:
                picture = Image.fromarray(t).resize((tw, th), Image.Resampling.NEAREST)
                canvas.paste(picture, (x + (widths[c] - tw) // 2, top))
            x += widths[c] + gap
        y += height
    return np.asarray(canvas)
