"""The training set as batches: ``(samples, index, label)``, shuffled by seed and epoch, split across processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler

from icone import distributed
from icone.data import IndexedDataset


def train_loader(
    train_set: IndexedDataset,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    device: torch.device | None = None,
    shuffle: bool = True,
    num_samples: int | None = None,
) -> DataLoader:
    """Epoch ``epoch``'s batches: a seeded shuffle (a ``DistributedSampler`` share under ``torchrun``),
    incomplete last batch dropped; with ``shuffle=False`` every sample once, in order.

    ``num_samples`` (``data.patches_per_epoch``): the epoch draws that many samples instead, from a
    seeded shuffle continued across epochs (so every instance comes round before any repeats).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if num_samples is not None and shuffle:
        sampler: Any = EpochDraw(len(train_set), num_samples, seed, epoch)
    elif distributed.is_distributed() and shuffle:
        sampler: Any = DistributedSampler(train_set, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(train_set, generator=generator) if shuffle else None
    return DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=shuffle,
        num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
    )


class EpochDraw(Sampler[int]):
    """``num_samples`` rows for epoch ``epoch``: the epoch's slice of an endless sequence of seeded
    permutations of all ``n`` rows; under ``torchrun`` each process takes every ``world``-th of them."""

    def __init__(self, n: int, num_samples: int, seed: int, epoch: int) -> None:
        self.n, self.num_samples, self.seed, self.epoch = n, num_samples, seed, epoch
        self.rank, self.world = distributed.rank(), distributed.world_size()

    def _permutation(self, k: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * k + 1))

    def _draw(self) -> torch.Tensor:
        start = self.epoch * self.num_samples
        first, last = start // self.n, (start + self.num_samples - 1) // self.n
        rows = torch.cat([self._permutation(k) for k in range(first, last + 1)])
        return rows[start - first * self.n :][: self.num_samples]

    def __iter__(self) -> Iterator[int]:
        rows = self._draw()
        rows = rows[: len(rows) - len(rows) % self.world][self.rank :: self.world]
        return iter(rows.tolist())

    def __len__(self) -> int:
        return self.num_samples // self.world
