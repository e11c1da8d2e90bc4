"""The DynaST generator (docs/method.md sections 2 and 3).

Reads top to bottom as the forward pass does, coarsest scale first:

1. two encoders (semantic map; exemplar RGB + exemplar semantic map) give feature pyramids;
2. at each scale an embedding (SPADE residual block) per side: at the coarsest scale it reads the
   encoder feature, at finer scales the upsampled coarser embedding plus the encoder skip feature;
3. a learned positional map at the coarsest scale (interpolated when the input size differs from
   `config.image_size`), carried to finer scales by learned x2 upsamplers;
4. `blocks_per_scale` dynamic attention blocks per scale: dense at the coarsest scale; at finer
   scales the first block takes inter-scale candidates from the coarser scale's last top-k and the
   later blocks inner-scale candidates from the previous block's top-k;
5. a decoder: the coarsest transformer output is upsampled, added to the next scale's transformer
   output and fused by a SPADE residual block, scale after scale; a 3x3 conv and tanh at the end.

Ours differs from the release where docs/method.md says so: the interpolated positional map, any
number of scales and blocks per scale, and, unless `tie_finest_fusion` (on in the released
presets), a fusion block of its own at the finest scale where the release reuses its query
embedding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.candidates import candidate_list

from .activation_checkpoint import checkpointed
from .attention_block import DynamicAttentionBlock
from .blocks import Encoder, SPADEResBlock, Upsample2x, conv2d, resize_nearest
from .config import DynaSTConfig
from .region_gate import RegionGate


@dataclass
class GeneratorOutput:
    """image [B, 3, H, W] in [-1, 1]. Per attention block, in running order (coarsest first):
    warps [B, 3, h, w] (exemplar warped by that block; empty unless `with_warps`), confs
    [B, 1, h, w], topks [B, h*w, k] int64 key indices into the exemplar grid of the block's scale
    (`topks[-1]` is the finest), block_sizes (h, w), kept [B, 1, h, w] int64 numbers of kept
    candidates (empty unless `with_sparsity`)."""

    image: Tensor
    warps: list[Tensor] = field(default_factory=list)
    confs: list[Tensor] = field(default_factory=list)
    topks: list[Tensor] = field(default_factory=list)
    block_sizes: list[tuple[int, int]] = field(default_factory=list)
    kept: list[Tensor] = field(default_factory=list)


class Generator(nn.Module):
    """DynaST generator. `forward(semantic, exemplar, exemplar_semantic)` -> GeneratorOutput.

    `checkpoint_activations` (default False; training sets it from `train.checkpoint_activations`):
    with gradients enabled, every attention block and SPADE residual block (embeddings, fusion)
    runs under activation checkpointing (`dynast.activation_checkpoint`): its activations are
    rebuilt in the backward instead of kept, the gradients are the same bit for bit."""

    checkpoint_activations: bool = False

    def __init__(self, cfg: DynaSTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, DynaSTConfig):
            raise ValueError(f"Generator expects a DynaSTConfig, got {type(cfg).__name__}")
        self.config = cfg
        gain = cfg.init_gain
        widths = cfg.value_channels  # coarsest first
        pos_widths = cfg.pos_channels
        exemplar_nc = cfg.semantic_nc + 3
        norm = {"gain": gain, "norm_backend": cfg.norm_backend}

        self.encoder_q = Encoder(cfg.semantic_nc, widths[::-1], gain=gain)
        self.encoder_kv = Encoder(exemplar_nc, widths[::-1], gain=gain)
        self.embed_q = nn.ModuleList(SPADEResBlock(c, cfg.semantic_nc, **norm) for c in widths)
        self.embed_kv = nn.ModuleList(SPADEResBlock(c, exemplar_nc, **norm) for c in widths)
        # Released init: N(0, 1) at the coarsest scale of the training image size.
        size = cfg.coarsest_size
        self.pos_embed = nn.Parameter(torch.randn(1, pos_widths[0], size, size))

        transitions = list(itertools.pairwise(widths))
        self.up_q = nn.ModuleList(Upsample2x(a, b, nn.ReLU(), gain=gain) for a, b in transitions)
        self.up_kv = nn.ModuleList(Upsample2x(a, b, nn.ReLU(), gain=gain) for a, b in transitions)
        self.up_pos = nn.ModuleList(
            Upsample2x(a, b, nn.LeakyReLU(), gain=gain) for a, b in itertools.pairwise(pos_widths)
        )

        self.transformer = nn.ModuleList()
        for s, (cv, cpos, cp) in enumerate(
            zip(widths, pos_widths, cfg.prune_channels, strict=True)
        ):
            scale, prune_scale = cfg.attention_scales(s)
            blocks = nn.ModuleList(
                DynamicAttentionBlock(
                    cv,
                    cpos,
                    cp,
                    cfg.semantic_nc,
                    scale=scale,
                    prune_scale=prune_scale,
                    topk=cfg.topk,
                    warp_over=cfg.warp_over,
                    backend=cfg.attention_backend,
                    gain=gain,
                    norm_backend=cfg.norm_backend,
                )
                for _ in range(cfg.blocks_per_scale)
            )
            self.transformer.append(blocks)

        self.up_x = nn.ModuleList(Upsample2x(a, b, nn.ReLU(), gain=gain) for a, b in transitions)
        # Tied, the finest fusion is embed_q[-1] itself (`fusion_block`), registered once.
        fused = widths[1:-1] if cfg.tie_finest_fusion else widths[1:]
        self.fuse = nn.ModuleList(SPADEResBlock(c, cfg.semantic_nc, **norm) for c in fused)
        self.to_rgb = conv2d(widths[-1], 3, 3, gain=gain)
        if cfg.output_from_warp:
            # The correction starts at zero: the first image is the warped exemplar, not the
            # warped exemplar plus a random image (docs/default-run.md).
            nn.init.zeros_(self.to_rgb.weight)
            nn.init.zeros_(self.to_rgb.bias)
        self.region_gate = RegionGate(widths[-1]) if cfg.region_gate else None

    def _check_inputs(self, semantic: Tensor, exemplar: Tensor, exemplar_semantic: Tensor) -> None:
        cfg = self.config
        named = (
            ("semantic", semantic, cfg.semantic_nc),
            ("exemplar", exemplar, 3),
            ("exemplar_semantic", exemplar_semantic, cfg.semantic_nc),
        )
        for name, x, channels in named:
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
                raise ValueError(f"{name} must be a floating-point [B, C, H, W] tensor")
            if x.shape[1] != channels:
                raise ValueError(
                    f"{name} must have {channels} channels for preset {cfg.name!r}, "
                    f"got shape {tuple(x.shape)}"
                )
            if x.shape[0] != semantic.shape[0] or x.shape[2:] != semantic.shape[2:]:
                raise ValueError(
                    f"{name} shape {tuple(x.shape)} must match semantic's batch and spatial size "
                    f"{tuple(semantic.shape)}"
                )
        factor = 2 ** (cfg.num_scales - 1)
        height, width = semantic.shape[2:]
        if height % factor or width % factor or min(height, width) < 2 * factor:
            raise ValueError(
                f"image height and width must be multiples of {factor} and at least {2 * factor} "
                f"(num_scales={cfg.num_scales}), got {height}x{width}"
            )

    def fusion_block(self, scale: int) -> SPADEResBlock:
        """The block fusing the decoder with the transformer output at scale `scale` >= 1."""
        if self.config.tie_finest_fusion and scale == self.config.num_scales - 1:
            return self.embed_q[scale]
        return self.fuse[scale - 1]

    def positional_map(self, height: int, width: int) -> Tensor:
        """The learned positional map at the coarsest grid of an input of this size: bilinear
        interpolation when the size differs from the one trained at."""
        if tuple(self.pos_embed.shape[-2:]) == (height, width):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=(height, width), mode="bilinear")

    def forward(
        self,
        semantic: Tensor,
        exemplar: Tensor,
        exemplar_semantic: Tensor,
        *,
        with_warps: bool = False,
        with_sparsity: bool = False,
    ) -> GeneratorOutput:
        """semantic, exemplar_semantic [B, Cs, H, W]; exemplar [B, 3, H, W] in [-1, 1]."""
        self._check_inputs(semantic, exemplar, exemplar_semantic)
        exemplar_input = torch.cat([exemplar, exemplar_semantic], dim=1)
        q_skips = self.encoder_q(semantic)  # coarsest first
        kv_skips = self.encoder_kv(exemplar_input)
        warps, confs, topks, sizes, kept = [], [], [], [], []

        decoded = q = kv = pos = sem = finest_warp = finest_conf = None
        topk = None
        for s, blocks in enumerate(self.transformer):
            h, w = q_skips[s].shape[2:]
            sem = resize_nearest(semantic, (h, w))
            ex_cond = resize_nearest(exemplar_input, (h, w))
            if s == 0:
                q = self._run(self.embed_q[0], q_skips[0], sem)
                kv = self._run(self.embed_kv[0], kv_skips[0], ex_cond)
                pos = self.positional_map(h, w)
            else:
                q = self._run(self.embed_q[s], self.up_q[s - 1](q) + q_skips[s], sem)
                kv = self._run(self.embed_kv[s], self.up_kv[s - 1](kv) + kv_skips[s], ex_cond)
                pos = self.up_pos[s - 1](pos)
            pooled = None
            finest = s == len(self.transformer) - 1
            if with_warps or (finest and self.config.output_from_warp):
                pooled = F.adaptive_avg_pool2d(exemplar, (h, w))

            x = q
            for i, block in enumerate(blocks):
                candidates = None
                if s > 0:  # checked where consumed while compiling (kernels.candidates.lists)
                    candidates = candidate_list("inter" if i == 0 else "inner", topk, h, w)
                # output_from_warp needs the last block's warp of the finest scale, always.
                last = finest and i == len(blocks) - 1
                result = self._run(
                    block,
                    x,
                    kv,
                    pos,
                    sem,
                    candidates=candidates,
                    warp_values=pooled if with_warps or last else None,
                    with_sparsity=with_sparsity,
                )
                x, topk = result.features, result.topk
                confs.append(result.conf)
                topks.append(topk)
                sizes.append((h, w))
                if with_warps:
                    warps.append(result.warp)
                if last:
                    finest_warp, finest_conf = result.warp, result.conf
                if result.kept is not None:
                    kept.append(result.kept)

            if s == 0:
                decoded = x
            else:
                decoded = self._run(self.fusion_block(s), self.up_x[s - 1](decoded) + x, sem)

        image = torch.tanh(self.to_rgb(decoded))
        if self.config.output_from_warp:
            # The decoder paints a correction over the finest block's warped exemplar, which
            # carries the exemplar's colours (docs/method.md section 2, "output_from_warp").
            base = finest_warp
            if self.region_gate is not None:
                base = self.region_gate(decoded, base, sem, finest_conf)
            image = torch.clamp(base.to(image.dtype) + image, -1.0, 1.0)
        return GeneratorOutput(
            image=image,
            warps=warps,
            confs=confs,
            topks=topks,
            block_sizes=sizes,
            kept=kept,
        )

    def _run(self, block: nn.Module, *args: object, **kwargs: object):
        """`block(*args, **kwargs)`, checkpointed when `checkpoint_activations` is on and the
        call records gradients."""
        if self.checkpoint_activations and torch.is_grad_enabled():
            return checkpointed(block, *args, **kwargs)
        return block(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"preset={self.config.name!r}"
