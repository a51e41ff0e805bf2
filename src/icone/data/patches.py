"""Patches of volumes (and of large 2D images) as samples: a grid of cells, each one stable instance.

A :class:`Grid` tiles a region of a volume with cells ``stride`` apart; cell ``k``'s patch
(``patch`` voxels) starts at ``lo + k * stride``. Every cell is one instance, for the whole run
(IConE's table row, ExCB's statistics). With jitter (samplers ``random`` and ``foreground``) a
training read moves the patch by a random offset that keeps its centre inside its cell, drawn by an
RNG seeded by ``(seed, epoch, row)``: the same in every run, worker count and ``--resume``. Reads
without an epoch (normalisation statistics, evaluation, the collapse monitor) take the cell's own
patch. The ``foreground`` sampler keeps the cells with something in them, judged on a low-resolution
copy of the volume (block means; Otsu's threshold unless ``data.foreground_threshold`` is given).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from icone.data.samples import Samples
from icone.data.volumes import ReadError, Volume
from icone.errors import UserError

BLOCK_VOXELS = 1 << 24  # voxels read at a time when a whole volume is scanned (labels, foreground)


@dataclass(frozen=True)
class Grid:
    """Cells ``stride`` apart with patches of ``patch`` voxels, inside the region ``[lo, hi)``."""

    patch: tuple[int, ...]
    stride: tuple[int, ...]
    lo: tuple[int, ...]
    hi: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(max(0, (h - lo - p) // s + 1) for p, s, lo, h in zip(self.patch, self.stride, self.lo, self.hi))

    @property
    def size(self) -> int:
        return int(np.prod(self.counts))

    def origins(self, cells: np.ndarray) -> np.ndarray:
        """``len(cells) x dims`` patch origins of cells (C-order cell numbers)."""
        index = np.stack(np.unravel_index(np.asarray(cells, np.int64), self.counts), axis=-1)
        return np.asarray(self.lo) + index * np.asarray(self.stride)

    def jittered(self, cell: int, rng: np.random.Generator) -> np.ndarray:
        """A cell's origin moved so that the patch centre stays in the cell, and the patch in the region."""
        stride = np.asarray(self.stride)
        offset = rng.integers(-(stride // 2), stride - stride // 2)
        origin = self.origins(np.asarray([cell]))[0] + offset
        return np.clip(origin, self.lo, np.asarray(self.hi) - np.asarray(self.patch))


def make_grid(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int], name: str, lo=None, hi=None) -> Grid:
    """A grid over ``shape`` (or the region ``[lo, hi)``); a patch larger than the volume is one line."""
    lo = tuple(lo) if lo is not None else (0,) * len(shape)
    hi = tuple(hi) if hi is not None else tuple(shape)
    if any(p > h - low for p, low, h in zip(patch, lo, hi)):
        axes = "zyx"[-len(shape) :]
        raise UserError(
            f"data.patch={','.join(map(str, patch))} is larger than '{name}' ({'x'.join(map(str, shape))}, "
            f"{axes}); choose a patch of at most {','.join(str(h - low) for low, h in zip(lo, hi))}"
        )
    return Grid(tuple(patch), tuple(stride), lo, hi)


class PatchSamples(Samples):
    """The cells ``cells[k]`` of ``grids[k]`` on ``volumes[k]``, one sample each (``C x patch``)."""

    def __init__(
        self,
        volumes: list[Volume],
        grids: list[Grid],
        cells: list[np.ndarray],
        jitter: bool = False,
        seed: int = 0,
    ) -> None:
        self.volumes, self.grids, self.jitter, self.seed = volumes, grids, jitter, seed
        self.cells = [np.asarray(c, np.int64) for c in cells]
        self.starts = np.cumsum([0] + [len(c) for c in self.cells])
        channels = {v.num_channels for v in volumes}
        if len(channels) > 1:
            raise UserError(
                f"the volumes have different channel counts {sorted(channels)}; choose the same channels of each with data.channels=..."
            )
        self.num_channels = channels.pop()
        self.check_values = any(v.stored.dtype.kind == "f" for v in volumes)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.num_channels, *self.grids[0].patch)

    def locate(self, row: int) -> tuple[int, int]:
        """``(volume, cell)`` of a row."""
        k = int(np.searchsorted(self.starts, row, side="right")) - 1
        return k, int(self.cells[k][row - self.starts[k]])

    def origin(self, row: int, epoch: int | None = None) -> tuple[int, ...]:
        k, cell = self.locate(row)
        if epoch is None or not self.jitter:
            return tuple(int(v) for v in self.grids[k].origins(np.asarray([cell]))[0])
        rng = np.random.default_rng((self.seed, epoch, row))
        return tuple(int(v) for v in self.grids[k].jittered(cell, rng))

    def read_patch(self, row: int, epoch: int | None = None) -> np.ndarray:
        k, _ = self.locate(row)
        origin = self.origin(row, epoch)
        x = self.volumes[k].read(origin, self.grids[k].patch)
        if self.check_values and not np.isfinite(x).all():
            raise ReadError(
                f"'{self.volumes[k].name}' holds {int((~np.isfinite(x)).sum())} NaN or infinite value(s) in the patch at "
                f"{self._where(k, origin)}; fix the volume (icone cannot learn from undefined voxels)"
            )
        return x

    def _where(self, k: int, origin: Sequence[int]) -> str:
        axes = self.volumes[k].layout.spatial.lower()
        return f"{axes}={','.join(map(str, origin))}"

    def read_raw(self, rows: np.ndarray, epoch: int | None = None) -> np.ndarray:
        rows = np.asarray(rows, np.int64).reshape(-1)
        if not len(rows):
            return np.zeros((0, *self.sample_shape), np.float32)
        if len(rows) > 1:
            located = [self.locate(int(r))[0] for r in rows]
            for k in set(located):
                origins = [self.origin(int(r), epoch) for r, v in zip(rows, located) if v == k]
                self.volumes[k].prefetch(origins, self.grids[k].patch)
        return np.stack([self.read_patch(int(r), epoch) for r in rows])

    def source(self, row: int) -> str:
        return self.volumes[self.locate(row)[0]].name

    def position(self, row: int) -> tuple[int, ...]:
        return self.origin(row)

    def geometry(self, row: int) -> tuple[tuple[float, ...], tuple[float | None, ...], str]:
        volume = self.volumes[self.locate(row)[0]]
        return tuple(float(f) for f in volume.factor), volume.spacing, volume.stored.unit

    def where(self, row: int) -> str:
        """``'file' at z,y,x=...``: a row's patch, for messages."""
        k, _ = self.locate(row)
        return f"'{self.volumes[k].name}' at {self._where(k, self.origin(row))}"


