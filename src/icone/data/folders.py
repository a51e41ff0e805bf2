"""Folders of images or volumes: the kind decided from every file's header (axes and shape, with
``data.axes`` and ``data.channels`` applied), samples stacked in memory when they fit easily, read
file by file otherwise (``data.load``)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from icone.config import DataConfig
from icone.data import checks
from icone.data.arrays import Dataset, Split, stratified_split
from icone.data.formats import open_stored, suffix
from icone.data.samples import ArraySamples, Samples
from icone.data.volumes import ReadError, Volume, warn_guessed
from icone.errors import UserError

log = logging.getLogger("icone")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
VOLUME_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".dcm")
LAZY_ABOVE = 2 << 30  # data.load=auto: a folder whose float32 stack is larger than this is read per sample
KIND_OF_DIMS = {2: "folder", 3: "volumes"}
WHAT = {"folder": "2D image", "volumes": "3D volume"}


def files_of(root: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES + VOLUME_SUFFIXES) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and suffix(p) in suffixes)


def open_files(files: list[Path], config: DataConfig | None = None) -> list[Volume]:
    """Every file's header as a :class:`Volume` (axes and channels applied; no pixels read)."""
    if config is None:
        return [Volume(open_stored(f), image_set=True) for f in files]
    return [
        Volume(open_stored(f), config.axes, config.channels, config.spacing, timepoint=config.timepoint, image_set=True)
        for f in files
    ]


def _shape_text(volume: Volume) -> str:
    return f"{volume.layout.axes} {'x'.join(map(str, volume.layout.shape))}"


def folder_kind(root: Path, volumes: list[Volume], forced: str | None = None) -> str:
    """``folder`` (2D images) or ``volumes`` (3D), from every file; one line naming an odd file."""
    dims = Counter(v.spatial_dims for v in volumes)
    if forced is not None:
        expected = 2 if forced == "folder" else 3
        odd = next((v for v in volumes if v.spatial_dims != expected), None)
        if odd is not None:
            raise UserError(
                f"'{odd.name}' is a {WHAT[KIND_OF_DIMS[odd.spatial_dims]]} ({_shape_text(odd)}), not a {WHAT[forced]} as "
                f"{forced}: asks; remove the prefix, or name its axes with data.axes=..."
            )
        return forced
    if len(dims) > 1:
        common = dims.most_common(1)[0][0]
        odd = next(v for v in volumes if v.spatial_dims != common)
        raise UserError(
            f"'{odd.name}' is a {WHAT[KIND_OF_DIMS[odd.spatial_dims]]} ({_shape_text(odd)}) but {dims[common]} other file(s) "
            f"in '{root}' are {WHAT[KIND_OF_DIMS[common]]}s; move it out, or name the axes with data.axes=..."
        )
    return KIND_OF_DIMS[next(iter(dims))]


def guess_folder_kind(root: Path) -> str:
    """The kind most files of a folder have (for ``resolve``; loading checks every file strictly)."""
    try:
        dims = Counter(v.spatial_dims for v in open_files(files_of(root)))
    except UserError:
        return "folder"
    return KIND_OF_DIMS[dims.most_common(1)[0][0]] if dims else "folder"


