"""Samples indexed like an array, whether they are in memory or read from files when asked for.

``samples[i]`` is one sample ``C x spatial`` (float32, normalised); ``samples[rows]`` a stack of
them; ``len(samples)`` and ``samples.shape`` (``N x C x spatial``) as for an array. Each sample
knows where it comes from (``source(i)``: a file, or ``source:row``) and where in it
(``position(i)``: a patch's origin, empty for a whole image). Lazy sources (volumes read patch by
patch, image folders read per sample) subclass :class:`Samples` and implement ``read_raw``.

A training read may ask for an epoch (``read(rows, epoch)``): sources with augmentation in the read
itself (a patch's random offset inside its cell) draw it from the run's seed, the epoch and the row,
so a resumed run reads what an uninterrupted one would. Without an epoch a read is the canonical
sample (normalisation statistics, evaluation, the collapse monitor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class Samples:
    """The interface; subclasses implement :meth:`read`, :meth:`__len__`, :attr:`sample_shape` and :meth:`source`."""

    in_memory = False
    offset: np.ndarray | None = None  # per-channel normalisation applied on read: (x - offset) / scale
    scale: np.ndarray | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``C x spatial`` of every sample."""
        raise NotImplementedError

    def read_raw(self, rows: np.ndarray, epoch: int | None = None) -> np.ndarray:
        """``len(rows) x C x spatial`` float32, before normalisation (``epoch``: a training read, see above)."""
        raise NotImplementedError

    def source(self, row: int) -> str:
        raise NotImplementedError

    def position(self, row: int) -> tuple[int, ...]:
        """The origin of the sample's patch in its source (empty for a whole image)."""
        return ()

    def where(self, row: int) -> str:
        """A row's sample for messages: ``'file'``, or ``'file' at z,y,x=...`` for a patch."""
        return f"'{self.source(row)}'"

    def geometry(self, row: int) -> tuple[tuple[float, ...], tuple[float | None, ...], str] | None:
        """For a patch: the resampling factor per spatial axis (read / stored voxels), the spacing as read, its unit."""
        return None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def read(self, rows: np.ndarray | Sequence[int], epoch: int | None = None) -> np.ndarray:
        """``len(rows) x C x spatial`` float32, normalised."""
        x = self.read_raw(np.asarray(rows, dtype=np.int64).reshape(-1), epoch)
        if self.offset is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = (x - self.offset.reshape(shape)) / self.scale.reshape(shape)
        return x.astype(np.float32, copy=False)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read([int(key)])[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        return self.read(np.asarray(key))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        """Every sample as one array (reads them all: mind the size of a lazy source)."""
        return self.read(np.arange(len(self)))

    def normalize(self, offset: np.ndarray, scale: np.ndarray) -> None:
        """From now on samples are read as ``(x - offset) / scale`` per channel."""
        self.offset, self.scale = np.asarray(offset, np.float32), np.asarray(scale, np.float32)

    def subset(self, rows: np.ndarray) -> Samples:
        return SubsetSamples(self, np.asarray(rows, dtype=np.int64))

    def statistics_rows(self, count: int = 256, seed: int = 0, budget: int = 256 << 20) -> np.ndarray:
        """The rows :meth:`statistics_sample` reads: ``count`` at random (fewer if they would exceed ``budget`` bytes)."""
        count = max(1, min(count, budget // max(1, 4 * int(np.prod(self.sample_shape)))))
        return np.sort(np.random.default_rng(seed).choice(len(self), size=min(count, len(self)), replace=False))

    def statistics_sample(self, count: int = 256, seed: int = 0) -> np.ndarray:
        """Raw samples (before normalisation) to estimate intensity statistics from: ``count`` drawn at random."""
        return self.read_raw(self.statistics_rows(count, seed))

    def chunks(self, size: int = 256) -> Iterator[np.ndarray]:
        """Every sample once, in order, ``size`` at a time."""
        for start in range(0, len(self), size):
            yield self.read(np.arange(start, min(start + size, len(self))))


class ArraySamples(Samples):
    """Samples held in memory as one float32 array ``N x C x spatial``; normalised in place."""

    in_memory = True

    def __init__(
        self,
        array: np.ndarray,
        sources: Sequence[str] | np.ndarray | None = None,
        name: str = "",
        positions: np.ndarray | None = None,
    ) -> None:
        self.array = np.ascontiguousarray(array, dtype=np.float32)
        self.sources = None if sources is None else np.asarray(sources, dtype=str).reshape(-1)
        if self.sources is not None and len(self.sources) != len(self.array):
            raise ValueError(f"{len(self.array)} samples but {len(self.sources)} sources")
        self.name = name
        self.positions = (
            None if positions is None else np.asarray(positions, dtype=np.int64).reshape(len(self.array), -1)
        )

    def __len__(self) -> int:
        return len(self.array)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])

    def read_raw(self, rows: np.ndarray, epoch: int | None = None) -> np.ndarray:
        return self.array[rows]

    def read(self, rows: np.ndarray | Sequence[int], epoch: int | None = None) -> np.ndarray:
        return self.array[np.asarray(rows, dtype=np.int64).reshape(-1)]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.array

    def source(self, row: int) -> str:
        return str(self.sources[row]) if self.sources is not None else f"{self.name}[{row}]"

    def position(self, row: int) -> tuple[int, ...]:
        return () if self.positions is None else tuple(int(v) for v in self.positions[row])

    def normalize(self, offset: np.ndarray, scale: np.ndarray) -> None:
        shape = (1, -1) + (1,) * (self.array.ndim - 2)
        self.array -= np.asarray(offset, np.float32).reshape(shape)
        self.array /= np.asarray(scale, np.float32).reshape(shape)

    def subset(self, rows: np.ndarray) -> ArraySamples:
        rows = np.asarray(rows, dtype=np.int64)
        sources = self.sources[rows] if self.sources is not None else np.asarray([self.source(r) for r in rows])
        return ArraySamples(
            self.array[rows], sources, self.name, None if self.positions is None else self.positions[rows]
        )


class SubsetSamples(Samples):
    """Some rows of other samples (the parent's normalisation applies)."""

    def __init__(self, parent: Samples, rows: np.ndarray) -> None:
        self.parent, self.rows = parent, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.parent.sample_shape

    def read(self, rows: np.ndarray | Sequence[int], epoch: int | None = None) -> np.ndarray:
        return self.parent.read(self.rows[np.asarray(rows, dtype=np.int64).reshape(-1)], epoch)

    def read_raw(self, rows: np.ndarray, epoch: int | None = None) -> np.ndarray:
        return self.parent.read_raw(self.rows[np.asarray(rows, dtype=np.int64).reshape(-1)], epoch)

    def source(self, row: int) -> str:
        return self.parent.source(int(self.rows[row]))

    def where(self, row: int) -> str:
        return self.parent.where(int(self.rows[row]))

    def position(self, row: int) -> tuple[int, ...]:
        return self.parent.position(int(self.rows[row]))

    def geometry(self, row: int) -> tuple[tuple[float, ...], tuple[float | None, ...], str] | None:
        return self.parent.geometry(int(self.rows[row]))

    def normalize(self, offset: np.ndarray, scale: np.ndarray) -> None:
        raise ValueError("normalise the samples a subset is taken from, not the subset")
