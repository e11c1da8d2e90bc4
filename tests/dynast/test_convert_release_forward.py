"""The converted generator computes what the release's forward computes with the same state dict.

`release_forward` below is written from the release's `DynaSTGenerator.forward` (Huage001/DynaST
114dd06, models/networks/generator.py and the modules it calls) as plain functions over the
*release-named* state dict: old-style spectral norm from `weight_orig` / `weight_u` / `weight_v`,
1x1 convolutions, `embed_q1` as the last fusion block, eval-mode batch norm. Only the attention
itself is delegated to `kernels` (that the operators equal the release's attention is the kernels'
own tests' business); everything the converter's table decides - which tensor goes to which
module - is exercised here, so a swapped or misplaced tensor changes the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

import kernels
from dynast.blocks import l2_normalize_channels, positional_norm
from dynast.config import preset
from dynast.convert import convert_generator

FIXTURE = Path(__file__).parent / "fixtures" / "release_deepfashion256_keys.json"


class ReleaseFunctions:
    """The release's modules as functions of its state dict `sd`."""

    def __init__(self, sd: dict[str, Tensor]) -> None:
        self.sd = sd

    def conv(self, name: str, x: Tensor, stride: int = 1) -> Tensor:
        sd = self.sd
        if f"{name}.weight_orig" in sd:
            w = sd[f"{name}.weight_orig"]
            u, v = sd[f"{name}.weight_u"], sd[f"{name}.weight_v"]
            w = w / torch.dot(u, w.reshape(w.shape[0], -1) @ v)  # eval: no power iteration
        else:
            w = sd[f"{name}.weight"]
        if w.shape[-1] > 1:
            x = F.pad(x, [1, 1, 1, 1], mode="reflect")
        return F.conv2d(x, w, sd[f"{name}.bias"], stride=stride)

    def bn(self, name: str, x: Tensor) -> Tensor:
        sd = self.sd
        return F.batch_norm(
            x,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            False,
            0.1,
            1e-5,
        )

    def prelu(self, name: str, x: Tensor) -> Tensor:
        return F.prelu(x, self.sd[name])

    def spade(self, name: str, x: Tensor, signal: Tensor) -> Tensor:
        if signal.shape[-2:] != x.shape[-2:]:
            signal = F.interpolate(signal, x.shape[-2:])
        hidden = F.relu(self.conv(f"{name}.mlp_shared.0", signal))
        gamma = self.conv(f"{name}.mlp_gamma", hidden)
        beta = self.conv(f"{name}.mlp_beta", hidden)
        return (1 + gamma) * positional_norm(x) + beta

    def residual(self, name: str, x: Tensor) -> Tensor:
        y = self.prelu(
            f"{name}.relu.weight", self.bn(f"{name}.model.1", self.conv(f"{name}.model.0", x))
        )
        y = self.bn(f"{name}.model.4", self.conv(f"{name}.model.3", y))
        return self.prelu(f"{name}.relu.weight", x + y)

    def spade_res(self, name: str, x: Tensor, seg: Tensor) -> Tensor:
        act = f"{name}.relu.weight"
        dx = self.conv(f"{name}.conv_0", self.prelu(act, self.spade(f"{name}.norm_0", x, seg)))
        dx = self.conv(f"{name}.conv_1", self.prelu(act, self.spade(f"{name}.norm_1", dx, seg)))
        return self.prelu(act, x + dx)

    def encoder(self, name: str, x: Tensor) -> list[Tensor]:
        out = []
        for i in range(4):
            x = self.conv(f"{name}.layer{i + 1}.0", x, stride=1 if i == 0 else 2)
            x = self.residual(f"{name}.layer{i + 1}.2", F.instance_norm(x, eps=1e-5))
            out.append(x)
        return out[::-1]  # x4, x3, x2, x1

    def up(self, name: str, x: Tensor, leaky: bool = False) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = self.conv(f"{name}.1", x)
        return F.leaky_relu(x) if leaky else F.relu(x)

    def transformer(self, name, q, kv, pos, seg, prev_topk, inter_scale, dense, topk):
        b, _, h, w = q.shape
        pos = pos.repeat(b, 1, 1, 1)
        query = torch.cat([l2_normalize_channels(q), pos], dim=1)
        key = torch.cat([l2_normalize_channels(kv), pos], dim=1)

        def tokens(conv: str, x: Tensor) -> Tensor:
            return rearrange(self.conv(f"{name}.{conv}", x), "b c h w -> b (h w) c")

        args = (tokens("f", query), tokens("g", key), tokens("h", kv))
        args += (tokens("f_prune", query), tokens("g_prune", key))
        if dense:  # smooth = sqrt(C_qk); prune scores / C_p
            common = dict(scale=args[0].shape[-1] ** -0.5, prune_scale=1 / args[3].shape[-1])
            result = kernels.dynamic_attention(*args, topk=topk, **common)
        else:  # smooth = 0.01; prune scores unscaled
            make = kernels.inter_scale_candidates if inter_scale else kernels.inner_scale_candidates
            candidates = make(prev_topk, h, w)
            result = kernels.candidate_attention(
                *args, candidates, scale=100.0, prune_scale=1.0, topk=topk
            )
        attn = rearrange(result.out, "b (h w) c -> b c h w", h=h, w=w)
        conf = rearrange(result.conf, "b (h w) -> b 1 h w", h=h, w=w)
        y = positional_norm(attn + (1 - conf) * self.spade(f"{name}.spade", q, seg) + q)
        return self.residual(f"{name}.res_block", y), result.topk


