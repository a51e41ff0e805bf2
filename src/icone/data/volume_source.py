"""Volumes (and large 2D images) as patch datasets: one volume (any format, a DICOM series), or every
file of a folder with ``data.patch``; labels from a label volume (held-out test region) or from
sub-folders (held-out files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icone.config import DataConfig
from icone.data.arrays import Dataset, Split, stratified_split
from icone.data.folders import files_of, labels_from_folders
from icone.data.formats import open_stored, split_fragment
from icone.data.labels import check_label_volume, holdout, majority_labels
from icone.data.patches import Grid, PatchSamples, foreground_cells, make_grid
from icone.data.volumes import Stored, Volume, warn_guessed
from icone.errors import UserError

DEFAULT_PATCH = {2: 64, 3: 32}
SAMPLERS = {
    "grid": "grid: each cell's own patch",
    "random": "random: each epoch a random offset inside each cell (seeded by seed, epoch and instance: the same on --resume)",
    "foreground": "foreground: cells with something in them, each epoch a random offset inside the cell",
}


def _sizes(values: list[int] | None, dims: int, what: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if values is None:
        return default
    if len(values) == 1:
        return tuple(values) * dims
    if len(values) != dims:
        raise UserError(f"{what} has {len(values)} numbers but the data have {dims} spatial axes; give 1 or {dims}")
    return tuple(values)


def stored_of(kind: str, path: Path, fragment: str | None, config: DataConfig) -> Stored:
    if kind == "dicom":
        from icone.data.dicom import open_dicom

        return open_dicom(path, config.series)
    return open_stored(path, fragment, config.level)


def label_volume(spec: str, volume: Volume, config: DataConfig) -> Volume:
    """The label volume ``data.labels`` names (a path, ``store.zarr#labels``, ``h5:FILE#labels``...)."""
    kind, _, rest = spec.partition(":")
    if kind not in ("zarr", "h5", "dicom") or not rest:
        kind, rest = "file", spec
    path, fragment = split_fragment(rest)
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"data.labels: '{path}' does not exist; give the label volume's path")
    stored = stored_of(kind, path, fragment, config)
    labels = Volume(stored, None, None, config.spacing, labels=True, timepoint=config.timepoint)
    check_label_volume(labels, volume)
    return labels


