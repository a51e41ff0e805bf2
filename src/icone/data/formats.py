"""Stored arrays of each format, opened lazily with their metadata (axes, spacing, chunks):
``.npy`` (memory-mapped), TIFF / OME-TIFF / ImageJ (memory-mapped, or through tifffile's Zarr
interface), NIfTI (nibabel's array proxy), Zarr / OME-Zarr (a resolution level) and HDF5.
DICOM series are in :mod:`icone.data.dicom`.
"""

from __future__ import annotations

import importlib
import logging
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.axes import from_metadata
from icone.data.volumes import Stored
from icone.errors import UserError

log = logging.getLogger("icone")
EXTRAS = {"zarr": "zarr", "h5py": "hdf5", "pydicom": "dicom"}
WHOLE_READ_WARNING = 1 << 30  # a file that has to be read whole is worth a warning above this size


def need(module: str, what: str) -> Any:
    """Import an optional package, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"reading {what} needs the {module} package; install it with: pip install 'icone[{EXTRAS.get(module, module)}]'"
        ) from None


def suffix(path: Path) -> str:
    name = path.name.lower()
    for long in (".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr"):
        if name.endswith(long):
            return long.replace(".ome", "")
    return path.suffix.lower()


def cannot_read(path: Path | str, err: Exception) -> UserError:
    reason = str(err).splitlines()[0] if str(err) else "corrupt file"
    return UserError(f"cannot read '{path}' ({type(err).__name__}: {reason}); remove or replace the file")


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


# ---- TIFF ----------------------------------------------------------------------------------------


def _ome_spacing(xml: str, axes: str) -> tuple[tuple[float | None, ...], str]:
    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return (None,) * len(axes), ""
    values = {a: pixels.get(f"PhysicalSize{a}") for a in "XYZ"}
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    return tuple(float(values[a]) if values.get(a) else None for a in axes), unit


def _imagej_spacing(tif: Any, axes: str) -> tuple[tuple[float | None, ...], str]:
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    values: dict[str, float | None] = {"Z": meta.get("spacing")}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        resolution = page.tags.get(tag)
        if resolution is not None:
            num, den = resolution.value
            values[axis] = den / num if num else None
    return tuple(values.get(a) for a in axes), str(meta.get("unit", ""))


class TiffStored(Stored):
    """A TIFF's first series: memory-mapped when uncompressed, else through tifffile's Zarr interface
    (needs zarr; without it the file is read whole, once per process)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path, self.name = path, str(path)
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                self.shape, self.dtype = tuple(series.shape), np.dtype(series.dtype)
                self.axes = from_metadata(series.axes)
                self.mappable = series.dataoffset is not None
                self.metadata = "OME" if tif.is_ome else "ImageJ" if tif.is_imagej else ""
                if self.axes is not None and tif.is_ome:
                    self.spacing, self.unit = _ome_spacing(tif.ome_metadata, self.axes)
                elif self.axes is not None and tif.is_imagej:
                    self.spacing, self.unit = _imagej_spacing(tif, self.axes)
        except UserError:
            raise
        except Exception as err:
            raise cannot_read(path, err) from None
        if not self.mappable and importlib.util.find_spec("zarr") is None:
            self.lazy = False
            size = int(np.prod(self.shape)) * self.dtype.itemsize
            if size > WHOLE_READ_WARNING:
                log.warning(
                    "'%s' is compressed and is read whole (%.1f GiB); pip install 'icone[zarr]' to read it patch by patch",
                    path,
                    size / 2**30,
                )

    def open(self) -> Any:
        import tifffile

        try:
            if self.mappable:
                return tifffile.memmap(self.path, series=0, mode="r")
            if self.lazy:
                import zarr

                return zarr.open(tifffile.imread(self.path, aszarr=True, series=0), mode="r")
            return tifffile.imread(self.path, series=0)
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


# ---- HDF5 ----------------------------------------------------------------------------------------


def _h5_datasets(handle: Any) -> list[str]:
    import h5py

    found: list[str] = []
    handle.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


class H5Stored(Stored):
    """A dataset of an HDF5 file (``file.h5#path``); axes from an ``axes`` attribute, spacing from
    ``element_size_um`` / ``resolution`` / ``spacing`` attributes where present."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        need("h5py", "HDF5 files")
        self.path = path
        try:
            handle = self._file()
        except Exception as err:
            raise cannot_read(path, err) from None
        with handle:
            found = _h5_datasets(handle)
            if dataset is None:
                if len(found) != 1:
                    raise UserError(
                        f"'{path}' holds {len(found)} datasets ({', '.join(found[:8]) or 'none'}); name one: h5:{path}#"
                        f"{found[0] if found else 'NAME'}"
                    )
                dataset = found[0]
            if dataset.strip("/") not in found:
                raise UserError(
                    f"'{path}' has no dataset '{dataset}' (datasets: {', '.join(found[:8]) or 'none'}); give one as h5:{path}#NAME"
                )
            target = handle[dataset]
            self.shape, self.dtype = tuple(target.shape), np.dtype(target.dtype)
            self.chunks = tuple(target.chunks) if target.chunks else None
            attrs = dict(target.attrs)
        self.dataset, self.name = dataset, f"{path}#{dataset.strip('/')}"
        axes = attrs.get("axes")
        self.axes = from_metadata(axes.decode() if isinstance(axes, bytes) else str(axes)) if axes is not None else None
        for key, unit in (("element_size_um", "µm"), ("resolution", ""), ("spacing", "")):
            if key in attrs:
                values = np.atleast_1d(np.asarray(attrs[key], float)).tolist()
                if self.axes and len(values) == len(self.axes.replace("C", "").replace("T", "")):
                    it = iter(values)
                    self.spacing = tuple(None if a in "CT" else next(it) for a in self.axes)
                elif len(values) == len(self.shape):
                    self.spacing = tuple(values)
                self.unit = unit
                break

    def _file(self) -> Any:
        import h5py

        return h5py.File(self.path, "r", rdcc_nbytes=64 << 20)

    def open(self) -> Any:
        return self._file()[self.dataset]


def open_stored(path: Path, fragment: str | None = None, level: int = 0) -> Stored:
    """The stored array of a file or store, by its suffix (a ``.zarr``/``.h5`` may name its array after ``#``)."""
    from icone.data.zarr_stored import ZarrStored

    kind = suffix(path)
    if kind == ".zarr" or (path.is_dir() and is_zarr(path)):
        return ZarrStored(path, fragment, level)
    if kind in (".h5", ".hdf5", ".hdf"):
        return H5Stored(path, fragment)
    if fragment:
        raise UserError(f"'{path}#{fragment}': only Zarr stores and HDF5 files hold named arrays; remove '#{fragment}'")
    if kind in (".tif", ".tiff"):
        return TiffStored(path)
    if kind in (".nii", ".nii.gz"):
        return NiftiStored(path)
    if kind == ".npy":
        return NpyStored(path)
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
