"""Data sources: a SOURCE string (``digits``, ``synthetic3d``, a path, or ``npz:``/``folder:``/
``volumes:`` + path) becomes a normalised :class:`~icone.data.arrays.Dataset`."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from icone.config import DataConfig
from icone.data.arrays import Dataset, Split, stratified_split
from icone.data.checks import check_finite_and_varied, check_fits_in_memory, check_labels
from icone.data.imbalance import long_tail_rows
from icone.data.normalize import normalize_dataset
from icone.data.readers import IMAGE_SUFFIXES, VOLUME_SUFFIXES, is_volume_file, read_image, read_volume, suffix
from icone.data.samples import ArraySamples
from icone.data.synthetic import digits, synthetic3d
from icone.errors import UserError

log = logging.getLogger("icone")
BUILTIN = {"digits": digits, "synthetic3d": synthetic3d}
KINDS = ("npz", "folder", "volumes")
SOURCE_HELP = "use digits, synthetic3d, a .npz file (MedMNIST layout), a folder of images or volumes, or a volume file"


def resolve(spec: str) -> tuple[str, Path | None]:
    """``(kind, path)`` of a SOURCE string; an explicit ``kind:`` prefix overrides the guess."""
    if spec in BUILTIN:
        return spec, None
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        path = Path(rest).expanduser()
        if not path.exists():
            raise UserError(f"data source '{spec}': '{path}' does not exist; check the path")
        return kind, path
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"data source '{spec}' does not exist; {SOURCE_HELP}")
    if path.is_file():
        if suffix(path) == ".npz":
            return "npz", path
        if suffix(path) in VOLUME_SUFFIXES:
            return "volumes", path
        raise UserError(f"cannot tell what '{path}' holds; {SOURCE_HELP}")
    files = _files(path, IMAGE_SUFFIXES + VOLUME_SUFFIXES)
    if not files:
        raise UserError(
            f"folder '{path}' holds no images or volumes ({', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)}); point to a folder with data"
        )
    return ("volumes" if is_volume_file(files[0]) else "folder"), path


def _files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and suffix(p) in suffixes)


def _labels_from_folders(root: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Class = first sub-folder under ``root``; all ``-1`` when files lie directly in it."""
    parents = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    if any(p is None for p in parents):
        return np.full(len(files), -1, np.int64), []
    names = sorted(set(parents))
    return np.asarray([names.index(p) for p in parents], np.int64), names


def _stack(arrays: list[np.ndarray], files: list[Path], resize: list[int] | None) -> np.ndarray:
    """Stack samples; sizes and channel counts must agree unless ``resize`` is set."""
    channels = Counter(a.shape[0] for a in arrays)
    if len(channels) > 1:
        odd = next(f for f, a in zip(files, arrays) if a.shape[0] != channels.most_common(1)[0][0])
        raise UserError(
            f"samples have different channel counts {sorted(channels)} (e.g. '{odd}'); convert them to one channel count"
        )
    if resize is not None:
        return np.stack([_resize(a, resize) for a in arrays])
    shapes = Counter(a.shape[1:] for a in arrays)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(f for f, a in zip(files, arrays) if a.shape[1:] != common)
        raise UserError(
            f"samples have different sizes (e.g. {common} and {arrays[files.index(odd)].shape[1:]} in '{odd}'); "
            f"pass data.resize={','.join(str(s) for s in common)} to resize them all"
        )
    return np.stack(arrays)


