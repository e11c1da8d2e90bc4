"""One dynamic attention block (docs/method.md section 3): cross-attention from the running query
feature to the exemplar feature of the same scale through `kernels`, blended with a SPADE branch
where the exemplar offers no kept match.

The block does not know whether it is dense, inter-scale or inner-scale: the generator passes the
candidate key indices (None = dense) and the block calls the matching operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

import kernels
from kernels import custom_ops
from kernels.candidates.reference import kept_counts

from .blocks import SPADE, ResidualBlock, init_module_, l2_normalize_channels, positional_norm


@dataclass
class BlockOutput:
    """features [B, C_v, h, w]; conf [B, 1, h, w]; topk [B, h*w, k] int64 key indices;
    warp [B, 3, h, w] or None; kept [B, 1, h, w] int64 or None."""

    features: Tensor
    conf: Tensor
    topk: Tensor
    warp: Tensor | None
    kept: Tensor | None


class DynamicAttentionBlock(nn.Module):
    """`y = positional_norm(attn + (1 - conf) * SPADE(x, S) + x)`, returned through a residual
    block. Q, K, V and the prune projections are the release's 1x1 convolutions, applied here as
    linear maps on token-major tensors (same parameters, no layout round trip)."""

    def __init__(
        self,
        value_channels: int,
        pos_channels: int,
        prune_channels: int,
        semantic_nc: int,
        *,
        scale: float,
        prune_scale: float,
        topk: int,
        warp_over: str,
        backend: str,
        gain: float,
        norm_backend: str = "torch",
    ) -> None:
        super().__init__()
        qk = value_channels + pos_channels
        self.to_q = nn.Linear(qk, qk)
        self.to_k = nn.Linear(qk, qk)
        self.to_v = nn.Linear(value_channels, value_channels)
        self.to_q_prune = nn.Linear(qk, prune_channels)
        self.to_k_prune = nn.Linear(qk, prune_channels)
        for layer in (self.to_q, self.to_k, self.to_v, self.to_q_prune, self.to_k_prune):
            init_module_(layer, gain)
        self.spade = SPADE(value_channels, semantic_nc, gain=gain, norm_backend=norm_backend)
        self.residual = ResidualBlock(value_channels, gain=gain)
        self.scale = scale
        self.prune_scale = prune_scale
        self.topk = topk
        self.warp_over = warp_over
        self.backend = backend
        self.norm_backend = norm_backend

    def forward(
        self,
        x: Tensor,
        exemplar: Tensor,
        pos: Tensor,
        semantic: Tensor,
        *,
        candidates: Tensor | kernels.CandidateList | None = None,
        warp_values: Tensor | None = None,
        with_sparsity: bool = False,
    ) -> BlockOutput:
        """x, exemplar [B, C_v, h, w]; pos [1, C_pos, h, w]; semantic [B, Cs, H, W] (any size);
        candidates [B, h*w, M] key indices, or a CandidateList (built from the previous top-k), or
        None for dense attention; warp_values [B, Cw, h, w]
        (the exemplar RGB pooled to this scale) or None."""
        b, _, h, w = x.shape
        pos = pos.expand(b, -1, -1, -1)
        query = torch.cat([l2_normalize_channels(x), pos], dim=1)
        key = torch.cat([l2_normalize_channels(exemplar), pos], dim=1)
        query = rearrange(query, "b c h w -> b (h w) c")
        key = rearrange(key, "b c h w -> b (h w) c")
        value = rearrange(exemplar, "b c h w -> b (h w) c")
        q_prune, k_prune = self.to_q_prune(query), self.to_k_prune(key)
        warp_tokens = None
        if warp_values is not None:
            warp_tokens = rearrange(warp_values, "b c h w -> b (h w) c")
        common = {
            "scale": self.scale,
            "prune_scale": self.prune_scale,
            "topk": self.topk,
            "warp_values": warp_tokens,
            "warp_over": self.warp_over,
            "backend": self.backend,
        }
        args = (self.to_q(query), self.to_k(key), self.to_v(value), q_prune, k_prune)
        # Compiling: the ops registered with torch.library, which Dynamo traces without a break
        # and which derive the candidates inside; eager: the public ops, exactly as before.
        compiling = torch.compiler.is_compiling()
        attention = custom_ops if compiling else kernels
        if candidates is None:
            result = attention.dynamic_attention(*args, **common)
        else:
            result = attention.candidate_attention(*args, candidates, **common)

        attended = rearrange(result.out, "b (h w) c -> b c h w", h=h, w=w).to(x.dtype)
        conf = rearrange(result.conf, "b (h w) -> b 1 h w", h=h, w=w).to(x.dtype)
        y = positional_norm(
            attended + (1 - conf) * self.spade(x, semantic) + x, backend=self.norm_backend
        )
        warp = None
        if result.warp is not None:
            warp = rearrange(result.warp, "b (h w) c -> b c h w", h=h, w=w)
        kept = None
        if with_sparsity:
            counts = kept_counts(
                q_prune, k_prune, prune_scale=self.prune_scale, candidates=candidates
            )
            kept = rearrange(counts, "b (h w) -> b 1 h w", h=h, w=w)
        return BlockOutput(
            features=self.residual(y), conf=conf, topk=result.topk, warp=warp, kept=kept
        )
