"""Labels for volumes: a label volume of the same shape (a segmentation) gives each patch its majority
class; the test split is a held-out region of the volume that no training patch overlaps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icone.data.patches import Grid, block_patches, cell_blocks
from icone.data.volumes import Volume
from icone.errors import UserError

MAX_CLASSES = 1000  # more "classes" in a label volume are instance ids (and a C x C confusion matrix would not fit)


def check_label_volume(labels: Volume, volume: Volume) -> None:
    """A label volume has one channel and the volume's spatial shape (as read: after resampling)."""
    if labels.layout.channels != 1:
        raise UserError(
            f"the label volume '{labels.name}' has {labels.layout.channels} channels; give a single-channel segmentation "
            "(one integer class per voxel)"
        )
    if labels.spatial_shape != volume.spatial_shape:
        raise UserError(
            f"the label volume '{labels.name}' has shape {'x'.join(map(str, labels.spatial_shape))} but "
            f"'{volume.name}' has {'x'.join(map(str, volume.spatial_shape))} ({volume.layout.spatial}); give a label "
            "volume of the same shape"
        )
    if labels.stored.dtype.kind not in "biuf":
        raise UserError(f"the label volume '{labels.name}' holds {labels.stored.dtype} values; store integer classes")


def majority_labels(labels: Volume, grid: Grid, ignore: int | None = None) -> np.ndarray:
    """The majority class of every cell's patch (ties: the smallest class), read block by block; with
    ``ignore``, the majority among the other voxels (``-1`` for a patch holding only the ignored class)."""
    out = np.zeros(grid.size, np.int64)
    for cells, lo, hi in cell_blocks(grid, labels.spatial_chunks):
        region = labels.read(lo, hi - lo)
        if labels.stored.dtype.kind == "f" and not (np.isfinite(region) & (region == np.round(region))).all():
            raise UserError(
                f"the label volume '{labels.name}' holds non-integer values near {','.join(map(str, lo))}; store "
                "integer classes 0..C-1"
            )
        region = region.astype(np.int64)
        if (region < 0).any():
            raise UserError(
                f"the label volume '{labels.name}' holds negative classes (e.g. {int(region[region < 0][0])}); "
                "classes are 0..C-1"
            )
        flat = block_patches(region, grid).reshape(len(cells), -1)
        classes = int(flat.max()) + 1
        if classes > MAX_CLASSES:
            raise UserError(
                f"the label volume '{labels.name}' holds classes up to {classes - 1} (near {','.join(map(str, lo))}): "
                f"instance ids, not classes? A patch's label is the majority class per voxel; give a semantic "
                f"segmentation with classes 0..C-1 (C at most {MAX_CLASSES}), or leave data.labels out"
            )
        counts = np.bincount(
            (np.arange(len(cells))[:, None] * classes + flat).reshape(-1), minlength=len(cells) * classes
        )
        counts = counts.reshape(len(cells), classes)
        if ignore is not None and 0 <= ignore < classes:
            counts[:, ignore] = 0
        out[cells] = np.where(counts.any(axis=1), counts.argmax(axis=1), -1)
    return out


def holdout(
    shape: Sequence[int], patch: Sequence[int], fraction: float, name: str
) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """The held-out region: the last ``fraction`` of the volume along its longest axis (at least one patch).

    Returns ``(axis, cut, train_hi, test_lo)``: training patches lie in ``[0, cut)`` on that axis (jitter
    included), test patches in ``[cut, end)``, so no voxel is in both.
    """
    axis = int(np.argmax(shape))
    cut = min(int(round(shape[axis] * (1 - fraction))), shape[axis] - patch[axis])
    if cut < patch[axis] or shape[axis] - cut < patch[axis]:
        letters = "zyx"[-len(shape) :]
        raise UserError(
            f"'{name}' is too small along {letters[axis]} ({shape[axis]}) to hold out {fraction:.0%} of it as a test region "
            f"with patches of {patch[axis]}; change data.test_fraction or data.patch"
        )
    train_hi = tuple(cut if a == axis else s for a, s in enumerate(shape))
    test_lo = tuple(cut if a == axis else 0 for a in range(len(shape)))
    return axis, cut, train_hi, test_lo
