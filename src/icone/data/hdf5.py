"""HDF5 datasets: axes from an ``axes`` attribute or ilastik's ``axistags`` (with its resolutions), spacing
from ``element_size_um`` / ``resolution`` / ``spacing``; BigDataViewer files (``t00000/s00/0/cells``,
stored ``ZYX``) named clearly, with the spacing of their ``.xml`` (beside the ``.h5``, or given as the
source) times the level's downsampling factors."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np

from icone.data.axes import from_metadata
from icone.data.opening import cannot_read, need
from icone.data.volumes import Stored
from icone.errors import UserError

BDV_CELLS = re.compile(r"^t(\d+)/s(\d+)/(\d+)/cells$")


def _h5_datasets(handle: Any) -> list[str]:
    import h5py

    found: list[str] = []
    handle.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


def axistags(attrs: dict[str, Any]) -> tuple[str | None, list[float | None] | None]:
    """ilastik's ``axistags`` JSON: the axes letters and each axis's resolution (``None`` where 0)."""
    raw = attrs.get("axistags")
    if raw is None:
        return None, None
    try:
        tags = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))["axes"]
        letters = "".join(str(t["key"]) for t in tags)
        resolution = [float(t.get("resolution") or 0) or None for t in tags]
    except (ValueError, KeyError, TypeError):
        return None, None
    axes = from_metadata(letters)
    return axes, [None if a in "CT" else r for a, r in zip(axes, resolution)] if axes else None


def _bdv_names(cells: list[str]) -> str:
    parts = [BDV_CELLS.match(c).groups() for c in cells]
    setups = sorted({f"s{s}" for _, s, _ in parts})
    levels = sorted({int(level) for _, _, level in parts})
    times = sorted({f"t{t}" for t, _, _ in parts})
    return f"setups {', '.join(setups)}; timepoints {', '.join(times[:4])}{' ...' if len(times) > 4 else ''}; levels {levels[0]}..{levels[-1]}"


def _bdv_xml_setups(xml: Path) -> tuple[dict[int, tuple[tuple[float, float, float], str]], str | None]:
    """Each setup's voxel size (z, y, x) and unit from a BigDataViewer ``.xml``, and the HDF5 file it names."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (ElementTree.ParseError, OSError) as err:
        raise cannot_read(xml, err) from None
    setups = {}
    for setup in root.iter("ViewSetup"):
        size = setup.find("voxelSize/size")
        if setup.findtext("id") is not None and size is not None and size.text:
            x, y, z = (float(v) for v in size.text.split()[:3])
            setups[int(setup.findtext("id"))] = ((z, y, x), setup.findtext("voxelSize/unit") or "")
    return setups, root.findtext(".//ImageLoader/hdf5")


