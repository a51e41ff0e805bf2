"""The training set as batches: ``(samples, index, label)``, shuffled by seed and epoch, split across processes."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
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
) -> DataLoader:
    """Epoch ``epoch``'s batches: a seeded shuffle (a ``DistributedSampler`` share under ``torchrun``),
    incomplete last batch dropped; with ``shuffle=False`` every sample once, in order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if distributed.is_distributed() and shuffle:
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
