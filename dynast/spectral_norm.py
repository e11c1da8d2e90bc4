"""Spectral normalisation as the release runs it: `W / sigma`, sigma estimated by one power
iteration per training-mode forward in the order of the hook-based `torch.nn.utils.spectral_norm`
(the release's `architecture.py` and `discriminator.py` wrap their convolutions in it).

PyTorch's newer `torch.nn.utils.parametrizations.spectral_norm` iterates the other way round
(u <- n(W v), then v <- n(W^T u)), so from the same stored vectors every training-mode forward
divides by another sigma. This parametrization keeps the hook-based order, as a parametrization
with the same state-dict keys as PyTorch's (`parametrizations.weight.original`,
`parametrizations.weight.0._u`, `._v`):

- training mode: v <- n(W^T u), then u <- n(W v) (n: divide by the norm, at least eps), stored;
  sigma = u . (W v) with the new vectors;
- eval mode: no iteration; sigma from the stored vectors.

W is the weight flattened to [out, rest]; the gradient flows through W in both factors of
`W / sigma`, not through u and v (constants of the step, as in both of PyTorch's versions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

EPS = 1e-12
# Power iterations when the parametrization is attached, so that the first forward divides by a
# converged sigma; a converted or loaded checkpoint overwrites the vectors anyway.
WARM_UP_ITERATIONS = 15


class SpectralNorm(nn.Module):
    """The parametrization itself: `forward(weight) -> weight / sigma` (see the module doc)."""

    def __init__(self, weight: Tensor, eps: float = EPS) -> None:
        super().__init__()
        if weight.dim() < 2:
            raise ValueError(
                f"SpectralNorm needs a weight of at least 2 dimensions, got {tuple(weight.shape)}"
            )
        self.eps = eps
        matrix = weight.detach().flatten(1)
        u = matrix.new_empty(matrix.shape[0]).normal_(0, 1)
        v = matrix.new_empty(matrix.shape[1]).normal_(0, 1)
        self.register_buffer("_u", F.normalize(u, dim=0, eps=eps))
        self.register_buffer("_v", F.normalize(v, dim=0, eps=eps))
        for _ in range(WARM_UP_ITERATIONS):
            self.power_iteration(matrix)

    @torch.no_grad()
    def power_iteration(self, matrix: Tensor) -> None:
        """One step of the hook-based order on the stored vectors: v first, then u."""
        v = F.normalize(torch.mv(matrix.t(), self._u), dim=0, eps=self.eps)
        u = F.normalize(torch.mv(matrix, v), dim=0, eps=self.eps)
        self._v.copy_(v)
        self._u.copy_(u)

    def forward(self, weight: Tensor) -> Tensor:
        matrix = weight.flatten(1)
        if self.training:
            self.power_iteration(matrix.detach())
        # Copies: autograd keeps them for the backward, while the buffers move on with the next
        # training-mode forward (the tied block runs twice per step).
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, torch.mv(matrix, v))
        return weight / sigma

    def right_inverse(self, value: Tensor) -> Tensor:
        # Assigning a weight stores it as the unnormalised original (as PyTorch's version does).
        return value


def spectral_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Attach `SpectralNorm` to `module.<name>`; returns the module."""
    parametrize.register_parametrization(module, name, SpectralNorm(getattr(module, name)))
    return module