class H5Stored(Stored):
    """A dataset of an HDF5 file (``file.h5#path``); axes from an ``axes`` attribute or ilastik's
    ``axistags``, spacing from its attributes, or from a BigDataViewer ``.xml``."""

    def __init__(self, path: Path, dataset: str | None, level: int = 0, xml: Path | None = None) -> None:
        need("h5py", "HDF5 files")
        self.path = path
        try:
            handle = self._file()
        except Exception as err:
            raise cannot_read(path, err) from None
        with handle:
            dataset = self._choose(_h5_datasets(handle), dataset, level)
            target = handle[dataset]
            self.shape, self.dtype = tuple(target.shape), np.dtype(target.dtype)
            self.chunks = tuple(target.chunks) if target.chunks else None
            attrs = dict(target.attrs)
            factors = self._bdv_factors(handle, dataset)
        self.dataset, self.name = dataset, f"{path}#{dataset.strip('/')}"
        if factors is not None:
            self._bdv_spacing(dataset, factors, xml or path.with_suffix(".xml"))
        else:
            self._attributes(attrs)

    def _choose(self, found: list[str], dataset: str | None, level: int) -> str:
        cells = [f for f in found if BDV_CELLS.match(f)]
        if dataset is None and cells:
            at_level = [c for c in cells if BDV_CELLS.match(c).group(3) == str(level)]
            if len(at_level) == 1:
                return at_level[0]
            raise UserError(
                f"'{self.path}' is a BigDataViewer file ({_bdv_names(cells)}); name one image, e.g. "
                f"h5:{self.path}#{cells[0]} (or give its .xml for the spacing)"
            )
        if dataset is None:
            if len(found) != 1:
                raise UserError(
                    f"'{self.path}' holds {len(found)} datasets ({', '.join(found[:8]) or 'none'}); name one: h5:{self.path}#"
                    f"{found[0] if found else 'NAME'}"
                )
            return found[0]
        if dataset.strip("/") not in found:
            raise UserError(
                f"'{self.path}' has no dataset '{dataset}' (datasets: {', '.join((cells or found)[:8]) or 'none'}); "
                f"give one as h5:{self.path}#NAME"
            )
        return dataset.strip("/")

    @staticmethod
    def _bdv_factors(handle: Any, dataset: str) -> np.ndarray | None:
        match = BDV_CELLS.match(dataset)
        if match is None:
            return None
        resolutions = handle.get(f"s{match.group(2)}/resolutions")
        level = int(match.group(3))
        if resolutions is None or len(resolutions) <= level:
            return np.ones(3)
        return np.asarray(resolutions[level], float)[::-1]  # stored x, y, z

    def _bdv_spacing(self, dataset: str, factors: np.ndarray, xml: Path) -> None:
        self.axes, self.metadata = ("ZYX", "BigDataViewer") if len(self.shape) == 3 else (None, "")
        setup = int(BDV_CELLS.match(dataset).group(2))
        if self.axes and xml.is_file():
            setups, _ = _bdv_xml_setups(xml)
            if setup in setups:
                sizes, self.unit = setups[setup]
                self.spacing = tuple(float(s * f) for s, f in zip(sizes, factors))

    def _attributes(self, attrs: dict[str, Any]) -> None:
        axes = attrs.get("axes")
        tagged, resolution = axistags(attrs)
        if axes is not None:
            self.axes = from_metadata(axes.decode() if isinstance(axes, bytes) else str(axes))
        elif tagged is not None:
            self.axes, self.metadata = tagged, "ilastik"
            if any(r is not None for r in resolution):
                self.spacing = tuple(resolution)
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


def bdv_xml_stored(xml: Path, setup: str | None, level: int = 0) -> H5Stored:
    """A BigDataViewer ``.xml`` (``dataset.xml[#SETUP]``): its HDF5 file's first timepoint of a setup, at ``level``."""
    setups, h5 = _bdv_xml_setups(xml)
    if not h5:
        raise UserError(f"'{xml}' is not a BigDataViewer HDF5 dataset (no ImageLoader/hdf5); give the .h5 file itself")
    path = (xml.parent / h5).resolve() if not Path(h5).is_absolute() else Path(h5)
    if setup is None and len(setups) > 1:
        raise UserError(
            f"'{xml}' has {len(setups)} setups ({', '.join(map(str, sorted(setups)))}); name one: {xml}#SETUP"
        )
    chosen = int(setup.lstrip("s")) if setup else next(iter(setups), 0)
    if not path.is_file():
        raise UserError(f"'{xml}' names '{path}', which does not exist; keep the .h5 beside its .xml")
    import h5py

    with h5py.File(path, "r") as handle:
        cells = sorted(f for f in _h5_datasets(handle) if (m := BDV_CELLS.match(f)) and int(m.group(2)) == chosen)
    cells = [c for c in cells if BDV_CELLS.match(c).group(3) == str(level)]
    if not cells:
        raise UserError(f"'{path}' has no image of setup {chosen} at level {level}; choose another setup or data.level")
    return H5Stored(path, cells[0], level, xml=xml)
