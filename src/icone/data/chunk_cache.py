"""Regions of a chunked array read chunk by chunk, each decoded chunk kept in a least-recently-used cache
bounded in bytes (one per process: every DataLoader worker has its own).

zarr-python spends milliseconds on every read (its async machinery, then decoding each chunk the
region touches), so a 32^3 patch of 64^3 chunks cost 7-11 ms and neighbouring patches decoded the
same chunks again. Here a chunk is decoded once and every patch it holds is cut from memory; what
is read is unchanged (instances, offsets and resume are the sampler's, not the reader's).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

PREFETCH_THREADS = 4
CACHE_BYTES = 128 << 20  # decoded chunks kept per process (h5py: 64 MiB, icone sets it)


def _in_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


class ChunkCache:
    """Indexable like ``array`` (a tuple of slices and integers, one per axis), read through its ``chunks``."""

    def __init__(
        self, array: Any, chunks: tuple[int, ...], budget: int = CACHE_BYTES, read_chunk: Callable | None = None
    ) -> None:
        self.array, self.chunks, self.budget = array, tuple(int(c) for c in chunks), budget
        self.read_chunk = read_chunk  # decodes one chunk directly (icone.data.zarr_chunks), where it can
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        self.cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self.size = 0
        self.pool: ThreadPoolExecutor | None = None  # prefetch threads, made in the process that reads
        self.pool_pid = 0

    def chunk(self, key: tuple[int, ...]) -> np.ndarray:
        """The decoded chunk at chunk coordinates ``key`` (cut at the array's edge)."""
        block = self.cache.get(key)
        if block is None:
            self.load([key])
            block = self.cache[key]
        self.cache.move_to_end(key)
        return block

    def load(self, keys: list[tuple[int, ...]]) -> None:
        """Decode the chunks ``keys`` with one read of the box around them (zarr decodes its chunks
        concurrently, and its cost per read is paid once), or each directly with ``read_chunk``; keep them."""
        if self.read_chunk is not None:
            for key in keys:
                self._keep(key, self._decoded(key))
            self._evict(len(keys))
            return
        lo = [min(k[a] for k in keys) * c for a, c in enumerate(self.chunks)]
        hi = [min((max(k[a] for k in keys) + 1) * c, n) for a, (c, n) in enumerate(zip(self.chunks, self.shape))]
        box = np.asarray(self.array[tuple(slice(a, b) for a, b in zip(lo, hi))])
        for key in keys:
            region = tuple(slice(k * c - a, min((k + 1) * c, b) - a) for k, c, a, b in zip(key, self.chunks, lo, hi))
            self._keep(key, np.ascontiguousarray(box[region]))
        self._evict(len(keys))

    def _keep(self, key: tuple[int, ...], block: np.ndarray) -> None:
        self.cache[key] = block
        self.size += block.nbytes

    def _evict(self, newest: int) -> None:
        """The least recently used chunks out until the cache fits its budget (the ``newest`` stay)."""
        while self.size > self.budget and len(self.cache) > newest:
            self.size -= self.cache.popitem(last=False)[1].nbytes

    def _spans(self, index: tuple[Any, ...]) -> list[tuple[int, int]]:
        return [
            (int(i), int(i) + 1) if isinstance(i, (int, np.integer)) else i.indices(n)[:2]
            for i, n in zip(index, self.shape)
        ]

    def _keys(self, spans: list[tuple[int, int]]) -> list[tuple[int, ...]]:
        ranges = [range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0) for (lo, hi), c in zip(spans, self.chunks)]
        return list(itertools.product(*ranges))

    def prefetch(self, indices: list[tuple[Any, ...]]) -> None:
        """Decode the chunks the ``indices`` need and the cache lacks, on a few threads (the codecs release
        the GIL), as long as they fit in the cache."""
        if self.read_chunk is None:
            return
        missing = list(dict.fromkeys(k for i in indices for k in self._keys(self._spans(i)) if k not in self.cache))
        chunk_bytes = int(np.prod(self.chunks)) * self.dtype.itemsize
        if len(missing) < 2 or len(missing) * chunk_bytes > self.budget or _in_worker():
            return  # in a DataLoader worker the processes are the parallelism: more threads would compete
        if self.pool is None or self.pool_pid != os.getpid():
            self.pool, self.pool_pid = ThreadPoolExecutor(PREFETCH_THREADS), os.getpid()
        for key, block in zip(missing, self.pool.map(self._decoded, missing)):
            self._keep(key, block)
        self._evict(len(missing))

    def _decoded(self, key: tuple[int, ...]) -> np.ndarray:
        edge = tuple(slice(0, min(c, n - k * c)) for k, c, n in zip(key, self.chunks, self.shape))
        return np.ascontiguousarray(self.read_chunk(key)[edge])

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        spans = self._spans(index)
        out = np.empty([hi - lo for lo, hi in spans], self.dtype)
        keys = self._keys(spans)
        missing = [k for k in keys if k not in self.cache]
        if missing:
            self.load(missing)
        for key in keys:
            block = self.chunk(key)
            source, target = [], []
            for k, c, (lo, hi) in zip(key, self.chunks, spans):
                start, stop = max(lo, k * c), min(hi, (k + 1) * c)
                source.append(slice(start - k * c, stop - k * c))
                target.append(slice(start - lo, stop - lo))
            out[tuple(target)] = block[tuple(source)]
        return out[tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in index)]
