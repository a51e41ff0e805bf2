"""Helpers shared by the tests: tiny in-memory datasets, training a method a few steps, the CLI in-process,
files in the layouts icone reads, and a group of CPU processes."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icone import build
from icone.build import resolve_config
from icone.config import Config, build_config
from icone.data.arrays import Dataset, Split
from icone.nets import BackboneSpec, build_backbone
from icone.training.logs import MetricsLog
from icone.training.trainer import Trainer


def tiny_dataset(
    spatial_dims: int = 2, n: int = 32, size: int | None = None, classes: int = 4, channels: int = 1, seed: int = 0
) -> Dataset:
    """Random samples whose class shifts the mean of one quadrant/octant (learnable, not trivial)."""
    size = size or (16 if spatial_dims == 2 else 12)
    rng = np.random.default_rng(seed)
    shape = (n, channels) + (size,) * spatial_dims
    samples = rng.normal(0, 1, shape).astype(np.float32)
    labels = np.arange(n) % classes
    half = size // 2
    for i, label in enumerate(labels):
        region = (i, slice(None)) + tuple(
            slice(half * ((label >> d) & 1), half * (((label >> d) & 1) + 1)) for d in range(spatial_dims)
        )
        samples[region] += 2.0
    test = Split(samples[: n // 4].copy(), labels[: n // 4])
    return Dataset(name=f"tiny{spatial_dims}d", train=Split(samples, labels), test=test)


def small_backbone(
    name: str = "smallcnn", dims: int = 2, norm: str = "group", width: int = 8, channels: int = 1
) -> torch.nn.Module:
    """A backbone as ``model.*`` describes it, for tests that need one without a method."""
    return build_backbone(BackboneSpec(name, spatial_dims=dims, in_channels=channels, norm=norm, width=width))


def make_trainer(config: Config, dataset: Dataset, run_dir: Path) -> Trainer:
    """A trainer for a config, set up as ``icone train`` sets it up."""
    setup = build.setup(config, dataset)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    log = MetricsLog(Path(run_dir) / "metrics.jsonl", setup.config.train.logger, setup.config.to_dict())
    return Trainer(setup, run_dir, log, progress=False)


def train_steps(
    method: str,
    spatial_dims: int = 2,
    batch_size: int = 4,
    epochs: int = 1,
    run_dir: Path | None = None,
    overrides: list[str] | None = None,
    dataset: Dataset | None = None,
) -> tuple[Trainer, list[dict[str, Any]]]:
    """Train ``method`` on a tiny dataset with the small CNN; returns the trainer and its step logs."""
    dataset = dataset or tiny_dataset(spatial_dims)
    items = [
        f"method={method}",
        "model.backbone=smallcnn",
        "model.width=8",
        f"train.batch_size={batch_size}",
        f"train.epochs={epochs}",
        "train.log_every=1",
        "train.monitor_samples=16",
        "optim.warmup_epochs=0",
    ] + list(overrides or [])
    config = resolve_config(build_config(None, items), dataset)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="icone-test-"))
    trainer = make_trainer(config, dataset, run_dir)
    trainer.fit()
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, [r for r in logs if r["kind"] == "step"]


def write_tiny_npz(path: Path, spatial_dims: int = 2, n: int = 48, rgb: bool = False) -> Path:
    """A MedMNIST-layout .npz of uint8 images (N x H x W [x 3]) or volumes (N x D x H x W)."""
    dataset = tiny_dataset(spatial_dims, n=n, channels=3 if rgb else 1)

    def to_uint8(x: np.ndarray) -> np.ndarray:
        x = np.clip((x + 3) / 6 * 255, 0, 255).astype(np.uint8)
        return np.moveaxis(x, 1, -1) if rgb else x[:, 0]

    np.savez(
        path,
        train_images=to_uint8(np.asarray(dataset.train.samples)),
        train_labels=dataset.train.labels[:, None],
        test_images=to_uint8(np.asarray(dataset.test.samples)),
        test_labels=dataset.test.labels[:, None],
    )
    return path


FAST = ["--backbone", "smallcnn", "model.width=8", "train.monitor_samples=16", "--no-progress"]
TRAIN = ["--epochs", "1", "--batch-size", "4", *FAST, "eval.after_train=false"]  # a one-epoch run, not evaluated


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Run ``icone ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from icone.cli import run

    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_error(capsys, args: list, pattern: str, code: int = 2) -> str:
    """``icone ARGS`` fails with one line on stderr matching ``pattern``, exit code ``code``, no traceback."""
    import re

    got, out, err = run_cli(args, capsys)
    assert got == code, (out, err)
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert re.search(pattern, line), line
    return line


def run_on_processes(worker: Callable[..., None], *args: Any, world: int = 2) -> None:
    """Run ``worker(rank, world, *args)`` on ``world`` CPU processes joined in one gloo group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_process, args=(world, port, worker, args), nprocs=world, join=True)


