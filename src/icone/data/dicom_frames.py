"""One DICOM file as an array: a multi-frame file (enhanced CT/MR, RT dose, ultrasound cine) as ``Z x Y x X``
with its frames as Z, ordered by their per-frame positions (``PerFrameFunctionalGroupsSequence`` ->
``PlanePositionSequence``, or an RT dose's ``GridFrameOffsetVector``) where present, spacing from the
pixel measures, each frame's rescale applied; a single-frame file as a 2D image (``YX``, or ``YXC``).
Frames are decoded when a patch needs them (one at a time with pydicom 3), a few kept per process."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.volumes import Stored
from icone.errors import UserError

CACHED_FRAMES = 128


def functional(header: Any, frame: int, sequence: str) -> Any:
    """The first item of ``sequence`` for ``frame``: per-frame functional groups first, then the shared ones."""
    for key, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = header.get(key)
        if groups and len(groups) > index and sequence in groups[index] and len(groups[index][sequence].value):
            return groups[index][sequence][0]
    return None


def even_spacing(positions: np.ndarray, name: str, fallback: float) -> float:
    """The step between sorted slice positions; unevenly spaced or duplicate slices are refused."""
    steps = np.diff(positions)
    if not len(steps):
        return fallback
    if (np.abs(steps) < 1e-4).any():
        raise UserError(f"'{name}' has several slices at the same position; it may hold several acquisitions: keep one")
    spacing = float(np.median(steps))
    if np.ptp(steps) > 0.01 * max(abs(spacing), 1e-6):
        raise UserError(
            f"the slices of '{name}' are unevenly spaced ({steps.min():.3g} to {steps.max():.3g} mm); "
            "missing slices? re-export the series whole"
        )
    return abs(spacing)


def _rescale(header: Any, frame: int) -> tuple[float, float]:
    item = functional(header, frame, "PixelValueTransformationSequence") or header
    slope = float(getattr(item, "RescaleSlope", 1) or 1) * float(getattr(header, "DoseGridScaling", 1) or 1)
    return slope, float(getattr(item, "RescaleIntercept", 0) or 0)


def _frame_positions(header: Any, frames: int) -> np.ndarray | None:
    """Each frame's position along the slice normal, where the file gives every frame one."""
    first = functional(header, 0, "PlaneOrientationSequence") or header
    orientation = np.asarray(getattr(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = []
    for k in range(frames):
        item = functional(header, k, "PlanePositionSequence")
        if item is None or "ImagePositionPatient" not in item:
            break
        positions.append(float(np.dot(normal, np.asarray(item.ImagePositionPatient, float))))
    if len(positions) == frames:
        return np.asarray(positions)
    offsets = header.get("GridFrameOffsetVector")  # RT dose: each frame's offset along the normal
    return np.asarray([float(v) for v in offsets]) if offsets is not None and len(offsets) == frames else None


class DicomFileStored(Stored):
    """A DICOM file: a multi-frame one as ``ZYX`` (``ZYXC`` for colour), a single frame as ``YX``/``YXC``."""

    def __init__(self, path: Path, header: Any | None = None) -> None:
        from icone.data.dicom import read_header

        self.path, self.unit = path, "mm"
        header = header if header is not None else read_header(path)
        frames = int(getattr(header, "NumberOfFrames", 1) or 1)
        samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
        plane = (int(header.Rows), int(header.Columns)) + ((samples,) if samples > 1 else ())
        self.frames = frames > 1
        self.shape = ((frames,) if self.frames else ()) + plane
        self.axes = ("ZYX" if self.frames else "YX") + ("C" if samples > 1 else "")
        self.dtype = np.dtype(np.float32)
        self.name = f"{path} ({frames} frames)" if self.frames else str(path)
        measures = functional(header, 0, "PixelMeasuresSequence") or header
        rows, cols = (float(v) for v in getattr(measures, "PixelSpacing", None) or (1.0, 1.0))
        depth = float(
            getattr(measures, "SpacingBetweenSlices", None) or getattr(measures, "SliceThickness", None) or 1.0
        )
        self.order = np.arange(frames)
        positions = _frame_positions(header, frames) if self.frames else None
        if positions is not None:
            self.order = np.argsort(positions, kind="stable")
            depth = even_spacing(positions[self.order], self.name, depth)
        self.rescale = [_rescale(header, int(k)) for k in self.order]
        self.spacing = ((depth,) if self.frames else ()) + (rows, cols) + ((None,) if samples > 1 else ())
        self.chunks = ((1,) if self.frames else ()) + plane

    def open(self) -> Any:
        return _Frames(self)


class _Frames:
    """Indexable like the stored array: decodes the frames an index needs (a few kept)."""

    def __init__(self, stored: DicomFileStored) -> None:
        self.stored, self.cache, self.whole = stored, OrderedDict(), None

    def _decode(self, frame: int) -> np.ndarray:
        import pydicom

        try:
            from pydicom.pixels import pixel_array  # pydicom 3: one frame at a time

            return pixel_array(str(self.stored.path), index=frame if self.stored.frames else None)
        except ImportError:
            if self.whole is None:
                self.whole = pydicom.dcmread(self.stored.path).pixel_array
            return self.whole[frame] if self.stored.frames else self.whole

    def frame(self, z: int) -> np.ndarray:
        if z in self.cache:
            self.cache.move_to_end(z)
            return self.cache[z]
        try:
            pixels = self._decode(int(self.stored.order[z])).astype(np.float32)
        except Exception as err:
            raise UserError(
                f"cannot read the pixels of '{self.stored.path}' ({type(err).__name__}: {err}); replace the file"
            ) from None
        slope, intercept = self.stored.rescale[z]
        self.cache[z] = pixels * slope + intercept
        if len(self.cache) > CACHED_FRAMES:
            self.cache.popitem(last=False)
        return self.cache[z]

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        if not self.stored.frames:
            return self.frame(0)[index]
        zs, rest = index[0], index[1:]
        zs = range(*zs.indices(self.stored.shape[0])) if isinstance(zs, slice) else [zs]
        return np.stack([self.frame(z)[rest] for z in zs])
