"""DICOM series: a folder holding one series is one volume (``ZYX``): slices ordered by their position
along the slice normal, rescale slope and intercept applied, spacing from the headers. A folder with
several series names them and asks for one (``data.series=UID``); a series that is one multi-frame
file is read by :mod:`icone.data.dicom_frames`; a folder of one-image files (several single-image
series, or class sub-folders) is an image set (:func:`is_image_set`). Needs pydicom (``icone[dicom]``).

Slices are read when a patch needs them (a few kept per process), never the whole series at once.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.dicom_frames import DicomFileStored
from icone.data.opening import need
from icone.data.volumes import Stored
from icone.errors import UserError

CACHED_SLICES = 128


def dicom_files(folder: Path) -> list[Path]:
    """Files of a folder that are DICOM (``.dcm``, or the ``DICM`` marker at byte 128)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() == ".dcm":
            found.append(path)
            continue
        try:
            with path.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    found.append(path)
        except OSError:
            continue
    return found


def read_header(path: Path) -> Any:
    """A file's DICOM header (a file without the 128-byte preamble is read with ``force=True``), or one line naming it."""
    pydicom = need("pydicom", "DICOM series")
    try:
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "Rows" not in header:
                raise
            return header
    except Exception as err:
        raise UserError(
            f"cannot read '{path}' as DICOM ({type(err).__name__}); remove it from the folder or replace it"
        ) from None


