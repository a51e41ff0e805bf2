"""Stored arrays of each format, opened lazily with their metadata (axes, spacing, chunks):
``.npy`` (memory-mapped), TIFF / OME-TIFF / ImageJ (memory-mapped, or through tifffile's Zarr
interface; :mod:`icone.data.tiff`), NIfTI (nibabel's array proxy), Zarr / OME-Zarr (a resolution
level) and HDF5 (ilastik, BigDataViewer; :mod:`icone.data.hdf5`). DICOM is in :mod:`icone.data.dicom`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.hdf5 import H5Stored, bdv_xml_stored
from icone.data.opening import cannot_read, need, suffix
from icone.data.tiff import TiffStored
from icone.data.volumes import Stored
from icone.errors import UserError

log = logging.getLogger("icone")
__all__ = ["need", "open_stored", "split_fragment", "suffix"]


class NpyStored(Stored):
    def __init__(self, path: Path) -> None:
        self.path, self.name = path, str(path)
        array = self.open()
        self.shape, self.dtype = tuple(array.shape), array.dtype

    def open(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except Exception as err:
            raise cannot_read(self.path, err) from None


# ---- NIfTI ---------------------------------------------------------------------------------------


class NiftiStored(Stored):
    """A NIfTI image as stored (axes i, j, k taken as Z, Y, X; a 4th as channels), with the affine's
    voxel sizes as spacing. ``.nii`` is read through nibabel's proxy; ``.nii.gz`` (no random access)
    whole, once per process."""

    def __init__(self, path: Path) -> None:
        import nibabel

        self.path, self.name = path, str(path)
        try:
            image = nibabel.load(str(path))
            self.shape, self.dtype = tuple(image.shape), np.dtype(image.get_data_dtype())
            zooms = [float(z) for z in image.header.get_zooms()]
            self.unit = image.header.get_xyzt_units()[0]
            self.unit = "" if self.unit == "unknown" else self.unit
        except Exception as err:
            raise cannot_read(path, err) from None
        self.convention = {2: "YX", 3: "ZYX", 4: "ZYXC"}.get(len(self.shape), "")
        self.spacing = tuple(zooms[: min(3, len(self.shape))]) + (None,) * max(0, len(self.shape) - 3)
        if len(self.shape) == 2:
            self.spacing = tuple(zooms[:2])
        self.lazy = suffix(path) != ".nii.gz"

    def open(self) -> Any:
        import nibabel

        try:
            proxy = nibabel.load(str(self.path)).dataobj
            return proxy if self.lazy else np.asarray(proxy)
        except Exception as err:
            raise cannot_read(self.path, err) from None


def open_stored(path: Path, fragment: str | None = None, level: int = 0) -> Stored:
    """The stored array of a file or store, by its suffix (a ``.zarr``/``.h5`` may name its array after ``#``)."""
    from icone.data.zarr_stored import ZarrStored

    kind = suffix(path)
    if kind == ".zarr" or (path.is_dir() and is_zarr(path)):
        return ZarrStored(path, fragment, level)
    if kind in (".h5", ".hdf5", ".hdf"):
        return H5Stored(path, fragment, level)
    if kind == ".xml":
        return bdv_xml_stored(path, fragment, level)
    if fragment:
        raise UserError(f"'{path}#{fragment}': only Zarr stores and HDF5 files hold named arrays; remove '#{fragment}'")
    if kind in (".tif", ".tiff"):
        return TiffStored(path)
    if kind in (".nii", ".nii.gz"):
        return NiftiStored(path)
    if kind == ".npy":
        return NpyStored(path)
    if kind == ".dcm":
        from icone.data.dicom_frames import DicomFileStored

        return DicomFileStored(path)
    return ImageStored(path)


def is_zarr(path: Path) -> bool:
    return any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray"))


class ImageStored(Stored):
    """A png/jpg/bmp image (read whole: these are small), ``YX`` or ``YXC``; declared alpha is dropped."""

    lazy = False

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path, self.name = path, str(path)
        try:
            with Image.open(path) as image:
                width, height = image.size
                bands = len(image.getbands())
                self.alpha = image.mode in ("RGBA", "LA", "PA")
                self.mode = image.mode
        except Exception as err:
            raise cannot_read(path, err) from None
        channels = bands - 1 if self.alpha else bands
        if image.mode not in ("L", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "LA"):
            channels = 3
        self.shape = (height, width) if channels == 1 else (height, width, channels)
        self.axes = "YX" if channels == 1 else "YXC"
        self.dtype = np.dtype(
            {"I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32}.get(self.mode, np.uint8)
        )

    def open(self) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.path) as image:
                image.load()
                if image.mode not in ("L", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "LA"):
                    image = image.convert("RGB")
                array = np.asarray(image)
        except Exception as err:
            raise cannot_read(self.path, err) from None
        if self.alpha:
            array = array[..., :-1]
            array = array[..., 0] if array.shape[-1] == 1 else array
        return array


def split_fragment(spec: str) -> tuple[str, str | None]:
    """``store.zarr#array`` -> ``("store.zarr", "array")`` (a path that exists with its ``#`` is kept whole)."""
    if "#" in spec and not Path(spec).expanduser().exists():
        path, fragment = spec.rsplit("#", 1)
        return path, fragment.strip("/") or None
    return spec, None
