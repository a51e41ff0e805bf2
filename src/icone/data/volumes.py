"""Arrays opened, never loaded whole: a stored array (any format), and a :class:`Volume` on it that reads
regions as ``C x spatial`` float32, with the channels chosen, the axes resolved and the spacing kept.

A stored array opens its file lazily in each process (a DataLoader worker opens its own handle),
and is pickled without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from icone.data.axes import Layout, guess_warning, layout
from icone.errors import UserError

MAX_RESAMPLING = 1000  # data.spacing at most this many times finer or coarser than the stored spacing
log = logging.getLogger("icone")


def warn_guessed(volumes: Sequence[Volume]) -> None:
    """One warning per distinct guess of axes among ``volumes`` (naming the first file and how many share it)."""
    seen: dict[tuple, list[Volume]] = {}
    for volume in volumes:
        if volume.layout.origin == "guessed":
            seen.setdefault((volume.layout.axes, volume.layout.shape), []).append(volume)
    for same in seen.values():
        line = guess_warning(same[0].layout, same[0].name)
        if line is not None:
            log.warning(line + (f" ({len(same) - 1} other file(s) alike)" if len(same) > 1 else ""))


class ReadError(UserError):
    """A :class:`UserError` raised while reading a sample; it keeps its one line when torch re-raises it
    from a DataLoader worker (as ``"Caught ReadError in DataLoader worker ... Original Traceback ..."``)."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal " in message:
            last = message.rstrip().splitlines()[-1]
            message = last.partition(": ")[2] or last
        super().__init__(message)