def _gloo_process(rank: int, world: int, port: int, worker: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        worker(rank, world, *args)
        torch.distributed.barrier()  # nobody leaves the group while another process still talks to it
    finally:
        torch.distributed.destroy_process_group()


# ---- files in the formats icone reads lazily (volumes, stores, series) ------------------------------


def blob_volume(shape=(40, 48, 56), seed: int = 0, dtype=np.uint16) -> tuple[np.ndarray, np.ndarray]:
    """A volume with bright blobs in its first half along x, on a dark noisy background, and its segmentation."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"))
    labels = np.zeros(shape, np.uint8)
    for _ in range(6):
        centre = rng.uniform([0, 0, 0], [shape[0], shape[1], shape[2] / 2])
        labels[((grid - centre.reshape(3, 1, 1, 1)) ** 2).sum(0) < 36] = 1
    volume = rng.normal(100, 10, shape) + 800.0 * labels
    return np.clip(volume, 0, None).astype(dtype), labels


def write_zarr(path: Path, array: np.ndarray, chunks=None, name: str | None = None, **extra: np.ndarray) -> Path:
    """A Zarr store holding ``array`` (at ``name`` inside a group when given, with ``extra`` arrays beside it)."""
    import zarr

    chunks = chunks or tuple(min(16, s) for s in array.shape)
    if name is None and not extra:
        z = zarr.create_array(str(path), shape=array.shape, chunks=chunks, dtype=array.dtype)
        z[:] = array
        return path
    group = zarr.open_group(str(path), mode="w")
    for key, value in {name or "raw": array, **extra}.items():
        z = group.create_array(key, shape=value.shape, chunks=tuple(min(16, s) for s in value.shape), dtype=value.dtype)
        z[:] = value
    return path


def _ome_multiscale(group, array: np.ndarray, scale, levels: int, channels: bool) -> None:
    datasets = []
    for level in range(levels):
        data = array[..., :: 2**level, :: 2**level]
        chunks = ((1,) if channels else ()) + (8, 16, 16)
        z = group.create_array(str(level), shape=data.shape, chunks=chunks, dtype=data.dtype)
        z[:] = data
        factors = ([1.0] if channels else []) + [scale[0], scale[1] * 2**level, scale[2] * 2**level]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": factors}]})
    axes = ([{"name": "c", "type": "channel"}] if channels else []) + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in ("z", "y", "x")
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


def write_ome_zarr(
    path: Path, array: np.ndarray, scale=(2.0, 0.5, 0.5), levels: int = 2, labels: np.ndarray | None = None
) -> Path:
    """An OME-Zarr image (NGFF 0.4 ``multiscales``) of a ``C x Z x Y x X`` array, each level half the last in
    y and x; with ``labels`` (``Z x Y x X``), a label image ``labels/cells`` at the same levels."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    _ome_multiscale(group, array, scale, levels, channels=True)
    if labels is not None:
        _ome_multiscale(group.create_group("labels/cells"), labels, scale, levels, channels=False)
        group["labels"].attrs["labels"] = ["cells"]
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(2.5, 0.7, 0.6),
    slope: float = 2.0,
    intercept: float = -1024.0,
    series_uid: str | None = None,
    positions: bool = True,
    seed: int = 0,
) -> str:
    """A CT series of ``Z x Y x X`` stored values, one file per slice, written in a shuffled order; returns its UID."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    order = np.random.default_rng(seed).permutation(len(volume))
    for k, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = DicomDataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription = "CT", "test series"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.InstanceNumber = int(k + 1)
        ds.Rows, ds.Columns = volume.shape[1:]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        if positions:
            ds.ImagePositionPatient = [-100.0, -80.0, 30.0 + float(z) * spacing[0]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(volume[z], dtype=np.int16).tobytes()
        ds.save_as(folder / f"S{seed}IM{k:04d}.dcm", enforce_file_format=True)
    return str(series_uid)


def _dicom_file(sop_class: str, **fields) -> Any:
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = DicomDataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for key, value in fields.items():
        setattr(ds, key, value)
    return ds


def write_multiframe_dicom(
    path: Path,
    volume: np.ndarray,
    spacing=(1.5, 0.8, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    seed: int = 0,
) -> Path:
    """An enhanced CT file (one file, ``Z x Y x X`` as frames) whose frames are stored in a shuffled order,
    each with its position (PerFrameFunctionalGroupsSequence -> PlanePositionSequence) and rescale;
    pixel measures and orientation shared."""
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    order = np.random.default_rng(seed).permutation(len(volume))
    ds = _dicom_file(EnhancedCTImageStorage, Modality="CT", NumberOfFrames=len(volume))
    ds.Rows, ds.Columns = volume.shape[1:]
    measures, orientation, shared = DicomDataset(), DicomDataset(), DicomDataset()
    measures.PixelSpacing, measures.SliceThickness = [spacing[1], spacing[2]], spacing[0]
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in order:
        position, transform, frame = DicomDataset(), DicomDataset(), DicomDataset()
        position.ImagePositionPatient = [-100.0, -80.0, 30.0 + float(z) * spacing[0]]
        transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
        frame.PlanePositionSequence, frame.PixelValueTransformationSequence = (
            Sequence([position]),
            Sequence([transform]),
        )
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(volume[order], dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_image(path: Path, image: np.ndarray, preamble: bool = True) -> Path:
    """A one-image DICOM file (a digital X-ray: no slice position), with or without the 128-byte preamble."""
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    ds = _dicom_file(DigitalXRayImageStorageForPresentation, Modality="DX", PixelSpacing=[0.2, 0.2])
    ds.Rows, ds.Columns = image.shape
    ds.PixelData = np.ascontiguousarray(image, dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=False, little_endian=True)  # a bare data set, as some exporters write
    return path


def refused(capsys, tmp_path, source, pattern, *extra):
    """``icone train`` and ``icone data`` both refuse ``source`` with one line; the run folder is not made."""
    run = tmp_path / "run"
    line = expect_error(capsys, ["train", "--data", source, "--out", run, *TRAIN, *extra], pattern)
    assert line.startswith("error: ") and not run.exists()
    expect_error(capsys, ["data", source, *extra], pattern)
    return line