def labels_from_folders(root: Path, files: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Class = first sub-folder under ``root``; all ``-1`` when files lie directly in it."""
    parents = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    if any(p is None for p in parents):
        return np.full(len(files), -1, np.int64), []
    names = sorted(set(parents))
    return np.asarray([names.index(p) for p in parents], np.int64), names


def resize_sample(sample: np.ndarray, size: list[int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    spatial = sample.ndim - 1
    if len(size) == 1:
        size = size * spatial
    if len(size) != spatial:
        raise UserError(f"data.resize has {len(size)} numbers but the samples have {spatial} spatial dimensions")
    mode = "bilinear" if spatial == 2 else "trilinear"
    tensor = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))[None]
    return F.interpolate(tensor, size=tuple(size), mode=mode, align_corners=False)[0].numpy()


def check_sizes(volumes: list[Volume], resize: list[int] | None) -> tuple[int, ...]:
    """Every sample's ``C x spatial`` (channel counts and, unless ``resize``, sizes must agree)."""
    channels = Counter(v.num_channels for v in volumes)
    if len(channels) > 1:
        common = channels.most_common(1)[0][0]
        odd = next(v for v in volumes if v.num_channels != common)
        raise UserError(
            f"samples have different channel counts {sorted(channels)} (e.g. '{odd.name}'); convert them to one channel "
            "count, or choose channels with data.channels=..."
        )
    dims = volumes[0].spatial_dims
    if resize is not None:
        spatial = tuple(resize * dims if len(resize) == 1 else resize)
        if len(spatial) != dims:
            raise UserError(f"data.resize has {len(resize)} numbers but the samples have {dims} spatial dimensions")
        return (volumes[0].num_channels, *spatial)
    shapes = Counter(v.spatial_shape for v in volumes)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(v for v in volumes if v.spatial_shape != common)
        raise UserError(
            f"samples have different sizes (e.g. {common} and {odd.spatial_shape} in '{odd.name}'); "
            f"pass data.resize={','.join(str(s) for s in common)} to resize them all"
        )
    return (volumes[0].num_channels, *volumes[0].spatial_shape)


class FileSamples(Samples):
    """One file per sample, read (and resized) when asked for; nothing is kept between reads."""

    def __init__(self, volumes: list[Volume], shape: tuple[int, ...], resize: list[int] | None) -> None:
        self.volumes, self.shape_, self.resize = volumes, tuple(shape), resize

    def __len__(self) -> int:
        return len(self.volumes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape_

    def read_one(self, row: int) -> np.ndarray:
        volume = self.volumes[row]
        x = volume.read((0,) * volume.spatial_dims, volume.spatial_shape)
        volume.stored.close()
        if self.resize is not None:
            x = resize_sample(x, self.resize)
        if tuple(x.shape) != self.shape_:
            raise ReadError(
                f"'{volume.name}' now holds {'x'.join(map(str, x.shape))}, not {'x'.join(map(str, self.shape_))} as when "
                "the folder was opened; was it changed during the run?"
            )
        if not np.isfinite(x).all():
            raise ReadError(
                f"'{volume.name}' holds {int((~np.isfinite(x)).sum())} NaN or infinite value(s); fix or remove it "
                "(icone cannot learn from undefined pixels)"
            )
        return x

    def read_raw(self, rows: np.ndarray, epoch: int | None = None) -> np.ndarray:
        rows = np.asarray(rows, np.int64).reshape(-1)
        if not len(rows):
            return np.zeros((0, *self.shape_), np.float32)
        return np.stack([self.read_one(int(r)) for r in rows])

    def source(self, row: int) -> str:
        return self.volumes[row].name

    def subset(self, rows: np.ndarray) -> FileSamples:
        subset = FileSamples([self.volumes[int(r)] for r in rows], self.shape_, self.resize)
        subset.offset, subset.scale = self.offset, self.scale
        return subset


def _in_memory(config: DataConfig, count: int, shape: tuple[int, ...], root: Path) -> bool:
    if config.load == "memory":
        checks.check_fits_in_memory(count, shape, f"folder '{root}'", lazy_hint=True)
        return True
    if config.load == "lazy":
        return False
    needed = count * int(np.prod(shape)) * 4
    available = checks.available_memory_bytes()
    limit = LAZY_ABOVE if available is None else min(LAZY_ABOVE, 0.3 * available)
    if needed <= limit:
        return True
    log.info("folder '%s': %.1f GiB as float32; samples are read from the files per step", root, needed / 2**30)
    return False


def load_folder(root: Path, forced: str | None, config: DataConfig) -> Dataset:
    """A folder of images or volumes (one sample per file); class = sub-folder name."""
    files = files_of(root)
    if not files:
        raise UserError(f"folder '{root}' holds no images or volumes; point to a folder with data")
    volumes = open_files(files, config)
    warn_guessed(volumes)
    kind = folder_kind(root, volumes, forced)
    shape = check_sizes(volumes, config.resize)
    labels, names = labels_from_folders(root, files)
    samples: Samples = FileSamples(volumes, shape, config.resize)
    memory = _in_memory(config, len(files), shape, root)
    if memory:
        stack = np.empty((len(files), *shape), np.float32)
        for start in range(0, len(files), 256):
            stack[start : start + 256] = samples.read_raw(np.arange(start, min(start + 256, len(files))))
        samples = ArraySamples(stack, [str(f) for f in files])
    train, test = stratified_split(labels, config.test_fraction, seed=0)
    first = volumes[0]
    info = {
        "kind": f"{WHAT[kind]}s, one per file ({'stacked in memory' if memory else 'read per sample'})",
        "files": f"{len(files)} in '{root}'",
        **{k: v for k, v in first.describe().items() if k != "file"},
        "sample shape": "x".join(map(str, shape)) + (" (resized)" if config.resize else ""),
    }
    return Dataset(
        name=root.name,
        train=Split(samples.subset(train), labels[train]),
        test=Split(samples.subset(test), labels[test]),
        class_names=names,
        info=info,
    )
