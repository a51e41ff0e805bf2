"""Reading one image or volume file into a ``C x spatial`` float32 array, with errors for people."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icone.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy")


def suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _raw(path: Path) -> np.ndarray:
    kind = suffix(path)
    try:
        if kind in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if kind in (".nii", ".nii.gz"):
            import nibabel

            return np.asarray(nibabel.load(str(path)).dataobj)
        if kind == ".npy":
            return np.load(path, allow_pickle=False)
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "I;16", "I;16B", "I", "F", "RGB", "RGBA", "LA"):
                image = image.convert("RGB")
            return np.asarray(image)
    except Exception as err:  # every reader has its own exception types
        raise UserError(
            f"cannot read '{path}' ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'corrupt file'}); remove or replace the file"
        ) from None


def read_image(path: Path) -> np.ndarray:
    """A 2D image as ``C x H x W`` (grayscale C=1, RGB C=3; alpha dropped)."""
    array = _raw(path)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (2, 3, 4):
        array = np.moveaxis(array[..., : 3 if array.shape[-1] >= 3 else 1], -1, 0)
    else:
        raise UserError(f"'{path}' has shape {array.shape}, not a 2D image; for 3D stacks use volumes:{path.parent}")
    return array.astype(np.float32)


def read_volume(path: Path) -> np.ndarray:
    """A 3D volume as ``C x D x H x W`` (a 4D NIfTI is taken as channels-last)."""
    array = _raw(path)
    if array.ndim == 3:
        array = array[None]
    elif array.ndim == 4:
        if suffix(path) in (".nii", ".nii.gz"):
            array = np.moveaxis(array, -1, 0)
        if array.shape[0] > 4:
            raise UserError(
                f"'{path}' has shape {array.shape}; expected D x H x W or C x D x H x W with at most 4 channels"
            )
    else:
        if suffix(path) in (".nii", ".nii.gz", ".npy"):
            raise UserError(
                f"'{path}' has shape {array.shape}, not a 3D volume; icone reads 2D images from png, jpg or tif files: "
                "save the slices as such files in a folder, or stack them into one volume"
            )
        raise UserError(f"'{path}' has shape {array.shape}, not a 3D volume; for 2D images use folder:{path.parent}")
    return array.astype(np.float32)


def is_volume_file(path: Path) -> bool:
    """Whether a file holds a 3D volume (tif stacks are told apart from 2D tifs by their shape)."""
    kind = suffix(path)
    if kind in (".nii", ".nii.gz", ".npy"):
        return True
    if kind in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
        except Exception:
            return False
        return (len(shape) == 3 and shape[-1] not in (3, 4)) or len(shape) == 4
    return False
