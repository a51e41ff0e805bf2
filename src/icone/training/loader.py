"""The training set as batches: ``(samples, index, label)`` in a seeded order per epoch, this process's
share under ``torchrun``, from any batch on (to resume in the middle of an epoch)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from icone import distributed
from icone.data import IndexedDataset


@dataclass(frozen=True)
class Revisits:
    """``data.order=window``: instances come in sliding windows (Cao et al. 2020, PIC, §3.3).

    Instances are laid out in an endless sequence of seeded permutations (every instance once per
    ``n`` positions). Window ``k`` holds the ``size`` positions up to ``(k + 1) x stride`` (the
    first windows are shorter: they start at position 0), shuffled by a seeded draw of its own;
    the stream of samples is window after window. Each position falls in ``size / stride``
    consecutive windows, so each instance is seen that many times within about ``size x size /
    stride`` samples, then not again until its next position; an epoch of ``n`` samples still
    shows each instance once on average.
    """

    size: int
    stride: int

    def _ramp(self) -> int:
        """How many windows are shorter than ``size`` (the ones that start at position 0)."""
        return -(-self.size // self.stride) - 1

    def start(self, k: int) -> int:
        """Stream position of window ``k``'s first sample."""
        ramp = self._ramp()
        if k <= ramp:
            return self.stride * k * (k + 1) // 2
        return self.start(ramp) + (k - ramp) * self.size

    def containing(self, t: int) -> int:
        """The window that stream position ``t`` falls in."""
        ramp = self._ramp()
        if t >= self.start(ramp):
            return ramp + (t - self.start(ramp)) // self.size
        return next(k for k in range(ramp + 1) if self.start(k + 1) > t)

    def window(self, n: int, seed: int, k: int) -> torch.Tensor:
        """The instances of window ``k``, shuffled."""
        end = (k + 1) * self.stride
        positions = torch.arange(max(0, end - self.size), end)
        rows = torch.empty_like(positions)
        for sweep in range(int(positions[0]) // n, int(positions[-1]) // n + 1):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + 7 * sweep + 2))
            here = positions // n == sweep
            rows[here] = order[positions[here] % n]
        shuffle = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed * 1_000_033 + 11 * k + 5))
        return rows[shuffle]

    def slice(self, n: int, seed: int, start: int, count: int) -> torch.Tensor:
        """Items ``start .. start + count - 1`` of the stream of windows."""
        first, last = self.containing(start), self.containing(start + count - 1)
        rows = torch.cat([self.window(n, seed, k) for k in range(first, last + 1)])
        return rows[start - self.start(first) :][:count]


class EpochOrder(Sampler[int]):
    """The sample order of one epoch, from batch ``start_batch`` on.

    One process: ``torch.randperm(n)`` seeded by ``seed`` and ``epoch`` (what ``RandomSampler``
    gives with that generator). Several processes: the permutation ``DistributedSampler`` draws for
    ``seed + epoch``, cut to a multiple of the processes, every ``world``-th sample from ``rank``.
    With ``num_samples`` (``data.patches_per_epoch``): the epoch's slice of an endless sequence of
    seeded permutations of all samples (every instance comes round before any repeats), every
    ``world``-th of it from ``rank``. With ``revisits`` (:class:`Revisits`): the epoch's slice of
    the stream of sliding windows (``num_samples``, or the training set's size, per epoch), every
    ``world``-th of it from ``rank``.
    """

    def __init__(
        self, size: int, seed: int, epoch: int, batch_size: int, start_batch: int = 0, num_samples: int | None = None,
        revisits: Revisits | None = None,
    ) -> None:  # fmt: skip
        self.size, self.seed, self.epoch, self.batch_size, self.start_batch = size, seed, epoch, batch_size, start_batch
        self.num_samples, self.revisits = num_samples, revisits
        self.world, self.rank = distributed.world_size(), distributed.rank()

    def _permutation(self, k: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + 7 * k + 1))

    def _draw(self) -> torch.Tensor:
        count = int(self.num_samples or 0)
        start = self.epoch * count
        first, last = start // self.size, (start + count - 1) // self.size
        rows = torch.cat([self._permutation(k) for k in range(first, last + 1)])[start - first * self.size :][:count]
        return rows[: len(rows) - len(rows) % self.world][self.rank :: self.world]

    def order(self) -> torch.Tensor:
        if self.revisits is not None:
            count = int(self.num_samples or self.size)
            rows = self.revisits.slice(self.size, self.seed, self.epoch * count, count)
            return rows[: len(rows) - len(rows) % self.world][self.rank :: self.world]
        if self.num_samples is not None:
            return self._draw()
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
        per_process = (self.num_samples if self.num_samples is not None else self.size) // self.world
        return max(0, per_process - self.start_batch * self.batch_size)


def train_loader(
    train_set: IndexedDataset, batch_size: int, seed: int, epoch: int, num_workers: int = 0, device: torch.device | None = None,
    shuffle: bool = True, start_batch: int = 0, num_samples: int | None = None, revisits: Revisits | None = None,
) -> DataLoader:  # fmt: skip
    """Epoch ``epoch``'s batches (:class:`EpochOrder`, the incomplete last batch dropped), from
    ``start_batch`` on; with ``shuffle=False`` every sample once, in order."""
    sampler = (
        EpochOrder(len(train_set), seed, epoch, batch_size, start_batch, num_samples, revisits) if shuffle else None
    )
    return DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=shuffle,
        num_workers=num_workers,
        pin_memory=device is not None and device.type == "cuda",
    )


@dataclass(frozen=True)
class Loaders:
    """The training set's loaders: :meth:`epoch` gives an epoch's batches (``num_samples`` per epoch, in
    ``revisits`` windows where given), :meth:`plain` every sample once in order, on ``device``."""

    train_set: IndexedDataset
    batch_size: int
    seed: int
    device: torch.device | None = None
    num_workers: int = 0
    num_samples: int | None = None
    revisits: Revisits | None = None

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """Epoch ``epoch``'s batches ``(samples, index, label)`` from ``start_batch`` on."""
        self.train_set.set_epoch(epoch)
        return train_loader(
            self.train_set, self.batch_size, self.seed, epoch, self.num_workers, self.device,
            start_batch=start_batch, num_samples=self.num_samples, revisits=self.revisits,
        )  # fmt: skip

    def plain(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every training sample once, in order, as ``(samples, index)`` on ``device`` (for ``Method.initialize``)."""
        for x, index, _ in train_loader(self.train_set, batch_size, self.seed, 0, shuffle=False):
            yield x.to(self.device or "cpu"), index.to(self.device or "cpu")
