"""Where each output position of a generator looked: per scale, the top-k exemplar positions of
the scale's last attention block with their attention weights, which of them the learned mask
pruned, and the confidence.

The generator returns each block's top-k key indices and confidence; the weights and the mask
are internal to the attention operators. `AttentionRecorder` keeps the projections the recorded
blocks compute (forward hooks on their `to_q`, `to_k`, `to_q_prune`, `to_k_prune`; the model is
not changed), from which `scale_attention` recomputes, as `kernels.candidates.reference`
defines them:

- the weight of a top-k key, its softmax probability `exp(z - logsumexp(z))` over the block's
  candidates (every key in the dense blocks; the candidate list the block derived from the
  previous block's top-k otherwise), with `z = scale * q . k`;
- pruned: the mask `prune_scale * q_prune . k_prune > 0` is false for that key, so it adds
  nothing to the attention (its weight counts only where kept; the confidence is the sum of the
  kept weights over all candidates).

Scores are formed in fp32 (fp64 for fp64 models) as the reference forms them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dynast.generator import Generator, GeneratorOutput
from kernels.candidates import candidate_list

PROJECTIONS = ("to_q", "to_k", "to_q_prune", "to_k_prune")
# Queries per step of the softmax normaliser: bounds the gathered keys to a few tens of MB.
QUERY_CHUNK = 4096


@dataclass(frozen=True)
class ScaleAttention:
    """One scale's final matches for one sample: block (index in running order), size (h, w),
    kind ("dense", "inter", "inner"), topk [h*w, k] int64 key indices on the exemplar's h x w
    grid (best first), weights [h*w, k] float32, pruned [h*w, k] bool, conf [h*w] float32."""

    block: int
    size: tuple[int, int]
    kind: str
    topk: Tensor
    weights: Tensor
    pruned: Tensor
    conf: Tensor


def block_kind(generator: Generator, block: int) -> str:
    scale, position = divmod(block, generator.config.blocks_per_scale)
    if scale == 0:
        return "dense"
    return "inter" if position == 0 else "inner"


def last_blocks(generator: Generator) -> list[int]:
    """Running index of each scale's last block, coarsest first."""
    per = generator.config.blocks_per_scale
    return [s * per + per - 1 for s in range(generator.config.num_scales)]


class AttentionRecorder:
    """`with AttentionRecorder(generator) as recorder: output = generator(...)` keeps the
    projections of each scale's last block (`recorder.projections[block][name]`)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.projections: dict[int, dict[str, Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> AttentionRecorder:
        per = self.generator.config.blocks_per_scale
        for block in last_blocks(self.generator):
            module = self.generator.transformer[block // per][block % per]
            store = self.projections.setdefault(block, {})
            for name in PROJECTIONS:
                hook = _keeper(store, name)
                self._handles.append(getattr(module, name).register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _keeper(store: dict[str, Tensor], name: str):
    def hook(module, inputs, output) -> None:
        store[name] = output.detach()

    return hook


def _acc(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _rows(x: Tensor, index: Tensor) -> Tensor:
    """x [N, C], index [Q, M] -> [Q, M, C]."""
    return x[index.reshape(-1)].reshape(*index.shape, x.shape[-1])


def _log_normaliser(q: Tensor, k: Tensor, candidates: Tensor | None, scale: float) -> Tensor:
    """logsumexp over each query's candidates (all keys when None) of `scale * q . k`: [Nq]."""
    parts = []
    for start in range(0, q.shape[0], QUERY_CHUNK):
        chunk = q[start : start + QUERY_CHUNK]
        if candidates is None:
            z = scale * chunk @ k.T
        else:
            rows = _rows(k, candidates[start : start + QUERY_CHUNK])
            z = scale * torch.einsum("qc,qmc->qm", chunk, rows)
        parts.append(torch.logsumexp(z, dim=-1))
    return torch.cat(parts)


def scale_attention(
    generator: Generator, output: GeneratorOutput, recorder: AttentionRecorder, sample: int = 0
) -> list[ScaleAttention]:
    """Each scale's final matches of one sample of the recorded forward pass, coarsest first."""
    result = []
    for block in last_blocks(generator):
        store = recorder.projections.get(block)
        if store is None or set(store) != set(PROJECTIONS):
            raise ValueError("scale_attention: run the generator inside the AttentionRecorder")
        attention = generator.transformer[block // generator.config.blocks_per_scale][-1]
        q, k, qp, kp = (_acc(store[name][sample]) for name in PROJECTIONS)
        h, w = output.block_sizes[block]
        kind = block_kind(generator, block)
        candidates = None
        if kind != "dense":
            top = output.topks[block - 1][sample : sample + 1]
            candidates = candidate_list(kind, top, h, w).indices[0].long()
        topk = output.topks[block][sample].long()
        z = attention.scale * torch.einsum("qc,qkc->qk", q, _rows(k, topk))
        weights = torch.exp(z - _log_normaliser(q, k, candidates, attention.scale)[:, None])
        kept = attention.prune_scale * torch.einsum("qc,qkc->qk", qp, _rows(kp, topk)) > 0
        conf = output.confs[block][sample, 0].reshape(-1)
        result.append(
            ScaleAttention(
                block=block,
                size=(h, w),
                kind=kind,
                topk=topk.cpu(),
                weights=weights.float().cpu(),
                pruned=(~kept).cpu(),
                conf=conf.float().cpu(),
            )
        )
    return result
