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
    return _labelled("synthetic3d", np.stack(volumes), labels, test_fraction, SYNTHETIC3D_CLASSES)


SYNTHETIC2D_CLASSES = ["disc", "ring", "bar", "cross", "triangle", "pair", "stripes", "checker"]
# foreground area of each shape in units of its size parameter r squared, so every class can be
# drawn with the same distribution of foreground area (the class is then not in the mean intensity)
_AREA_PER_R2 = {
    "disc": np.pi,
    "ring": np.pi * (1 - 0.55**2),
    "bar": 4 * 1.4 * 0.32,
    "cross": 2 * (2 * 0.26) * 2 - (2 * 0.26) ** 2,
    "triangle": 3 * np.sqrt(3) / 4,
    "pair": 2 * np.pi * 0.5**2,
    "stripes": np.pi / 2,  # a disc half covered by stripes
    "checker": 4 / 2,  # a square half covered by checks
}


def _shape_mask_2d(kind: str, u: np.ndarray, v: np.ndarray, r: float, period: float) -> np.ndarray:
    """A binary 2D object of a class in its own (rotated, centred) coordinates ``u, v`` (pixels)."""
    rho = np.sqrt(u**2 + v**2)
    if kind == "disc":
        return rho < r
    if kind == "ring":
        return (rho < r) & (rho > 0.55 * r)
    if kind == "bar":
        return (np.abs(u) < 1.4 * r) & (np.abs(v) < 0.32 * r)
    if kind == "cross":
        return ((np.abs(u) < r) & (np.abs(v) < 0.26 * r)) | ((np.abs(v) < r) & (np.abs(u) < 0.26 * r))
    if kind == "triangle":  # equilateral, circumradius r
        inside = np.ones_like(u, dtype=bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(angle) + v * np.sin(angle) > -r / 2
        return inside
    if kind == "pair":
        return ((u - 0.85 * r) ** 2 + v**2 < (0.5 * r) ** 2) | ((u + 0.85 * r) ** 2 + v**2 < (0.5 * r) ** 2)
    if kind == "stripes":
        return (rho < r) & (np.sin(2 * np.pi * u / period) > 0)
    if kind == "checker":
        square = (np.abs(u) < r) & (np.abs(v) < r)
        return square & ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2 == 0)
    raise ValueError(kind)


def synthetic2d(size: int = 28, per_class: int = 250, test_fraction: float = 0.4, seed: int = 0) -> Dataset:
    """Labelled 2D images of eight classes defined by shape or texture.

    Classes: disc, ring, bar, cross, triangle, pair of blobs, striped disc, checkered square. Each
    image holds one object at a random position, orientation and scale, drawn so that every class
    has the same distribution of foreground area; with a random background level, a random
    foreground contrast, a random linear background ramp and Gaussian noise of random strength,
    the class is carried by shape and texture, not by mean intensity or contrast. Objects are
    rendered at 2x resolution and averaged down (anti-aliased). The same ``seed`` gives the same
    images; the train/test split is fixed (stratified, seed 0): 150 / 100 images per class.
    """
    rng = np.random.default_rng(seed)
    fine = 2 * size
    coords = (np.arange(fine, dtype=np.float64) + 0.5) / 2  # pixel units of the output image
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    unit_y, unit_x = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    images, labels = [], []
    for label, kind in enumerate(SYNTHETIC2D_CLASSES):
        for _ in range(per_class):
            area = rng.uniform(0.05, 0.15) * size * size  # foreground pixels, the same law for every class
            r = np.sqrt(area / _AREA_PER_R2[kind])
            period = rng.uniform(3.0, 5.0)  # stripes / checks, in pixels
            centre = rng.uniform(0.38, 0.62, 2) * size
            angle = rng.uniform(0, 2 * np.pi)
            dy, dx = yy - centre[0], xx - centre[1]
            u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
            mask = _shape_mask_2d(kind, u, v, r, period).astype(np.float32)
            mask = mask.reshape(size, 2, size, 2).mean((1, 3))
            background = rng.uniform(0.0, 0.4)
            contrast = rng.uniform(0.25, 1.0)
            ramp = rng.uniform(-0.15, 0.15, 2)
            image = background + ramp[0] * unit_y + ramp[1] * unit_x + contrast * mask
            image = image + rng.normal(0, rng.uniform(0.02, 0.12), image.shape)
            images.append(image.astype(np.float32)[None])
            labels.append(label)
    return _labelled("synthetic2d", np.stack(images), labels, test_fraction, SYNTHETIC2D_CLASSES)


def _labelled(name: str, samples: np.ndarray, labels: list[int], test_fraction: float, classes: list[str]) -> Dataset:
    """A built-in source's samples with a fixed stratified split (seed 0)."""
    labels_array = np.asarray(labels, np.int64)
    train, test = stratified_split(labels_array, test_fraction, seed=0)
    return Dataset(
        name=name,
        train=Split(ArraySamples(samples[train], name=f"{name}:train"), labels_array[train]),
        test=Split(ArraySamples(samples[test], name=f"{name}:test"), labels_array[test]),
        class_names=list(classes),
    )
