"""Built-in sources that need no download: ``digits`` (2D, real) and ``synthetic3d`` (3D, generated)."""

from __future__ import annotations

import numpy as np

from icone.data.arrays import Dataset, Split, stratified_split
from icone.data.samples import ArraySamples

SYNTHETIC3D_CLASSES = ["sphere", "shell", "rod", "pair"]


def digits(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, upsampled to 28x28; 10 classes.

    Digit identity is not invariant to flips or 90-degree rotations (6 and 9), so the source turns
    those views off by default.
    """
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32))[:, None]
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).numpy()
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, seed=0)
    return Dataset(
        name="digits",
        train=Split(ArraySamples(images[train], name="digits:train"), labels[train]),
        test=Split(ArraySamples(images[test], name="digits:test"), labels[test]),
        class_names=[str(d) for d in range(10)],
        view_defaults={"flip": False, "rotate90": False},
    )


def _shape_mask(kind: str, grid: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A binary 3D object of a class, at a random position, orientation and scale."""
    centre = rng.uniform(0.35, 0.65, 3) * size
    offset = grid - centre.reshape(3, 1, 1, 1)
    radius = rng.uniform(0.16, 0.24) * size
    if kind == "sphere":
        return (offset**2).sum(0) < radius**2
    if kind == "shell":
        dist = np.sqrt((offset**2).sum(0))
        return (dist < radius * 1.15) & (dist > radius * 0.75)
    if kind == "rod":
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        along = np.tensordot(axis, offset, axes=1)
        across = (offset**2).sum(0) - along**2
        return (np.abs(along) < radius * 1.6) & (across < (radius * 0.45) ** 2)
    if kind == "pair":
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        shift = (axis * radius * 0.9).reshape(3, 1, 1, 1)
        small = (radius * 0.62) ** 2
        return ((offset - shift) ** 2).sum(0) < small
    raise ValueError(kind)


def synthetic3d(size: int = 28, per_class: int = 200, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Labelled 3D volumes of four object classes: sphere, hollow shell, rod and sphere pair.

    Each volume holds one object of its class at a random place, scale and orientation, with a
    random intensity and background and Gaussian noise, so the class is carried by shape, not by
    brightness or volume alone.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float32),) * 3, indexing="ij"))
    volumes, labels = [], []
    for label, kind in enumerate(SYNTHETIC3D_CLASSES):
        for _ in range(per_class):
            mask = _shape_mask(kind, grid, rng, size)
            if kind == "pair":  # the second sphere of the pair mirrors the first about a random centre
                mask |= np.flip(mask, axis=tuple(rng.choice(3, size=rng.integers(1, 4), replace=False).tolist()))
            background = rng.uniform(0.0, 0.3)
            foreground = background + rng.uniform(0.3, 1.0)
            volume = np.where(mask, foreground, background) + rng.normal(0, 0.08, mask.shape)
            volumes.append(volume.astype(np.float32)[None])
            labels.append(label)
    samples, labels_array = np.stack(volumes), np.asarray(labels, np.int64)
    train, test = stratified_split(labels_array, test_fraction, seed=0)
    return Dataset(
        name="synthetic3d",
        train=Split(ArraySamples(samples[train], name="synthetic3d:train"), labels_array[train]),
        test=Split(ArraySamples(samples[test], name="synthetic3d:test"), labels_array[test]),
        class_names=list(SYNTHETIC3D_CLASSES),
    )
