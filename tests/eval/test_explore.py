"""The correspondence explorer: the attention it exports against a float64 recomputation from the
attention's definition, the page's arrays decoded back against the model's top-k, and, in a
headless Chromium, a click on a known pixel that highlights exactly the model's top-k of that
query with no network request."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _assert import assert_close
from PIL import Image

import kernels
from dynast.config import preset
from dynast.data import DataConfig, build_dataset
from dynast.generator import Generator
from dynast.io import load_generator, save_pretrained
from eval.attention_export import AttentionRecorder, last_blocks, scale_attention
from eval.explore_browser import missing_tools, open_page
from eval.generate import main as generate_main
from eval.translate import main as translate_main
from eval.visualize import to_pixels

TINY = dataclasses.replace(
    preset("synthetic-64-narrow"), name="tiny-32", image_size=32, ngf=4, num_scales=3,
    max_multiplier=2,
)  # fmt: skip
PAGE_TYPES = {"uint8": "<u1", "uint16": "<u2", "int32": "<i4", "float32": "<f4"}


def run_recorded(cfg, seed: int = 0):
    torch.manual_seed(seed)
    generator = Generator(cfg).eval()
    batch = torch.utils.data.default_collate(
        [build_dataset(DataConfig(num_classes=8, image_size=cfg.image_size), "test")[0]]
    )
    with torch.no_grad(), AttentionRecorder(generator) as recorder:
        output = generator(batch["semantic"], batch["exemplar"], batch["exemplar_semantic"])
    return generator, output, recorder


def test_exported_weights_and_mask_follow_the_definition() -> None:
    # topk = every key of the 4 x 4 coarsest grid: there the kept weights sum to the confidence.
    cfg = dataclasses.replace(TINY, image_size=16, topk=16, init_gain=0.3)
    generator, output, recorder = run_recorded(cfg)
    scales = scale_attention(generator, output, recorder)
    assert [s.size for s in scales] == [(4, 4), (8, 8), (16, 16)]
    assert [s.kind for s in scales] == ["dense", "inner", "inner"]
    for s in scales:
        block = generator.transformer[s.block // cfg.blocks_per_scale][-1]
        store = {k: v[0].double() for k, v in recorder.projections[s.block].items()}
        q, k, qp, kp = store["to_q"], store["to_k"], store["to_q_prune"], store["to_k_prune"]
        if s.kind == "dense":
            candidates = torch.arange(k.shape[0]).expand(q.shape[0], -1)
        else:
            previous = output.topks[s.block - 1]
            listed = kernels.inner_scale_candidates(previous, *s.size)
            candidates = listed.indices[0].long()
        z = block.scale * torch.einsum("qc,qmc->qm", q, k[candidates])
        p = torch.softmax(z, dim=-1)
        position = (candidates[:, :, None] == s.topk[:, None, :]).float().argmax(dim=1)
        expected = torch.gather(p, 1, position)
        # The fp32 scores are off by at most n u sum|q k| each (n channels, u = 2^-24); a weight
        # exp(z - logsumexp z) moves by its own size times twice the largest such error.
        terms = block.scale * torch.einsum("qc,qmc->qm", q.abs(), k[candidates].abs())
        bound = 2 * q.shape[-1] * 2.0**-24 * terms.max(dim=-1, keepdim=True).values
        assert_close(
            s.weights,
            expected,
            name=f"weights of block {s.block}",
            atol=2 * bound * expected,
            rtol=1e-5,
        )
        # The mask where the float64 logit is clear of rounding (|s| above 1e-6 of its terms).
        logits = block.prune_scale * torch.einsum("qc,qkc->qk", qp, kp[s.topk])
        terms = block.prune_scale * torch.einsum("qc,qkc->qk", qp.abs(), kp[s.topk].abs())
        clear = logits.abs() > 1e-6 * terms
        assert clear.float().mean() > 0.9
        assert torch.equal(s.pruned[clear], (logits <= 0)[clear])
        assert torch.equal(s.topk, output.topks[s.block][0])
        assert (s.weights[:, :-1] >= s.weights[:, 1:] - 1e-6).all(), "best first"
        if s.kind == "dense":  # all 16 keys listed: the kept weights sum to the confidence
            rows = clear.all(-1)
            kept_sum = (s.weights * ~s.pruned).sum(-1)
            assert_close(kept_sum[rows], s.conf[rows], name="kept weights vs confidence")


def page_data(path: Path) -> dict:
    text = path.read_text()
    found = re.search(r'<script type="application/json" id="explore-data">(.*?)</script>', text)
    return json.loads(found.group(1))


def decoded(spec: dict) -> np.ndarray:
    raw = base64.b64decode(spec["data"])
    return np.frombuffer(raw, dtype=PAGE_TYPES[spec["dtype"]]) * spec["scale"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_pretrained(Generator(TINY), tmp_path_factory.mktemp("tiny") / "model")


def test_generate_explore_pages_hold_the_models_attention(model_dir, tmp_path) -> None:
    out = tmp_path / "gen"
    argv = ["--model", str(model_dir), "--out", str(out), "--count", "2", "--explore"]
    assert generate_main(argv) == 0
    index = (out / "explore" / "index.html").read_text()
    assert 'href="000000.html"' in index and 'href="000001.html"' in index
    generator = load_generator(model_dir)
    batch = torch.utils.data.default_collate(
        [build_dataset(DataConfig(num_classes=8, image_size=32), "test")[i] for i in range(2)]
    )
    with torch.no_grad(), AttentionRecorder(generator) as recorder:
        output = generator(batch["semantic"], batch["exemplar"], batch["exemplar_semantic"])
    for b in range(2):
        page = out / "explore" / f"{b:06d}.html"
        text = page.read_text()
        assert "Content-Security-Policy" in text and "default-src 'none'" in text
        assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"(?!data:)", text)
        data = page_data(page)
        assert data["size"] == 32 and data["display"] == 256
        expected = scale_attention(generator, output, recorder, b)
        types = [s["index"]["dtype"] for s in data["scales"]]
        assert types == ["int32", "int32", "uint16"], "finest compact, coarser in full"
        for record, attention in zip(data["scales"], expected, strict=True):
            assert record["size"] == list(attention.size) and record["block"] == attention.block
            k = record["k"]
            assert np.array_equal(decoded(record["index"]).reshape(-1, k), attention.topk)
            weights = torch.from_numpy(decoded(record["weight"]).reshape(-1, k)).float()
            step = 0.5 / 255 if record["weight"]["dtype"] == "uint8" else 1e-6
            assert (weights - attention.weights).abs().max() <= step + 1e-6
            bits = np.unpackbits(np.frombuffer(base64.b64decode(record["pruned"]), np.uint8))
            assert np.array_equal(bits[: attention.pruned.numel()], attention.pruned.reshape(-1))
    assert json.loads((out / "generation.json").read_text())["explore"] is True


def test_clicking_a_pixel_highlights_the_models_top_k(model_dir, tmp_path, capsys) -> None:
    missing = missing_tools()
    if missing is not None:
        pytest.skip(f"the explorer's browser test needs: {missing}")
    sample = build_dataset(DataConfig(num_classes=8, image_size=32), "test")[3]
    Image.fromarray(sample["label"].numpy().astype(np.uint8)).save(tmp_path / "layout.png")
    Image.fromarray(sample["exemplar_label"].numpy().astype(np.uint8)).save(tmp_path / "ex.png")
    Image.fromarray(to_pixels(sample["exemplar"])).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    code = translate_main(
        ["--model", str(model_dir), "--semantic", str(tmp_path / "layout.png"),
         "--exemplar", str(tmp_path / "photo.png"), "--exemplar-semantic", str(tmp_path / "ex.png"),
         "--out", str(out), "--explore"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    generator = load_generator(model_dir)
    with torch.no_grad():
        output = generator(
            sample["semantic"][None], sample["exemplar"][None], sample["exemplar_semantic"][None]
        )
    x, y = 20, 9  # the pixel clicked, of 32 x 32
    expected = []
    for block in last_blocks(generator):
        h, w = output.block_sizes[block]
        query = (y * h // 32) * w + x * w // 32
        expected.append(output.topks[block][0, query].tolist())

    with open_page(out / "explore.html") as opened:
        page = opened.page
        box = page.locator("#output").bounding_box()
        scale = box["width"] / 32
        page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale)
        rows = page.eval_on_selector_all(
            "#candidates tr.candidate",
            "rows => rows.map(r => [Number(r.dataset.scale), Number(r.dataset.key), "
            "r.dataset.pruned === '1'])",
        )
        drawn = json.loads(page.get_attribute("#exemplar-overlay", "data-drawn"))
        page.check("#show-pruned")
        drawn_all = json.loads(page.get_attribute("#exemplar-overlay", "data-drawn"))
        page.select_option("#scale", "0")
        drawn_coarsest = json.loads(page.get_attribute("#exemplar-overlay", "data-drawn"))
        requests, page_url = opened.requests, opened.url
    listed = [[key for s, key, _ in rows if s == i] for i in range(len(expected))]
    assert listed == expected
    kept = [[s, key] for s, key, pruned in rows if not pruned]
    assert [[d["scale"], d["key"]] for d in drawn] == kept, "pruned hidden by default"
    assert [[d["scale"], d["key"]] for d in drawn_all] == [[s, key] for s, key, _ in rows]
    assert [d["key"] for d in drawn_coarsest] == expected[0]
    assert requests == [page_url], f"the page made requests: {requests}"
