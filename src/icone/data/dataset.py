"""The indexed dataset: items are ``(sample, index, label)`` with an index stable for the run."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset as TorchDataset

from icone.data.arrays import Split


class IndexedDataset(TorchDataset):
    """Wraps a :class:`Split`; ``index`` is the row in the (subsampled) training split."""

    def __init__(self, split: Split) -> None:
        self.samples = torch.from_numpy(split.samples)
        self.labels = torch.from_numpy(split.labels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.samples[index], index, int(self.labels[index])