class Stored:
    """An N-d array in a file, read by index (a tuple of slices and integers in stored order).

    Subclasses set ``name``, ``shape``, ``dtype``, and where metadata give them ``axes`` (stored
    order), ``spacing`` (one value or ``None`` per stored axis), ``unit``, ``channel_names`` and
    ``chunks``; they implement :meth:`open` (a handle indexable like an array).
    """

    name: str = ""
    shape: tuple[int, ...] = ()
    dtype: np.dtype = np.dtype(np.float32)
    axes: str | None = None  # from the file's metadata
    convention: str = ""  # the format's fixed axes where it has them (NIfTI: ZYX, ZYXC)
    spacing: tuple[float | None, ...] | None = None
    unit: str = ""
    channel_names: list[str] | None = None  # from the metadata (OME channel names), one per stored channel
    chunks: tuple[int, ...] | None = None
    lazy: bool = True  # False: the format had to be read whole (e.g. a compressed TIFF without zarr)

    _handle: Any = None
    _pid: int | None = None

    def open(self) -> Any:
        raise NotImplementedError

    def say_missing(self) -> None:
        """Warn about parts of the array the file does not hold (Zarr: missing chunks); once the array is accepted."""

    def handle(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = self.open(), os.getpid()
        return self._handle

    def get(self, index: tuple[Any, ...]) -> np.ndarray:
        return np.asarray(self.handle()[index])

    def prefetch(self, indices: list[tuple[Any, ...]]) -> None:
        """A hint: these indices are read next (a chunked reader decodes their chunks together)."""
        handle = self.handle()
        if hasattr(handle, "prefetch"):
            with contextlib.suppress(Exception):  # the reads themselves report what is wrong, naming the region
                handle.prefetch(indices)

    def close(self) -> None:
        """Drop the handle (a per-sample reader keeps nothing between reads)."""
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_handle", None)
        state.pop("_pid", None)
        state.pop("_target", None)
        return state


def _fmt(values: Sequence[int | str]) -> str:
    return ",".join(str(v) for v in values)


def channel_names(stored: Stored, total: int) -> list[str] | None:
    """The metadata's channel names, where there is one per channel and they tell the channels apart."""
    names = stored.channel_names
    return list(names) if names and len(names) == total and len(set(names)) == total and all(names) else None


def choose_channels(channels: Sequence[int | str] | None, stored: Stored, total: int) -> list[int]:
    """``data.channels`` (numbers, or names from the metadata) as channel numbers, checked."""
    if channels is None:
        return list(range(total))
    names, chosen = channel_names(stored, total), []
    for c in channels:
        if isinstance(c, str) and names is None:
            raise UserError(
                f"data.channels={_fmt(channels)} names channels, but '{stored.name}' has no channel names in its "
                f"metadata; give channel numbers 0..{total - 1}"
            )
        if isinstance(c, str):
            lower = [n.lower() for n in names]
            if c.lower() not in lower:
                raise UserError(
                    f"data.channels: '{stored.name}' has no channel '{c}' (channels: {', '.join(names)}); name one of "
                    "them or give its number"
                )
            c = lower.index(c.lower())
        chosen.append(int(c))
    if any(c >= total for c in chosen):
        raise UserError(
            f"data.channels={_fmt(channels)} but '{stored.name}' has {total} channel(s) (0..{total - 1}); "
            f"choose channels between 0 and {total - 1}"
        )
    return chosen


class Volume:
    """A stored array as ``C x spatial`` (spatial ``ZYX`` or ``YX``), channels chosen, optionally resampled.

    ``target_spacing`` (one value per spatial axis) resamples on read: the volume is seen at that
    spacing (linear interpolation for images, nearest for labels), never resampled whole.
    """

    def __init__(
        self,
        stored: Stored,
        axes: str | None = None,
        channels: Sequence[int | str] | None = None,
        target_spacing: Sequence[float] | None = None,
        labels: bool = False,
        timepoint: int | None = None,
        image_set: bool = False,
    ) -> None:
        self.stored, self.labels = stored, labels
        self.layout: Layout = layout(
            stored.shape, stored.name, axes, stored.axes, stored.convention, timepoint, image_set=image_set
        )
        self.channels = choose_channels(channels, stored, self.layout.channels)
        self.stored_spacing = self._spacing()
        self.factor = np.ones(len(self.layout.spatial))
        if target_spacing is not None:
            target = list(target_spacing)
            if len(target) == 1:
                target = target * len(self.layout.spatial)
            if len(target) != len(self.layout.spatial):
                raise UserError(
                    f"data.spacing has {len(target)} numbers but '{stored.name}' has {len(self.layout.spatial)} spatial "
                    f"axes ({self.layout.spatial}); give one per axis"
                )
            if any(s is None for s in self.stored_spacing):
                raise UserError(
                    f"data.spacing resamples to a spacing, but the metadata of '{stored.name}' give no voxel spacing; "
                    "leave data.spacing out, or store the spacing in the file (OME, NIfTI, ImageJ, DICOM)"
                )
            self.factor = np.asarray(self.stored_spacing, float) / np.asarray(target, float)
            self._check_factor(target_spacing)
        self.target_spacing = None if target_spacing is None else tuple(float(s) for s in self.spacing)
        if not labels:  # a label volume leaves out its background chunks as a matter of course
            stored.say_missing()

    def _check_factor(self, asked: Sequence[float]) -> None:
        """``data.spacing`` within :data:`MAX_RESAMPLING` times the stored spacing, and at least a voxel per axis."""
        given = f"data.spacing={','.join(f'{s:g}' for s in asked)}"
        stored = _spacing_text(self.layout.spatial, self.stored_spacing, self.stored.unit)
        finest = float(self.factor.max())
        if not finest <= MAX_RESAMPLING:
            raise UserError(
                f"{given} is {finest:.3g} times finer than the stored spacing of '{self.name}' ({stored}); give a "
                f"spacing within {MAX_RESAMPLING} times the stored one"
            )
        shape = np.asarray(self.layout.spatial_shape) * self.factor
        if (np.round(shape) < 1).any():
            raise UserError(
                f"{given} leaves '{self.name}' {'x'.join(str(int(round(s))) for s in shape)} voxels "
                f"({self.layout.spatial.lower()}); give a spacing within {MAX_RESAMPLING} times the stored one ({stored}) "
                "that keeps a patch's worth of voxels"
            )

    def _spacing(self) -> tuple[float | None, ...]:
        per_axis = self.stored.spacing
        if per_axis is None or len(per_axis) != len(self.layout.axes):
            return (None,) * len(self.layout.spatial)
        return tuple(per_axis[self.layout.axes.index(a)] for a in self.layout.spatial)

    # ---- what it is ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.stored.name

    @property
    def spatial_dims(self) -> int:
        return len(self.layout.spatial)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def stored_spatial_shape(self) -> tuple[int, ...]:
        return self.layout.spatial_shape

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The spatial shape as read (after resampling)."""
        return tuple(int(round(s * f)) for s, f in zip(self.layout.spatial_shape, self.factor))

    @property
    def spacing(self) -> tuple[float | None, ...]:
        return tuple(None if s is None else float(s / f) for s, f in zip(self.stored_spacing, self.factor))

    @property
    def spatial_chunks(self) -> tuple[int, ...] | None:
        """The storage chunk shape per spatial axis (read coordinates), where the format has chunks."""
        chunks = self.stored.chunks
        if chunks is None or len(chunks) != len(self.layout.axes):
            return None
        return tuple(
            int(np.ceil(chunks[self.layout.axes.index(a)] * f)) for a, f in zip(self.layout.spatial, self.factor)
        )

    @property
    def resampled(self) -> bool:
        return bool((self.factor != 1).any())

    # ---- reading ---------------------------------------------------------------------------

    def _index(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[list[Any], list[str]]:
        """The stored index of the spatial region ``[lo, hi)`` (every channel, time point 0), and the kept axes."""
        index, kept = [], []
        for axis in self.layout.axes:
            if axis == "T":
                index.append(self.layout.time)
            elif axis == "C":
                index.append(slice(None))
                kept.append(axis)
            else:
                k = self.layout.spatial.index(axis)
                index.append(slice(int(lo[k]), int(hi[k])))
                kept.append(axis)
        return index, kept

    def prefetch(self, origins: Sequence[Sequence[int]], size: Sequence[int]) -> None:
        """Let the stored array decode what the regions at ``origins`` will need, together (a batch's patches)."""
        if not self.resampled:
            regions = [self._index(o, [a + b for a, b in zip(o, size)])[0] for o in origins]
            self.stored.prefetch([tuple(r) for r in regions])

    def _read_stored(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """The stored region ``[lo, hi)`` (spatial, stored spacing) as ``C x spatial`` in the stored dtype."""
        index, kept = self._index(lo, hi)
        try:
            x = self.stored.get(tuple(index))
        except UserError:
            raise
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else "corrupt data"
            raise ReadError(
                f"cannot read the region {self.layout.spatial.lower()}={_fmt(lo)} of '{self.name}' "
                f"({type(err).__name__}: {reason}); the file may be damaged (e.g. a truncated chunk): re-copy or re-write it"
            ) from None
        order = ([kept.index("C")] if "C" in kept else []) + [kept.index(a) for a in self.layout.spatial]
        x = np.transpose(x, order)
        if "C" not in kept:
            x = x[None]
        if len(self.channels) != self.layout.channels or self.channels != list(range(len(self.channels))):
            x = x[self.channels]
        return x

    def read(self, origin: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """The region at ``origin`` of ``size`` (read coordinates) as ``C x size`` float32; edges past the
        volume are not allowed (patches are placed inside it)."""
        if not self.resampled:
            hi = [o + s for o, s in zip(origin, size)]
            return self._read_stored(origin, hi).astype(np.float32, copy=False)
        return self._read_resampled(origin, size)

    def _read_resampled(self, origin: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """Separable linear (images) or nearest (labels) interpolation of the stored region a patch covers."""
        coords, lo, hi = [], [], []
        for o, s, f, n in zip(origin, size, self.factor, self.layout.spatial_shape):
            c = (np.arange(o, o + s) + 0.5) / f - 0.5  # voxel centres in stored coordinates
            c = np.clip(c, 0, n - 1)
            first, last = int(np.floor(c.min())), min(int(np.floor(c.max())) + 2, n)
            coords.append(c - first)
            lo.append(first)
            hi.append(last)
        x = self._read_stored(lo, hi).astype(np.float32, copy=False)
        for axis, c in enumerate(coords, start=1):
            length = x.shape[axis]
            if self.labels:
                x = np.take(x, np.clip(np.round(c).astype(np.int64), 0, length - 1), axis=axis)
                continue
            i0 = np.clip(np.floor(c).astype(np.int64), 0, length - 1)
            i1 = np.clip(i0 + 1, 0, length - 1)
            w = (c - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
            x = np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w
        return np.ascontiguousarray(x, dtype=np.float32)

    def _channels_text(self) -> str:
        names = channel_names(self.stored, self.layout.channels)
        text = f"{self.num_channels} of {self.layout.channels}"
        if names is not None:
            return text + f" ({', '.join(f'{c} {names[c]}' for c in self.channels)}; data.channels=NAME,... chooses)"
        return text + (f" ({_fmt(self.channels)})" if self.num_channels != self.layout.channels else "")

    def describe(self) -> dict[str, Any]:
        """What ``icone data`` shows of the volume."""
        return {
            "file": self.name,
            "axes": f"{self.layout.axes} ({self.layout.origin})"
            + (
                f", time point {self.layout.time} of {self.layout.shape[self.layout.axes.index('T')]}"
                if "T" in self.layout.axes
                else ""
            ),
            "stored shape": "x".join(map(str, self.stored.shape)),
            "dtype": str(self.stored.dtype),
            "channels": self._channels_text(),
            "spatial shape": "x".join(map(str, self.spatial_shape)) + f" ({self.layout.spatial})",
            "spacing": _spacing_text(self.layout.spatial, self.stored_spacing, self.stored.unit)
            + (f", resampled to {_spacing_text(self.layout.spatial, self.spacing, '')}" if self.resampled else ""),
        }


def _spacing_text(axes: str, spacing: Sequence[float | None], unit: str) -> str:
    if all(s is None for s in spacing):
        return "not in the metadata (1 per voxel assumed)"
    values = " ".join(f"{a.lower()} {'?' if s is None else f'{s:g}'}" for a, s in zip(axes, spacing))
    return values + (f" {unit}" if unit else "")
