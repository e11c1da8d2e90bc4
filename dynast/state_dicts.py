"""How a state dict read from a file differs from the one a network expects: the one comparison
behind every strict load's error message (generator, discriminator, FID Inception)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def key_mismatches(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, `key: (saved shape) in checkpoint, (expected shape) in
    model` for each key whose shape differs), each sorted; all empty when `state` fits."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} in checkpoint, {tuple(expected[k].shape)} in model"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    return missing, unexpected, wrong