def image_headers(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    """The files of a folder that hold images, grouped by series (a DICOMDIR or a report is left out)."""
    files = dicom_files(folder)
    if not files:
        raise UserError(
            f"'{folder}' holds no DICOM files (.dcm, or files with the DICM marker); point to a series folder"
        )
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in files:
        header = read_header(path)
        if "PixelData" not in header and not hasattr(header, "Rows"):
            continue
        groups.setdefault(str(getattr(header, "SeriesInstanceUID", "?")), []).append((path, header))
    return groups


def is_image_set(folder: Path) -> bool:
    """A folder of one-image DICOM files, not a series: several series of one single-frame file each, or
    single-frame files without slice positions (X-ray, secondary capture) in two or more class sub-folders."""
    groups = image_headers(folder)
    members = [m for g in groups.values() for m in g]
    if any(int(getattr(h, "NumberOfFrames", 1) or 1) > 1 for _, h in members):
        return False
    if len(groups) > 1 and all(len(g) == 1 for g in groups.values()):
        return True
    parts = [p.relative_to(folder).parts for p, _ in members]
    classes = {q[0] for q in parts if len(q) == 2}
    return (
        all(len(q) == 2 for q in parts)
        and len(classes) > 1
        and not any("ImagePositionPatient" in h for _, h in members)
    )


def open_dicom(path: Path, series: str | None = None) -> Stored:
    """A DICOM file (multi-frame: a volume; else an image), or the series of a folder as one volume."""
    if path.is_file():
        return DicomFileStored(path)
    uid, members = choose_series(path, series)
    if len(members) == 1 and int(getattr(members[0][1], "NumberOfFrames", 1) or 1) > 1:
        return DicomFileStored(*members[0])
    return DicomStored(path, series, (uid, members))


def choose_series(folder: Path, series: str | None) -> tuple[str, list[tuple[Path, Any]]]:
    """The one series of a folder (or the one ``data.series`` names): its UID and ``(file, header)`` pairs."""
    groups = image_headers(folder)
    if series is not None:
        matches = [uid for uid in groups if uid == series or uid.startswith(series)]
        if len(matches) != 1:
            raise UserError(
                f"data.series={series} matches {len(matches)} of the series in '{folder}': "
                + "; ".join(_series_line(u, [h for _, h in groups[u]]) for u in groups)
            )
        groups = {matches[0]: groups[matches[0]]}
    if len(groups) > 1:
        listed = "; ".join(_series_line(u, [h for _, h in g]) for u, g in groups.items())
        raise UserError(f"'{folder}' holds {len(groups)} DICOM series: {listed}; choose one with data.series=UID")
    ((uid, members),) = groups.items()
    return uid, members


def _series_line(uid: str, headers: list[Any]) -> str:
    first = headers[0]
    what = " ".join(str(getattr(first, key, "")) for key in ("Modality", "SeriesDescription")).strip()
    return f"{uid} ({len(headers)} slices{', ' + what if what else ''})"


class DicomStored(Stored):
    """One series of a folder as a ``Z x Y x X`` float32 array (after rescale slope and intercept)."""

    axes = "ZYX"

    def __init__(self, folder: Path, series: str | None = None, chosen: tuple[str, list] | None = None) -> None:
        self.folder, self.unit = folder, "mm"
        self.uid, members = chosen or choose_series(folder, series)
        self.name = f"{folder} (series {self.uid})"
        self.files, self.rescale, positions = self._order(members)
        first = members[0][1]
        self.shape = (len(self.files), int(first.Rows), int(first.Columns))
        self.dtype = np.dtype(np.float32)
        rows, cols = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
        steps = np.diff(positions)
        slice_spacing = float(np.median(steps)) if len(steps) else float(getattr(first, "SliceThickness", 1.0) or 1.0)
        if len(steps) and np.ptp(steps) > 0.01 * max(abs(slice_spacing), 1e-6):
            raise UserError(
                f"the slices of '{self.name}' are unevenly spaced ({steps.min():.3g} to {steps.max():.3g} mm); "
                "missing slices? re-export the series whole"
            )
        self.spacing = (abs(slice_spacing), rows, cols)
        self.chunks = (1, self.shape[1], self.shape[2])

    def _order(self, members: list[tuple[Path, Any]]) -> tuple[list[Path], list[tuple[float, float]], np.ndarray]:
        shapes = {(int(h.Rows), int(h.Columns)) for _, h in members}
        if len(shapes) > 1:
            raise UserError(f"the slices of series {self.uid} in '{self.folder}' have different sizes {sorted(shapes)}")
        missing = [p for p, h in members if not hasattr(h, "ImagePositionPatient")]
        if missing:
            raise UserError(
                f"'{missing[0]}' has no ImagePositionPatient tag ({len(missing)} of {len(members)} slices lack it), so "
                "the slices cannot be ordered; export the series with position tags"
            )
        orientation = np.asarray(getattr(members[0][1], "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), float)
        normal = np.cross(orientation[:3], orientation[3:])
        position = np.asarray([np.dot(normal, np.asarray(h.ImagePositionPatient, float)) for _, h in members])
        order = np.argsort(position, kind="stable")
        if len(np.unique(np.round(position, 4))) != len(position):
            raise UserError(
                f"series {self.uid} in '{self.folder}' has several slices at the same position; it may hold several "
                "acquisitions: keep one"
            )
        files = [members[i][0] for i in order]
        rescale = [
            (
                float(getattr(members[i][1], "RescaleSlope", 1) or 1),
                float(getattr(members[i][1], "RescaleIntercept", 0) or 0),
            )
            for i in order
        ]
        return files, rescale, position[order]

    def open(self) -> Any:
        return _Slices(self)


class _Slices:
    """Indexable ``Z x Y x X``: reads the slices an index needs (kept in a small cache)."""

    def __init__(self, stored: DicomStored) -> None:
        self.stored, self.cache = stored, OrderedDict()

    def slice(self, z: int) -> np.ndarray:
        if z in self.cache:
            self.cache.move_to_end(z)
            return self.cache[z]
        import pydicom

        path = self.stored.files[z]
        try:
            pixels = pydicom.dcmread(path).pixel_array.astype(np.float32)
        except Exception as err:
            raise UserError(
                f"cannot read the pixels of '{path}' ({type(err).__name__}: {err}); replace the file"
            ) from None
        slope, intercept = self.stored.rescale[z]
        pixels = pixels * slope + intercept
        self.cache[z] = pixels
        if len(self.cache) > CACHED_SLICES:
            self.cache.popitem(last=False)
        return pixels

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        zs, ys, xs = index
        zs = range(*zs.indices(self.stored.shape[0])) if isinstance(zs, slice) else [zs]
        return np.stack([self.slice(z)[ys, xs] for z in zs])