# ---- scanning whole volumes in blocks ----------------------------------------------------------


def cell_blocks(
    grid: Grid, chunks: Sequence[int] | None = None, budget: int = BLOCK_VOXELS
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Groups of neighbouring cells: ``(cell numbers, region lo, region hi)`` with the region covering
    their patches in about ``budget`` voxels, and at least a storage chunk deep on every axis (so that
    no chunk is decompressed many times)."""
    counts, dims = grid.counts, len(grid.patch)
    per = [1] * dims
    for axis, chunk in enumerate(chunks or ()):
        per[axis] = int(min(counts[axis], max(1, -(-(chunk - grid.patch[axis]) // grid.stride[axis]) + 1)))
    for axis in reversed(range(dims)):  # grow the last axes first (they are contiguous on disk)
        while per[axis] < counts[axis]:
            trial = per.copy()
            trial[axis] = min(counts[axis], per[axis] * 2)
            extent = [(t - 1) * s + p for t, s, p in zip(trial, grid.stride, grid.patch)]
            if np.prod(extent) > budget:
                break
            per = trial
    starts = [range(0, c, n) for c, n in zip(counts, per)]
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, dims):
        ranges = [np.arange(c, min(c + n, total)) for c, n, total in zip(corner, per, counts)]
        index = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, dims)
        cells = np.ravel_multi_index(tuple(index.T), counts)
        lo = np.asarray(grid.lo) + corner * np.asarray(grid.stride)
        hi = (
            np.asarray(grid.lo) + np.asarray([r[-1] for r in ranges]) * np.asarray(grid.stride) + np.asarray(grid.patch)
        )
        yield cells, lo, hi


def block_patches(region: np.ndarray, grid: Grid) -> np.ndarray:
    """The patches of the cells in ``region`` (``C x spatial``) as ``cells x C x patch`` (C-order cells)."""
    windows = np.lib.stride_tricks.sliding_window_view(region, grid.patch, axis=tuple(range(1, region.ndim)))
    windows = windows[(slice(None),) + tuple(slice(None, None, s) for s in grid.stride)]
    dims = len(grid.patch)
    windows = np.moveaxis(windows, 0, dims)  # cells..., C, patch...
    return windows.reshape(-1, *windows.shape[dims:])


# ---- foreground --------------------------------------------------------------------------------


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the one that best splits them into two classes)."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return high
    hist, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total, total_mean = weight[-1], mean[-1]
    between = (total_mean * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1e-12)
    return float(centres[int(np.argmax(between[:-1]))])


def low_resolution(volume: Volume, factor: Sequence[int]) -> np.ndarray:
    """``C x spatial / factor`` block means of the whole volume, read in blocks."""
    shape = volume.spatial_shape
    out = np.zeros((volume.num_channels, *(-(-s // f) for s, f in zip(shape, factor))), np.float32)
    grid = Grid(tuple(factor), tuple(factor), (0,) * len(shape), tuple(-(-s // f) * f for s, f in zip(shape, factor)))
    for _, lo, hi in cell_blocks(grid, volume.spatial_chunks):
        hi = np.minimum(hi, shape)
        x = volume.read(lo, hi - lo)
        for axis, f in enumerate(factor, start=1):
            starts = np.arange(0, x.shape[axis], f)
            sizes = np.diff(np.append(starts, x.shape[axis])).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
            x = np.add.reduceat(x, starts, axis=axis) / sizes
        target = (slice(None),) + tuple(slice(a // f, a // f + n) for a, f, n in zip(lo, factor, x.shape[1:]))
        out[target] = x
    return out


def box_fractions(mask: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The share of ``True`` in each box ``[lo[i], hi[i])`` of ``mask``, from a summed-area table."""
    dims = mask.ndim
    table = np.pad(mask.astype(np.int64), [(1, 0)] * dims)
    for axis in range(dims):
        table = np.cumsum(table, axis=axis)
    total = np.zeros(len(lo), np.int64)
    for corner in np.ndindex(*(2,) * dims):
        index = tuple(np.where(c, hi[:, a], lo[:, a]) for a, c in enumerate(corner))
        sign = (-1) ** (dims - sum(corner))
        total += sign * table[index]
    return total / np.prod(hi - lo, axis=1)


def foreground_cells(
    volume: Volume, grids: list[Grid], threshold: float | None, fraction: float
) -> tuple[list[np.ndarray], list[float]]:
    """For each grid, the cells whose patch has at least ``fraction`` of its low-resolution voxels above
    the threshold (in any channel); and the per-channel thresholds used."""
    factor = tuple(max(1, p // 4) for p in grids[0].patch)
    low = low_resolution(volume, factor)
    thresholds = [float(threshold) if threshold is not None else otsu(c.reshape(-1)) for c in low]
    mask = np.zeros(low.shape[1:], bool)
    for channel, t in zip(low, thresholds):
        mask |= channel > t
    kept = []
    for grid in grids:
        cells = np.arange(grid.size)
        origins = grid.origins(cells)
        f = np.asarray(factor)
        lo = origins // f
        hi = np.maximum(lo + 1, np.minimum(-(-(origins + np.asarray(grid.patch)) // f), mask.shape))
        kept.append(cells[box_fractions(mask, lo, hi) >= fraction])
    if not len(kept[0]):
        raise UserError(
            f"no patch of '{volume.name}' has foreground (threshold {', '.join(f'{t:.4g}' for t in thresholds)}); "
            "lower data.foreground_threshold or data.foreground_fraction, or use data.sampler=random"
        )
    return kept, thresholds
