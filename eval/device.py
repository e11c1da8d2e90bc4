"""The `--device` option shared by the evaluation commands."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """ "auto": CUDA when available, else the CPU; otherwise the named device, refused when it is a
    CUDA device and none is available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available")
    return device
