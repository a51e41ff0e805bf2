"""Zarr and OME-Zarr stores: an array of a store (``store.zarr#path``), or a resolution level of an OME-Zarr
image, opened lazily with its axes and spacing. Chunks a store does not hold are read as its fill value:
said once per store, as that is a sparse store or an incomplete copy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.axes import from_metadata
from icone.data.chunk_cache import ChunkCache
from icone.data.opening import cannot_read, need
from icone.data.volumes import Stored
from icone.data.zarr_chunks import direct_reader
from icone.errors import UserError

log = logging.getLogger("icone")


def say_missing_chunks(array: Any, name: str) -> None:
    """Warn when a store holds fewer chunks than its shape has: zarr reads the others as the fill value."""
    try:
        stored, total = int(array.nchunks_initialized), int(array.nchunks)
    except Exception:  # a store that cannot list its chunks: nothing to say
        return
    if stored < total:
        log.warning(
            "'%s' holds %d of its %d chunks; the missing ones are read as the fill value %s (zarr leaves out chunks "
            "of only that value; or is the copy incomplete?)", name, stored, total, array.fill_value,
        )  # fmt: skip


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    return attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")


def _zarr_arrays(group: Any, prefix: str = "") -> list[str]:
    names = sorted(f"{prefix}{name}" for name, _ in group.arrays())
    for name, sub in group.groups():
        names += _zarr_arrays(sub, f"{prefix}{name}/")
    return names


class ZarrStored(Stored):
    """An array of a Zarr store (``store.zarr#path``), or a resolution level of an OME-Zarr image."""

    def __init__(self, path: Path, array: str | None, level: int = 0) -> None:
        zarr = need("zarr", "Zarr stores")
        self.path, self.level = path, level
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as err:
            raise cannot_read(path, err) from None
        if array and not hasattr(node, "arrays"):
            raise UserError(f"'{path}' is a single array, not a group; drop '#{array}' (zarr:{path})")
        if array:
            try:
                node = node[array]
            except (KeyError, TypeError, AttributeError, IndexError):
                found = _zarr_arrays(node)
                raise UserError(
                    f"'{path}' has no array '{array}' (arrays: {', '.join(found) or 'none'}); give one as zarr:{path}#NAME"
                ) from None
        inner = array or ""
        if hasattr(node, "arrays"):  # a group: an OME-Zarr image, or a store holding one array
            attrs = node.attrs.asdict()
            multiscales = _multiscales(attrs)
            omero = attrs.get("omero") or (attrs.get("ome") or {}).get("omero") or {}
            self.channel_names = [str(c.get("label", "")) for c in omero.get("channels", []) if isinstance(c, dict)]
            if multiscales:
                inner = self._level(node, multiscales[0], inner)
            else:
                found = _zarr_arrays(node)
                if len(found) != 1:
                    raise UserError(
                        f"'{path}' holds {len(found)} arrays ({', '.join(found[:8]) or 'none'}); name one: zarr:{path}#"
                        f"{found[0] if found else 'NAME'}"
                    )
                inner = f"{inner}/{found[0]}" if inner else found[0]
        if level and not self.axes:
            raise UserError(f"data.level={level} but '{path}' is not a multi-resolution OME-Zarr image; leave it out")
        self.inner = inner
        self.name = f"{path}#{inner}" if inner else str(path)
        target = self._array()
        self.shape, self.dtype, self.chunks = tuple(target.shape), np.dtype(target.dtype), tuple(target.chunks)
        self._target = target
        if self.spacing is not None and len(self.spacing) != len(self.shape):
            self.spacing = None

    def _level(self, group: Any, multiscale: dict[str, Any], inner: str) -> str:
        datasets = multiscale.get("datasets", [])
        if self.level >= len(datasets):
            raise UserError(
                f"data.level={self.level} but '{self.path}' has {len(datasets)} resolution level(s) (0..{len(datasets) - 1}); choose one of them"
            )
        axes = multiscale.get("axes") or []
        names = "".join((a["name"] if isinstance(a, dict) else str(a))[:1] for a in axes)
        self.axes = from_metadata(names) if names else None
        units = [a.get("unit", "") for a in axes if isinstance(a, dict) and a.get("type") == "space"]
        self.unit = units[0] if units else ""
        scale = np.ones(len(axes))
        for transforms in (
            multiscale.get("coordinateTransformations"),
            datasets[self.level].get("coordinateTransformations"),
        ):
            for t in transforms or []:
                if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                    scale = scale * np.asarray(t["scale"], float)
        if len(axes):
            spatial = [(isinstance(a, dict) and a.get("type") == "space") or str(a).lower() in "zyx" for a in axes]
            self.spacing = tuple(float(s) if space else None for s, space in zip(scale, spatial))
        path = datasets[self.level]["path"]
        return f"{inner}/{path}" if inner else path

    def say_missing(self) -> None:
        """Once per store opened (a load of the data), not per patch read."""
        if self._target is not None:
            say_missing_chunks(self._target, self.name)
        self._target = None

    def _array(self) -> Any:
        import zarr

        root = zarr.open(str(self.path), mode="r")
        return root[self.inner] if self.inner else root

    def open(self) -> Any:
        """The array, read through a per-process cache of decoded chunks (:mod:`icone.data.chunk_cache`)."""
        array = self._array()
        folder = self.path / self.inner if self.inner else self.path
        return ChunkCache(array, array.chunks, read_chunk=direct_reader(folder, tuple(array.shape)))
