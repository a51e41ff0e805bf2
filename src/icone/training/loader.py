"""The training set as batches: ``(samples, index, label)`` in a seeded order per epoch, this process's
share under ``torchrun``, from any batch on (to resume in the middle of an epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from icone import distributed
from icone.data import IndexedDataset


class EpochOrder(Sampler[int]):
    """The sample order of one epoch, from batch ``start_batch`` on.

    One process: ``torch.randperm(n)`` seeded by ``seed`` and ``epoch`` (what ``RandomSampler``
    gives with that generator). Several processes: the permutation ``DistributedSampler`` draws for
    ``seed + epoch``, cut to a multiple of the processes, every ``world``-th sample from ``rank``.
    """

    def __init__(self, size: int, seed: int, epoch: int, batch_size: int, start_batch: int = 0) -> None:
        self.size, self.seed, self.epoch, self.batch_size, self.start_batch = size, seed, epoch, batch_size, start_batch
        self.world, self.rank = distributed.world_size(), distributed.rank()

    def order(self) -> torch.Tensor:
        if self.world == 1:
            return torch.randperm(
                self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            )
        indices = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        total = (self.size // self.world) * self.world
        return indices[:total][self.rank : total : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return max(0, self.size // self.world - self.start_batch * self.batch_size)


def train_loader(
    train_set: IndexedDataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0, device: torch.device | None = None,
    shuffle: bool = True, start_batch: int = 0,
) -> DataLoader:  # fmt: skip
    """Epoch ``epoch``'s batches (:class:`EpochOrder`, the incomplete last batch dropped), from
    ``start_batch`` on; with ``shuffle=False`` every sample once, in order."""
    sampler = EpochOrder(len(train_set), seed, epoch, batch_size, start_batch) if shuffle else None
    return DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=shuffle,
        num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
    )
