"""Batch norm synchronised across processes, on any device.

`torch.nn.SyncBatchNorm` only runs on GPUs (it raises for CPU tensors), but the suite trains with
two CPU processes (gloo). `GlobalBatchNorm2d` normalises with the statistics of the global batch by
all-reducing per-channel sums with a differentiable all-reduce (its backward all-reduces the
gradient), so gradients are those of batch norm over the concatenated batch.
`synchronise_batch_norm` picks torch's kernel on CUDA and this module elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes. Every process's loss depends on the sum, so the gradient of a
    process's input is the sum over processes of the gradients of the sum."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics (and running estimates) come from the batch of every
    process together. Identical to BatchNorm2d in eval mode or with a single process."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"GlobalBatchNorm2d expects [B, C, H, W], got {tuple(x.shape)}")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() // channels], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count.item())
        if n < 2:
            raise ValueError("GlobalBatchNorm2d needs more than one value per channel in training")
        # Two passes (mean, then centred squares) for accuracy; each sum is reduced differentiably.
        mean = _AllReduceSum.apply(xf.sum((0, 2, 3))) / n
        centred = xf - rearrange(mean, "c -> 1 c 1 1")
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else self.momentum
                )
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / (n - 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * rearrange(torch.rsqrt(var + self.eps), "c -> 1 c 1 1")
        if self.affine:
            y = y * rearrange(self.weight, "c -> 1 c 1 1") + rearrange(self.bias, "c -> 1 c 1 1")
        return y.to(x.dtype)


def _to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        setattr(module, name, _to_global(child))
    return module


def count_batch_norms(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def synchronise_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d of `module` use global-batch statistics across processes:
    `torch.nn.SyncBatchNorm` on CUDA, `GlobalBatchNorm2d` elsewhere. Same parameter and buffer
    names, so checkpoints load either way."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)
