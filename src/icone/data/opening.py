"""What every reader shares: optional packages named by their extra, one-line read errors, suffixes."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from icone.errors import UserError

EXTRAS = {"zarr": "zarr", "h5py": "hdf5", "pydicom": "dicom", "imagecodecs": "tiff"}
WHOLE_READ_WARNING = 1 << 30  # a file that has to be read whole is worth a warning above this size


def need(module: str, what: str) -> Any:
    """Import an optional package, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"reading {what} needs the {module} package; install it with: pip install 'icone[{EXTRAS.get(module, module)}]'"
        ) from None


def has_module(module: str) -> bool:
    """Whether an optional package can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def suffix(path: Path) -> str:
    """The suffix that tells a format: ``.nii.gz``, ``.tif`` for ``.ome.tif``, ``.zarr`` for ``.ome.zarr``."""
    name = path.name.lower()
    for long in (".nii.gz", ".ome.tif", ".ome.tiff", ".ome.zarr"):
        if name.endswith(long):
            return long.replace(".ome", "")
    return path.suffix.lower()


def cannot_read(path: Path | str, err: Exception) -> UserError:
    """A file that its reader refused, in one line."""
    reason = str(err).splitlines()[0] if str(err) else "corrupt file"
    return UserError(f"cannot read '{path}' ({type(err).__name__}: {reason}); remove or replace the file")