def _patch(config: DataConfig, volumes: list[Volume]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dims = {v.spatial_dims for v in volumes}
    if len(dims) > 1:
        raise UserError("the files mix 2D images and 3D volumes; keep one kind in the folder")
    dims = dims.pop()
    smallest = np.min([v.spatial_shape for v in volumes], axis=0)
    default = tuple(int(min(DEFAULT_PATCH[dims], s)) for s in smallest)
    patch = _sizes(config.patch, dims, "data.patch", default)
    return patch, _sizes(config.stride, dims, "data.stride", patch)


def _info(volume: Volume, patch, stride, config: DataConfig, grids: list[Grid], what: str) -> dict[str, str]:
    counts = " + ".join("x".join(map(str, g.counts)) for g in grids[:3]) + (" + ..." if len(grids) > 3 else "")
    patch_bytes = volume.num_channels * int(np.prod(patch)) * 4
    whole = volume.num_channels * int(np.prod(volume.spatial_shape)) * 4
    return {
        "kind": what,
        **volume.describe(),
        "patches": f"{'x'.join(map(str, patch))}, stride {'x'.join(map(str, stride))} (grid {counts} cells)",
        "sampler": SAMPLERS[config.sampler],
        "memory": (
            f"{_bytes(patch_bytes)} per patch as float32, read on demand (x batch size x (1 + 2 x workers) in "
            f"flight); the volume would be {_bytes(whole)} as float32 and is never loaded whole"
            + ("" if volume.stored.lazy else "; this file cannot be read in parts: it is read whole, once per process")
        ),
    }


def _filtered(volume: Volume, grids: list[Grid], config: DataConfig, info: dict[str, str]) -> list[np.ndarray]:
    if config.sampler != "foreground":
        return [np.arange(g.size) for g in grids]
    kept, thresholds = foreground_cells(volume, grids, config.foreground_threshold, config.foreground_fraction)
    source = "data.foreground_threshold" if config.foreground_threshold is not None else "Otsu"
    total = sum(g.size for g in grids)
    info["sampler"] += (
        f"; {sum(map(len, kept))} of {total} cells kept (threshold {', '.join(f'{t:.4g}' for t in thresholds)} "
        f"from {source}, on at least {config.foreground_fraction:g} of a patch)"
    )
    return kept


def load_volume(kind: str, path: Path, fragment: str | None, config: DataConfig, seed: int) -> Dataset:
    """One volume as patches; with ``data.labels`` a labelled dataset whose test split is a held-out region."""
    stored = stored_of(kind, path, fragment, config)
    volume = Volume(stored, config.axes, config.channels, config.spacing, timepoint=config.timepoint)
    warn_guessed([volume])
    patch, stride = _patch(config, [volume])
    shape = volume.spatial_shape
    jitter = config.sampler != "grid"
    noun = "DICOM series" if kind == "dicom" else "volume" if volume.spatial_dims == 3 else "image"
    what = f"one {volume.spatial_dims}D {noun}, read patch by patch"
    if config.labels is None:
        if config.labels_ignore is not None:
            raise UserError(
                "data.labels_ignore leaves a class of a label volume out; give the volume with data.labels=..."
            )
        grid = make_grid(shape, patch, stride, volume.name)
        info = _info(volume, patch, stride, config, [grid], what)
        (cells,) = _filtered(volume, [grid], config, info)
        train = Split(PatchSamples([volume], [grid], [cells], jitter, seed), np.full(len(cells), -1))
        info["instances"] = f"{len(cells)} training patches; no test split (give data.labels=... to hold out a region)"
        return Dataset(name=_name(path), train=train, test=None, info=info)
    labels = label_volume(config.labels, volume, config)
    axis, cut, train_hi, test_lo = holdout(shape, patch, config.test_fraction, volume.name)
    grids = [
        make_grid(shape, patch, stride, volume.name, hi=train_hi),
        make_grid(shape, patch, stride, volume.name, lo=test_lo),
    ]
    info = _info(volume, patch, stride, config, grids, what)
    kept = _filtered(volume, grids, config, info)
    classes = [majority_labels(labels, g, config.labels_ignore)[c] for g, c in zip(grids, kept)]
    if config.labels_ignore is not None:  # test cells of the ignored class only have no label: not evaluated
        kept[1], classes[1] = kept[1][classes[1] >= 0], classes[1][classes[1] >= 0]
    letter = volume.layout.spatial[axis].lower()
    ignored = "" if config.labels_ignore is None else f" among the voxels not of class {config.labels_ignore}"
    info["labels"] = f"'{labels.name}': each patch's majority class{ignored}"
    info["instances"] = (
        f"{len(kept[0])} training patches ({letter} 0..{cut}), {len(kept[1])} test patches in the held-out region "
        f"{letter} {cut}..{shape[axis]} (the last {config.test_fraction:.0%}, at least a patch; no voxel in both)"
    )
    train = Split(PatchSamples([volume], [grids[0]], [kept[0]], jitter, seed), classes[0])
    test = Split(PatchSamples([volume], [grids[1]], [kept[1]], False, seed), classes[1])
    num = int(max(classes[0].max(initial=0), classes[1].max(initial=0))) + 1
    return Dataset(name=_name(path), train=train, test=test, class_names=[str(c) for c in range(num)], info=info)


def load_volume_folder(root: Path, config: DataConfig, seed: int) -> Dataset:
    """Every file of a folder as patches (``data.patch``); class = sub-folder; test = held-out files."""
    if config.labels is not None:
        raise UserError("data.labels takes the label volume of one volume; for a folder, give each class a sub-folder")
    files = files_of(root)
    if not files:
        raise UserError(f"folder '{root}' holds no images or volumes; point to a folder with data")
    volumes = [
        Volume(open_stored(f), config.axes, config.channels, config.spacing, timepoint=config.timepoint) for f in files
    ]
    warn_guessed(volumes)
    patch, stride = _patch(config, volumes)
    grids = [make_grid(v.spatial_shape, patch, stride, v.name) for v in volumes]
    file_labels, names = labels_from_folders(root, files)
    train_files, test_files = stratified_split(file_labels, config.test_fraction, seed=0)
    jitter = config.sampler != "grid"
    info = _info(volumes[0], patch, stride, config, grids, f"{len(files)} files, each read patch by patch")
    info["file"] = f"{len(files)} files in '{root}', e.g. {volumes[0].name}"
    kept = [np.arange(g.size) for g in grids]
    if config.sampler == "foreground":
        kept = [
            foreground_cells(v, [g], config.foreground_threshold, config.foreground_fraction)[0][0]
            for v, g in zip(volumes, grids)
        ]

    def split(rows: np.ndarray, jittered: bool) -> Split:
        samples = PatchSamples(
            [volumes[r] for r in rows], [grids[r] for r in rows], [kept[r] for r in rows], jittered, seed
        )
        labels = np.concatenate([np.full(len(kept[r]), file_labels[r]) for r in rows]) if len(rows) else np.zeros(0)
        return Split(samples, labels)

    train = split(train_files, jitter)
    test = split(test_files, False) if len(test_files) else None
    info["instances"] = f"{len(train)} training patches from {len(train_files)} files" + (
        f", {len(test)} test patches from {len(test_files)} held-out files" if test is not None else ""
    )
    return Dataset(name=root.name, train=train, test=test, class_names=names, info=info)


def _name(path: Path) -> str:
    name = path.name
    for ending in (".nii.gz", ".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem if path.is_file() else name


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
