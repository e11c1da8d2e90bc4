"""Seeded, resumable order of training micro-batches across processes.

Epoch `e` is a permutation of the dataset drawn from a generator seeded by (seed, e), cut to whole
global micro-batches and laid out as [batch, process, sample]: process `r` reads slot `r` of every
global micro-batch. The order depends only on the seed, the epoch and the global micro-batch size,
so a resumed run re-creates it exactly and skips the micro-batches it had already consumed
without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from einops import rearrange
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import TrainingError, clean_message


def epoch_permutation(length: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(length, generator=generator)


class EpochSampler(Sampler[int]):
    """Indices one process reads in one epoch, from micro-batch `start_batch` on."""

    def __init__(
        self,
        length: int,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_batch: int = 0,
    ) -> None:
        self.batches = length // (batch_size * world_size)
        if self.batches == 0:
            raise TrainingError(
                f"the training set has {length} samples, fewer than one global micro-batch "
                f"({batch_size} per process x {world_size} processes): lower train.batch_size"
            )
        if not 0 <= start_batch <= self.batches:
            raise ValueError(f"start_batch {start_batch} outside [0, {self.batches}]")
        perm = epoch_permutation(length, seed, epoch)[: self.batches * world_size * batch_size]
        slots = rearrange(perm, "(n r b) -> n r b", r=world_size, b=batch_size)
        self.indices = slots[start_batch:, rank].flatten().tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class DataPosition:
    """Next micro-batch to read: `batch` of `epoch` (per process)."""

    epoch: int = 0
    batch: int = 0


def micro_batches(
    dataset: Dataset,
    start: DataPosition,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
) -> Iterator[tuple[dict, DataPosition]]:
    """Endless micro-batches from `start` on, each with the position after it: the next
    micro-batch to read, which is what a checkpoint taken after this one must record. After the
    last micro-batch of an epoch that is (epoch, its micro-batch count), which resumes at the next
    epoch's first.

    An exception while loading (a missing or corrupt file, a bad label) is re-raised as one
    `TrainingError` with the dataset's own message, not a DataLoader worker traceback.
    """
    length = len(dataset)
    epoch, first = start.epoch, start.batch
    while True:
        if hasattr(dataset, "set_epoch"):
            # The real-data loaders draw crops, flips and references from (seed, epoch, index):
            # a resumed run reads the same samples. Workers copy the dataset per epoch (the
            # loader below is made anew), so they see this epoch.
            dataset.set_epoch(epoch)
        sampler = EpochSampler(
            length,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=seed,
            epoch=epoch,
            start_batch=first,
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=False,
            generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
        )
        iterator = iter(loader)
        read = first
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            except (OSError, ValueError, KeyError, IndexError, RuntimeError) as e:
                raise TrainingError(f"training data: {clean_message(e)}") from e
            read += 1
            yield batch, DataPosition(epoch, read)
        epoch, first = epoch + 1, 0