def _resize(sample: np.ndarray, size: list[int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    spatial = sample.ndim - 1
    if len(size) == 1:
        size = size * spatial
    if len(size) != spatial:
        raise UserError(f"data.resize has {len(size)} numbers but the samples have {spatial} spatial dimensions")
    mode = "bilinear" if spatial == 2 else "trilinear"
    tensor = torch.from_numpy(np.ascontiguousarray(sample))[None]
    return F.interpolate(tensor, size=tuple(size), mode=mode, align_corners=False)[0].numpy()


def load_files(root: Path, kind: str, resize: list[int] | None, test_fraction: float) -> Dataset:
    """A folder of images (``folder``) or volumes (``volumes``); class = sub-folder name."""
    reader = read_image if kind == "folder" else read_volume
    files = _files(root, IMAGE_SUFFIXES if kind == "folder" else VOLUME_SUFFIXES)
    if not files:
        raise UserError(
            f"folder '{root}' holds no {'images' if kind == 'folder' else 'volumes'}; point to a folder with data"
        )
    labels, names = _labels_from_folders(root, files)
    first = reader(files[0])
    spatial = first.shape[1:] if resize is None else tuple(resize * (first.ndim - 1) if len(resize) == 1 else resize)
    check_fits_in_memory(len(files), (first.shape[0], *spatial), f"folder '{root}'")
    samples = _stack([first] + [reader(f) for f in files[1:]], files, resize)
    sources = np.asarray([str(f) for f in files])
    train, test = stratified_split(labels, test_fraction, seed=0)
    return Dataset(
        name=root.name,
        train=Split(samples[train], labels[train], sources[train]),
        test=Split(samples[test], labels[test], sources[test]),
        class_names=names,
    )


def load_single_volume(path: Path, patch: int = 32) -> Dataset:
    """One large volume cut into non-overlapping ``patch^3`` crops (unlabelled)."""
    volume = read_volume(path)
    d, h, w = volume.shape[1:]
    if min(d, h, w) < patch:
        return Dataset(name=path.name, train=Split(volume[None], np.full(1, -1)), test=None)
    origins = [
        (z, y, x)
        for z in range(0, d - patch + 1, patch)
        for y in range(0, h - patch + 1, patch)
        for x in range(0, w - patch + 1, patch)
    ]
    crops = np.stack([volume[:, z : z + patch, y : y + patch, x : x + patch] for z, y, x in origins])
    samples = ArraySamples(crops, [str(path)] * len(crops), positions=np.asarray(origins))
    return Dataset(name=path.name, train=Split(samples, np.full(len(crops), -1)), test=None)


def _npz_images(images: np.ndarray) -> np.ndarray:
    """MedMNIST arrays: 2D ``N x H x W`` or ``N x H x W x 3``; 3D ``N x D x H x W``."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[-1] == 3:
        return np.moveaxis(images, -1, 1)
    if images.ndim == 4:
        return images[:, None]
    if images.ndim == 5:
        return np.moveaxis(images, -1, 1) if images.shape[-1] <= 4 else images
    raise UserError(f"npz images have shape {images.shape}; expected N x H x W (x 3) or N x D x H x W")


def load_npz(path: Path, resize: list[int] | None) -> Dataset:
    """A MedMNIST-layout ``.npz``: ``train_images``, ``train_labels``, ``test_*`` (``val_*`` unused)."""
    try:
        archive = np.load(path, allow_pickle=False)
        keys = set(archive.files)
    except Exception as err:
        raise UserError(f"cannot read '{path}' as .npz ({type(err).__name__}); re-download or re-save it") from None
    if "train_images" not in keys:
        raise UserError(
            f"'{path}' has no 'train_images' array (found: {', '.join(sorted(keys)) or 'nothing'}); expected the MedMNIST layout train_images/train_labels/test_images/test_labels"
        )

    def split(prefix: str) -> Split | None:
        if f"{prefix}_images" not in keys:
            return None
        images = _npz_images(archive[f"{prefix}_images"]).astype(np.float32)
        n = len(images)
        if n == 0:
            raise UserError(f"'{path}': {prefix}_images holds no images; store at least one, or leave the array out")
        if resize is not None:
            images = np.stack([_resize(x, resize) for x in images])
        labels = np.full(n, -1)
        if f"{prefix}_labels" in keys:
            labels, multi = check_labels(archive[f"{prefix}_labels"], n, f"'{path}': {prefix}_labels")
            if multi:
                log.warning(
                    "'%s': %s_labels has several labels per sample (multi-label); the run is evaluated without kNN and linear probe",
                    path,
                    prefix,
                )
        return Split(ArraySamples(images, name=f"{path}:{prefix}_images"), labels)

    train, test = split("train"), split("test")
    return Dataset(name=path.stem, train=train, test=test)


def load_dataset(config: DataConfig, seed: int = 0) -> Dataset:
    """Load, normalise and (if asked) long-tail subsample a source; the test split stays whole."""
    kind, path = resolve(config.source)
    if kind == "digits":
        dataset = digits(config.test_fraction)
    elif kind == "synthetic3d":
        dataset = synthetic3d()
    elif kind == "npz":
        dataset = load_npz(path, config.resize)
    elif path.is_file():
        dataset = load_single_volume(path)
    else:
        dataset = load_files(path, kind, config.resize, config.test_fraction)
    if kind in BUILTIN and config.resize is not None:
        for split in (dataset.train, dataset.test):
            resized = np.stack([_resize(x, config.resize) for x in split.samples.array])
            split.samples = ArraySamples(resized, split.samples.sources, split.samples.name)
    if len(dataset.train) == 0:
        raise UserError(f"data source '{config.source}' has no training samples")
    for name, split in (("training", dataset.train), ("test", dataset.test)):
        if split is not None:
            check_finite_and_varied(split.samples, name)
    dataset = normalize_dataset(dataset, config.normalize)
    if config.imbalance_ratio != 1:
        dataset.train = dataset.train.subset(long_tail_rows(dataset.train.labels, config.imbalance_ratio, seed))
    return dataset
