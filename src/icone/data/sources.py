"""Data sources: a SOURCE string (``digits``, ``synthetic2d``, ``synthetic3d``, a path, or ``npz:``/``folder:``/
``volumes:`` + path) becomes a normalised :class:`~icone.data.arrays.Dataset`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from icone.config import DataConfig
from icone.data.arrays import Dataset, Split
from icone.data.axes import layout
from icone.data.checks import check_finite_and_varied, check_labels
from icone.data.dicom import dicom_files, is_image_set
from icone.data.folders import IMAGE_SUFFIXES, VOLUME_SUFFIXES, files_of, guess_folder_kind, load_folder, resize_sample
from icone.data.formats import is_zarr, split_fragment, suffix
from icone.data.imbalance import long_tail_rows
from icone.data.normalize import normalize_dataset
from icone.data.samples import ArraySamples
from icone.data.synthetic import digits, synthetic2d, synthetic3d
from icone.data.volume_source import load_volume, load_volume_folder
from icone.errors import UserError

log = logging.getLogger("icone")
BUILTIN = {"digits": digits, "synthetic2d": synthetic2d, "synthetic3d": synthetic3d}
KINDS = ("npz", "folder", "volumes", "zarr", "h5", "dicom")
SOURCE_HELP = (
    "use digits, synthetic2d, synthetic3d, a .npz file (MedMNIST layout), a folder of images or volumes, a volume file, "
    "zarr:STORE[#array], h5:FILE#dataset or dicom:FOLDER"
)
VOLUME_FILES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".png", ".jpg", ".jpeg", ".bmp", ".dcm")


def resolve(spec: str) -> tuple[str, Path | None]:
    """``(kind, path)`` of a SOURCE string; an explicit ``kind:`` prefix overrides the guess.

    A ``.zarr`` folder (or any Zarr store) is ``zarr``, a ``.h5``/``.hdf5`` file ``h5`` (either may name
    its array after ``#``), a folder of DICOM files ``dicom``; a folder of images or volumes ``folder``
    or ``volumes`` by what most of its files hold (loading checks every file).
    """
    return _resolve(spec)[:2]


def _resolve(spec: str) -> tuple[str, Path | None, str | None]:
    if spec in BUILTIN:
        return spec, None, None
    kind, sep, rest = spec.partition(":")
    if sep and kind in KINDS:
        where, fragment = split_fragment(rest)
        path = Path(where).expanduser()
        if not path.exists():
            raise UserError(f"data source '{spec}': '{path}' does not exist; check the path")
        if fragment and kind not in ("zarr", "h5"):
            raise UserError(f"data source '{spec}': only zarr: and h5: sources name an array after '#'")
        return kind, path, fragment
    where, fragment = split_fragment(spec)
    path = Path(where).expanduser()
    if not path.exists():
        raise UserError(f"data source '{spec}' does not exist; {SOURCE_HELP}")
    ending = suffix(path)
    if ending == ".zarr" or (path.is_dir() and is_zarr(path)):
        return "zarr", path, fragment
    if ending in (".h5", ".hdf5", ".hdf") or (ending == ".xml" and path.is_file()):
        return "h5", path, fragment  # a .xml: a BigDataViewer dataset
    if fragment:
        raise UserError(f"data source '{spec}': only Zarr stores and HDF5 files name an array after '#'")
    if path.is_file():
        if ending == ".npz":
            return "npz", path, None
        if ending in VOLUME_FILES:
            return "volumes", path, None
        raise UserError(f"cannot tell what '{path}' holds; {SOURCE_HELP}")
    found, dicoms = files_of(path), dicom_files(path)
    if dicoms and all(f in set(dicoms) for f in found):  # DICOM only: one series, or one image per file
        return ("folder" if is_image_set(path) else "dicom"), path, None
    if not found:
        raise UserError(
            f"folder '{path}' holds no images or volumes ({', '.join(dict.fromkeys(IMAGE_SUFFIXES + VOLUME_SUFFIXES))}) "
            "and no DICOM files; point to a folder with data"
        )
    return guess_folder_kind(path), path, None


def _npz_array(archive: Any, key: str, path: Path) -> np.ndarray:
    """One array of an ``.npz``; an array of Python objects (which ``allow_pickle=False`` refuses) is one line."""
    try:
        return archive[key]
    except ValueError as err:
        if "object" not in str(err).lower():
            raise UserError(f"cannot read '{path}': {key} ({err}); re-save it with numpy.savez") from None
        raise UserError(
            f"'{path}': {key} holds Python objects (dtype object), which icone does not load; save it as a numeric "
            "array of equal-sized samples (e.g. numpy.stack(images))"
        ) from None


def _npz_images(images: np.ndarray, axes: str | None, what: str, timepoint: int | None = None) -> np.ndarray:
    """MedMNIST arrays ``N x sample``: each sample's axes from ``data.axes`` or the guessing rules
    (``N x H x W``, ``N x H x W x C``, ``N x C x H x W``, ``N x D x H x W``, ``N x D x H x W x C``...)."""
    if images.ndim < 3:
        raise UserError(f"{what} has shape {images.shape}; expected N x H x W (x C) or N x D x H x W (x C)")
    plan = layout(images.shape[1:], what, axes, None, timepoint=timepoint)
    kept = plan.axes.replace("T", "")
    images = images[(slice(None),) + tuple(plan.time if a == "T" else slice(None) for a in plan.axes)]
    images = np.transpose(images, [0] + [kept.index(a) + 1 for a in "C" + plan.spatial if a in kept])
    return images if "C" in kept else images[:, None]


def load_npz(path: Path, config: DataConfig) -> Dataset:
    """A MedMNIST-layout ``.npz``: ``train_images``, ``train_labels``, ``test_*`` (``val_*`` unused)."""
    resize, channels = config.resize, config.channels
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
        images = _npz_array(archive, f"{prefix}_images", path)
        images = _npz_images(images, config.axes, f"'{path}': {prefix}_images", config.timepoint)
        if channels is not None:
            if any(isinstance(c, str) for c in channels):
                raise UserError(f"data.channels: '{path}' has no channel names; give channel numbers")
            if max(channels) >= images.shape[1]:
                raise UserError(
                    f"data.channels={','.join(map(str, channels))} but '{path}': {prefix}_images has {images.shape[1]} "
                    f"channel(s) (0..{images.shape[1] - 1}); choose channels between 0 and {images.shape[1] - 1}"
                )
            images = images[:, channels]
        images = images.astype(np.float32)
        n = len(images)
        if n == 0:
            raise UserError(f"'{path}': {prefix}_images holds no images; store at least one, or leave the array out")
        if resize is not None:
            images = np.stack([resize_sample(x, resize) for x in images])
        labels = np.full(n, -1)
        if f"{prefix}_labels" in keys:
            labels, multi = check_labels(_npz_array(archive, f"{prefix}_labels", path), n, f"'{path}': {prefix}_labels")
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
    """Load, check, normalise and (if asked) long-tail subsample a source; the test split stays whole."""
    kind, path, fragment = _resolve(config.source)
    if kind == "digits":
        dataset = digits(config.test_fraction)
    elif kind == "synthetic2d":
        dataset = synthetic2d()
    elif kind == "synthetic3d":
        dataset = synthetic3d()
    elif kind == "npz":
        dataset = load_npz(path, config)
    elif kind in ("zarr", "h5", "dicom") or path.is_file():
        dataset = load_volume(kind, path, fragment, config, seed)
    elif config.patch is not None:
        dataset = load_volume_folder(path, config, seed)
    else:
        dataset = load_folder(path, kind if config.source.startswith(f"{kind}:") else None, config)
    if kind in BUILTIN and config.resize is not None:
        for split in (dataset.train, dataset.test):
            resized = np.stack([resize_sample(x, config.resize) for x in split.samples.array])
            split.samples = ArraySamples(resized, split.samples.sources, split.samples.name)
    if len(dataset.train) == 0:
        raise UserError(f"data source '{config.source}' has no training samples")
    statistics = None if dataset.train.samples.in_memory else dataset.train.samples.statistics_sample()
    for name, split in (("training", dataset.train), ("test", dataset.test)):
        if split is not None:
            check_finite_and_varied(split.samples, name, statistics if name == "training" else None)
    dataset = normalize_dataset(dataset, config.normalize, statistics)
    if config.imbalance_ratio != 1:
        dataset.train = dataset.train.subset(long_tail_rows(dataset.train.labels, config.imbalance_ratio, seed))
    return dataset
