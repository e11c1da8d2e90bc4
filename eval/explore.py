"""The correspondence explorer: one self-contained HTML page per generated image (`explore.html`
of `eval.translate --explore`, `OUT/explore/<name>.html` of `eval.generate --explore`).

The page embeds everything (PNG images as data URLs, the attention as base64 arrays, its script
inline) and its Content-Security-Policy forbids every fetch, so it opens from disk anywhere and
never touches the network. Pointing at a pixel of the output or the input shows, on the
exemplar, the top-k positions each scale's last attention block attends to from there, with
their weights and which the mask pruned, and the confidence at that position.

Attention arrays per scale (`eval.attention_export.ScaleAttention`), little-endian:
- the finest scale, which holds most of the queries: key indices in the smallest unsigned type
  that holds the key count (uint8 up to 256 keys, uint16 up to 65,536: a 256 x 256 grid), weights
  and confidence as uint8 (value / 255);
- the coarser scales in full: int32 indices, float32 weights and confidence;
- the pruned flags of every scale as bits (numpy's packbits, most significant bit first).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from eval.attention_export import ScaleAttention
from eval.visualize import heat_pixels, semantic_pixels, to_pixels

TEMPLATE = Path(__file__).with_name("explore_template.html")
INDEX_TEMPLATE = Path(__file__).with_name("explore_index_template.html")
DATA_MARK = "/*EXPLORE_DATA*/"
# Images are shown at least this many CSS pixels wide (a whole zoom factor, nearest).
DISPLAY_MIN = 256


def png_url(pixels: np.ndarray) -> str:
    """uint8 [H, W, 3] -> a data: URL of its PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def packed(values: np.ndarray, dtype: str, scale: float = 1.0) -> dict[str, object]:
    """An array as {"dtype", "scale", "data": base64 of its little-endian bytes}; the page reads
    value = stored * scale."""
    array = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    data = base64.b64encode(array.tobytes()).decode("ascii")
    return {"dtype": dtype, "scale": scale, "data": data}


def index_type(keys: int) -> str:
    """The smallest unsigned type of the page that holds indices 0..keys-1."""
    if keys <= 2**8:
        return "uint8"
    if keys <= 2**16:
        return "uint16"
    return "int32"


def quantised(values: Tensor) -> np.ndarray:
    """[0, 1] values -> uint8 round(value * 255)."""
    return np.rint(values.clamp(0, 1).numpy() * 255).astype(np.uint8)


def scale_record(attention: ScaleAttention, *, compact: bool) -> dict[str, object]:
    """One scale's attention as the page reads it (see the module docstring)."""
    h, w = attention.size
    record: dict[str, object] = {
        "block": attention.block,
        "size": [h, w],
        "kind": attention.kind,
        "k": int(attention.topk.shape[1]),
        "pruned": base64.b64encode(np.packbits(attention.pruned.numpy().reshape(-1))).decode(),
    }
    if compact:
        record["index"] = packed(attention.topk.numpy(), index_type(h * w))
        record["weight"] = packed(quantised(attention.weights), "uint8", 1 / 255)
        record["conf"] = packed(quantised(attention.conf), "uint8", 1 / 255)
    else:
        record["index"] = packed(attention.topk.numpy(), "int32")
        record["weight"] = packed(attention.weights.numpy(), "float32")
        record["conf"] = packed(attention.conf.numpy(), "float32")
    return record


def page_data(
    *,
    title: str,
    notes: Sequence[str],
    kind: str,
    semantic: Tensor,
    exemplar_semantic: Tensor,
    exemplar: Tensor,
    image: Tensor,
    scales: Sequence[ScaleAttention],
    warps: Sequence[Tensor],
) -> dict[str, object]:
    """Everything the page shows for one sample: semantic maps [Cs, H, W], exemplar and image
    [3, H, W] in [-1, 1], per scale (coarsest first) its attention and its warped exemplar
    [3, h, w]."""
    size = int(image.shape[-1])
    records = []
    for i, (attention, warp) in enumerate(zip(scales, warps, strict=True)):
        record = scale_record(attention, compact=i == len(scales) - 1)
        record["warp"] = png_url(to_pixels(warp))
        record["conf_map"] = png_url(heat_pixels(attention.conf.reshape(1, *attention.size), 1.0))
        records.append(record)
    return {
        "title": title,
        "notes": list(notes),
        "size": size,
        "display": size * max(1, -(-DISPLAY_MIN // size)),
        "images": {
            "input": png_url(semantic_pixels(semantic, kind)),
            "exemplar_input": png_url(semantic_pixels(exemplar_semantic, kind)),
            "exemplar": png_url(to_pixels(exemplar)),
            "output": png_url(to_pixels(image)),
        },
        "scales": records,
    }


def _script_json(data: object) -> str:
    # Inside <script>: "<" escaped, so no file name can close the element.
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def explore_page(**kwargs) -> str:
    """The page's HTML for `page_data(**kwargs)`."""
    data = page_data(**kwargs)
    return TEMPLATE.read_text().replace(DATA_MARK, _script_json(data), 1)


def index_page(title: str, entries: Sequence[tuple[str, str, np.ndarray]]) -> str:
    """A page linking several explorer pages: (name, relative link, output thumbnail [H, W, 3])."""
    items = "\n".join(
        f'<a class="item" href="{html.escape(link)}"><img src="{png_url(pixels)}" '
        f'alt="{html.escape(name)}"><span>{html.escape(name)}</span></a>'
        for name, link, pixels in entries
    )
    page = INDEX_TEMPLATE.read_text()
    return page.replace("<!--TITLE-->", html.escape(title)).replace("<!--ITEMS-->", items)
