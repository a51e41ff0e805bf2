"""TIFF / OME-TIFF / ImageJ files: memory-mapped when uncompressed, through tifffile's Zarr interface when
compressed with a codec tifffile has (Deflate, PackBits...), and page by page through Pillow for LZW,
JPEG and the other codecs that tifffile leaves to the ``imagecodecs`` package when it is not installed.
"""

from __future__ import annotations

import itertools
import logging
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.axes import from_metadata
from icone.data.chunk_cache import ChunkCache
from icone.data.opening import WHOLE_READ_WARNING, cannot_read, has_module
from icone.data.volumes import Stored
from icone.errors import UserError

log = logging.getLogger("icone")
CACHED_PAGES = 64


def _ome_channels(root: ElementTree.Element) -> list[str]:
    return [e.get("Name") or "" for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Channel"]


def _ome_spacing(xml: str, axes: str) -> tuple[tuple[float | None, ...], str, list[str]]:
    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return (None,) * len(axes), "", []
    values = {a: pixels.get(f"PhysicalSize{a}") for a in "XYZ"}
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    return tuple(float(values[a]) if values.get(a) else None for a in axes), unit, _ome_channels(pixels)


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


def _needs_codec(page: Any) -> str | None:
    """The name of the page's compression when tifffile cannot decode it without imagecodecs."""
    from tifffile import TIFF

    compression = int(page.compression)
    if compression == 1 or compression in TIFF.DECOMPRESSORS:
        return None
    return getattr(page.compression, "name", str(compression))


class TiffStored(Stored):
    """A TIFF's first series: memory-mapped when uncompressed, else through tifffile's Zarr interface
    (needs zarr; without it the file is read whole, once per process), or page by page with Pillow for
    codecs tifffile needs imagecodecs for (LZW, JPEG...)."""

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path, self.name, self.pillow = path, str(path), False
        try:
            with tifffile.TiffFile(path) as tif:
                self._header(tif)
        except UserError:
            raise
        except Exception as err:
            raise cannot_read(path, err) from None
        if self.pillow:
            self._check_pillow()
        elif not self.mappable and not has_module("zarr"):
            self.lazy = False
            size = int(np.prod(self.shape)) * self.dtype.itemsize
            if size > WHOLE_READ_WARNING:
                log.warning(
                    "'%s' is compressed and is read whole (%.1f GiB); pip install 'icone[zarr]' to read it patch by patch",
                    self.path,
                    size / 2**30,
                )

    def _header(self, tif: Any) -> None:
        series = tif.series[0]
        self.shape, self.dtype = tuple(series.shape), np.dtype(series.dtype)
        self.axes = from_metadata(series.axes)
        self.mappable = series.dataoffset is not None
        self.metadata = "OME" if tif.is_ome else "ImageJ" if tif.is_imagej else ""
        if self.axes is not None and tif.is_ome:
            self.spacing, self.unit, self.channel_names = _ome_spacing(tif.ome_metadata, self.axes)
        elif self.axes is not None and tif.is_imagej:
            self.spacing, self.unit = _imagej_spacing(tif, self.axes)
        page = series.pages[0]
        self.codec = None if self.mappable else _needs_codec(page)
        if self.codec is not None and not has_module("imagecodecs"):
            self.pillow = True
            self.page_shape = tuple(page.shape)
            self.pages = [int(p.index) for p in series.pages]

    def _check_pillow(self) -> None:
        """Pillow decodes the first page to the shape tifffile announced, or one line names the package."""
        try:
            first = _PillowPages(self).page(0)
        except Exception:
            first = None
        if first is None or first.shape != self.page_shape or self.shape[-len(self.page_shape) :] != self.page_shape:
            raise UserError(
                f"'{self.path}' is {self.codec}-compressed, which needs the imagecodecs package: "
                "pip install 'icone[tiff]' (or save it uncompressed, or with LZW or Deflate)"
            )

    def open(self) -> Any:
        import tifffile

        try:
            if self.mappable:
                return tifffile.memmap(self.path, series=0, mode="r")
            if self.pillow:
                return _PillowPages(self)
            if self.lazy:
                import zarr

                array = zarr.open(tifffile.imread(self.path, aszarr=True, series=0), mode="r")
                return ChunkCache(array, array.chunks)  # each tile or strip decoded once per process
            return tifffile.imread(self.path, series=0)
        except Exception as err:
            raise cannot_read(self.path, err) from None


class _PillowPages:
    """Indexable like the TIFF's series: the pages an index needs, decoded by Pillow (a few kept)."""

    def __init__(self, stored: TiffStored) -> None:
        self.stored, self.cache, self.image = stored, OrderedDict(), None

    def page(self, k: int) -> np.ndarray:
        if k in self.cache:
            self.cache.move_to_end(k)
            return self.cache[k]
        from PIL import Image

        if self.image is None:
            self.image = Image.open(self.stored.path)
        self.image.seek(self.stored.pages[k])
        pixels = np.asarray(self.image).astype(self.stored.dtype, copy=False)
        self.cache[k] = pixels
        if len(self.cache) > CACHED_PAGES:
            self.cache.popitem(last=False)
        return pixels

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        lead = self.stored.shape[: len(self.stored.shape) - len(self.stored.page_shape)]
        outer, inner = index[: len(lead)], index[len(lead) :]
        ranges = [range(*i.indices(n)) if isinstance(i, slice) else [int(i)] for i, n in zip(outer, lead)]
        parts = [
            self.page(int(np.ravel_multi_index(c, lead)) if lead else 0)[inner] for c in itertools.product(*ranges)
        ]
        x = np.stack(parts).reshape([len(r) for r in ranges] + list(parts[0].shape))
        return x[tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in outer)]
