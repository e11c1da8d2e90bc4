"""GlobalBatchNorm2d over two gloo processes equals BatchNorm2d over the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _assert import assert_close, sum_tolerance
from torch import nn

from train.sync_batch_norm import GlobalBatchNorm2d, count_batch_norms, synchronise_batch_norm

CHANNELS = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, x: torch.Tensor, grad: torch.Tensor, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        norm = GlobalBatchNorm2d(CHANNELS, momentum=0.3)
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        part = x.chunk(world)[rank].clone().requires_grad_(True)
        y = norm(part)
        y.backward(grad.chunk(world)[rank])
        out[rank] = {
            "y": y.detach(),
            "dx": part.grad,
            "dweight": norm.weight.grad,
            "dbias": norm.bias.grad,
            "running_mean": norm.running_mean.clone(),
            "running_var": norm.running_var.clone(),
        }
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_matches_full_batch_over_two_processes():
    # Odd sizes; the two halves have different statistics, so a per-process norm would differ.
    torch.manual_seed(1)
    x = torch.randn(6, CHANNELS, 7, 5) * 3 + 1
    x[3:] = x[3:] * 0.5 - 2
    grad = torch.randn_like(x)
    # fork: the workers need no fresh interpreter (a spawn costs seconds of imports each).
    manager = mp.Manager()
    out = manager.dict()
    mp.start_processes(
        _worker, args=(2, _free_port(), x, grad, out), nprocs=2, join=True, start_method="fork"
    )

    torch.manual_seed(0)
    reference = nn.BatchNorm2d(CHANNELS, momentum=0.3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    xr = x.clone().requires_grad_(True)
    y = reference(xr)
    y.backward(grad)

    got_y = torch.cat([out[0]["y"], out[1]["y"]])
    got_dx = torch.cat([out[0]["dx"], out[1]["dx"]])
    assert_close(got_y, y.detach(), name="y", atol=1e-5, rtol=1e-5)
    assert_close(got_dx, xr.grad, name="dx", atol=1e-5, rtol=1e-4)
    # Each process holds the gradient of its own share of the loss; their sum is the gradient of
    # the whole loss (DDP then averages, i.e. scales it by 1/processes).
    dweight = out[0]["dweight"] + out[1]["dweight"]
    dbias = out[0]["dbias"] + out[1]["dbias"]
    # Per-channel sums over 6 x 7 x 5 positions, added in another order and split across two
    # processes: the tolerance is the accumulation bound of their sums of |terms|.
    x_hat = (x - x.mean((0, 2, 3), keepdim=True)) / (x.var((0, 2, 3), keepdim=True) + 1e-5).sqrt()
    terms = x[:, 0].numel()
    for name, got, want, magnitude in (
        ("dweight", dweight, reference.weight.grad, (grad * x_hat).abs().sum((0, 2, 3))),
        ("dbias", dbias, reference.bias.grad, grad.abs().sum((0, 2, 3))),
    ):
        bound = sum_tolerance(magnitude, torch.float32, terms)
        assert_close(got, want, name=name, atol=bound, rtol=1e-6)
    for rank in (0, 1):
        assert_close(out[rank]["running_mean"], reference.running_mean, name="running_mean")
        assert_close(out[rank]["running_var"], reference.running_var, name="running_var")


def test_single_process_and_eval_fall_back_to_batch_norm():
    torch.manual_seed(2)
    x = torch.randn(3, CHANNELS, 4, 6)
    plain = nn.BatchNorm2d(CHANNELS)
    converted = synchronise_batch_norm(nn.Sequential(nn.BatchNorm2d(CHANNELS)), torch.device("cpu"))
    assert isinstance(converted[0], GlobalBatchNorm2d)
    assert count_batch_norms(converted) == 1
    assert_close(converted(x), plain(x), name="train-mode output")
    converted.eval()
    plain.eval()
    assert_close(converted(x), plain(x), name="eval-mode output")


def test_rejects_non_4d_input():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        GlobalBatchNorm2d(3)(torch.randn(2, 3))