def release_forward(sd, seg_map, ref_img, ref_seg_map, n_layers=2, topk=4) -> Tensor:
    r = ReleaseFunctions(sd)
    ref_input = torch.cat([ref_img, ref_seg_map], dim=1)
    qs = r.encoder("encoder_q", seg_map)
    kvs = r.encoder("encoder_kv", ref_input)
    q = r.spade_res("embed_q4", qs[0], seg_map)
    kv = r.spade_res("embed_kv4", kvs[0], ref_input)
    pos, x, top = sd["pos_embed"], q, None
    for i in range(n_layers):
        x, top = r.transformer(f"transformer_4.{i}", x, kv, pos, seg_map, top, False, True, topk)
    for s, level in enumerate((3, 2, 1), start=1):
        pair = f"{level + 1}{level}"
        x = r.up(f"decoder_{pair}", x)
        q = r.spade_res(f"embed_q{level}", r.up(f"decoder_q{pair}", q) + qs[s], seg_map)
        kv = r.spade_res(f"embed_kv{level}", r.up(f"decoder_kv{pair}", kv) + kvs[s], ref_input)
        pos = r.up(f"pos_{pair}", pos, leaky=True)
        xs = q
        for i in range(n_layers):
            xs, top = r.transformer(
                f"transformer_{level}.{i}", xs, kv, pos, seg_map, top, i == 0, False, topk
            )
        fuse = "embed_q1" if level == 1 else f"embed_{level}"  # the release calls embed_q1
        x = r.spade_res(fuse, x + xs, seg_map)
    return torch.tanh(r.conv("decoder_10.0", x))


def test_converted_generator_equals_the_release_forward():
    layout = json.loads(FIXTURE.read_text())
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key, shape in layout["generator"]:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("weight_orig", "mlp_gamma.weight", "mlp_beta.weight")):
            sd[key] = torch.randn(shape, generator=gen) * 0.05
        else:
            sd[key] = torch.randn(shape, generator=gen) * 0.1
    for key in sd:
        if key.endswith("model.2.weight"):
            sd[key] = sd[key.replace("model.2.weight", "relu.weight")]
    # A small output conv keeps tanh off saturation, where it would hide differences.
    sd["decoder_10.0.weight"] = sd["decoder_10.0.weight"] * 0.002
    cfg = preset("deepfashion-256")
    model = convert_generator(sd, cfg, "test")
    size = 32  # 4x4 at the coarsest scale
    seg = torch.rand(1, cfg.semantic_nc, size, size, generator=gen)
    ref = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    ref_seg = torch.rand(1, cfg.semantic_nc, size, size, generator=gen)
    # Below 256 px the release would fail on its 32x32 pos_embed; ours resizes it bilinearly,
    # so the release side gets the same resized map.
    small = F.interpolate(sd["pos_embed"], size=(size // 8, size // 8), mode="bilinear")
    sd_small = dict(sd, pos_embed=small)
    with torch.no_grad():
        expected = release_forward(sd_small, seg, ref, ref_seg)
        got = model(seg, ref, ref_seg).image
    diff = (got - expected).abs()
    assert expected.std() > 1e-2 and (expected.abs() > 0.99).float().mean() < 0.01
    # Identical maths up to 1x1-conv vs linear rounding (~1e-7 here). A misplaced tensor moves
    # the mean by 2e-5 (a value-projection bias doubled) to 5e-1 (embed_1 used for embed_q1).
    assert diff.mean() < 5e-6 and (diff > 1e-3).float().mean() < 1e-3, diff.max()
