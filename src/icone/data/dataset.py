"""The indexed dataset: items are ``(sample, index, label)`` with an index stable for the run."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset as TorchDataset

from icone.data.arrays import Split
from icone.data.samples import ArraySamples


class IndexedDataset(TorchDataset):
    """Wraps a :class:`Split`; ``index`` is the row in the (subsampled) training split.

    Samples in memory are served as views of one tensor; lazy samples are read per item (in the
    DataLoader's workers with ``data.num_workers``), as training reads of the epoch given to
    :meth:`set_epoch` (a patch's random offset, see :mod:`icone.data.samples`).
    """

    def __init__(self, split: Split) -> None:
        self.samples = split.samples
        self.tensor = torch.from_numpy(split.samples.array) if isinstance(split.samples, ArraySamples) else None
        self.labels = torch.from_numpy(split.labels)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int | None) -> None:
        """Items are read as epoch ``epoch``'s training samples from now on (``None``: canonical samples)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        if self.tensor is not None:
            sample = self.tensor[index]
        else:
            sample = torch.from_numpy(self.samples.read([index], self.epoch)[0])
        return sample, index, int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, int]]:
        """A batch's items, read together (the DataLoader asks for them so): what one item at a time would
        give, but a chunked store decodes the chunks the batch needs at once."""
        if self.tensor is not None:
            return [self[i] for i in indices]
        x = torch.from_numpy(self.samples.read(list(indices), self.epoch))
        return [(x[k], int(i), int(self.labels[i])) for k, i in enumerate(indices)]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The samples of ``index`` as one tensor ``len(index) x C x spatial``."""
        if self.tensor is not None:
            return self.tensor[index]
        return torch.from_numpy(self.samples[index.numpy()])
