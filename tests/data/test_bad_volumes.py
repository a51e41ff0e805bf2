"""Bad inputs of issue 13: one line naming the problem and the fix, exit code 2, nothing written; and
what ``icone data`` shows of a volume."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from helpers import blob_volume, refused, run_cli, write_dicom_series, write_ome_zarr, write_zarr


@pytest.fixture
def store(tmp_path):
    volume, labels = blob_volume()
    return write_zarr(tmp_path / "blobs.zarr", volume, name="raw", labels=labels)


def test_a_store_with_several_arrays_needs_a_name(capsys, tmp_path, store):
    refused(capsys, tmp_path, store, r"holds 2 arrays \(labels, raw\); name one: zarr:.*blobs\.zarr#labels")
    refused(capsys, tmp_path, f"zarr:{store}#nope", r"has no array 'nope' \(arrays: labels, raw\)")


def test_a_missing_hdf5_dataset(capsys, tmp_path):
    import h5py

    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["raw"] = np.zeros((40, 40, 40), np.uint8)
        f["mask"] = np.zeros((40, 40, 40), np.uint8)
    refused(capsys, tmp_path, tmp_path / "em.h5", r"holds 2 datasets \(mask, raw\); name one: h5:.*em\.h5#mask")
    refused(capsys, tmp_path, f"h5:{tmp_path / 'em.h5'}#volume", r"has no dataset 'volume' \(datasets: mask, raw\)")


def test_axes_that_do_not_fit_the_shape(capsys, tmp_path, store):
    refused(
        capsys,
        tmp_path,
        f"{store}#raw",
        r"data.axes=CZYX names 4 dimension\(s\) but .* has 3 \(shape 40x48x56\); give 3",
        "data.axes=CZYX",
    )
    refused(
        capsys, tmp_path, f"{store}#raw", r"data.axes='QYX' is not valid \(unknown letter\(s\) Q\)", "data.axes=QYX"
    )


def test_a_label_volume_of_another_shape(capsys, tmp_path, store):
    np.save(tmp_path / "labels.npy", np.zeros((40, 48, 50), np.uint8))
    refused(
        capsys,
        tmp_path,
        f"{store}#raw",
        r"label volume .*labels\.npy' has shape 40x48x50 but .*#raw' has 40x48x56 \(ZYX\); give a label volume of the same shape",
        f"data.labels={tmp_path / 'labels.npy'}",
    )


def test_a_patch_larger_than_the_volume(capsys, tmp_path, store):
    refused(
        capsys,
        tmp_path,
        f"{store}#raw",
        r"data.patch=64,64,64 is larger than .*40x48x56.*at most 40,48,56",
        "data.patch=64",
    )
    refused(
        capsys, tmp_path, f"{store}#raw", r"data.patch has 2 numbers but the data have 3 spatial axes", "data.patch=8,8"
    )


def test_channels_out_of_range(capsys, tmp_path):
    store = write_ome_zarr(tmp_path / "img.ome.zarr", np.zeros((2, 16, 64, 64), np.uint16))
    refused(capsys, tmp_path, store, r"data.channels=0,5 but .* has 2 channel\(s\) \(0..1\)", "data.channels=0,5")
    refused(capsys, tmp_path, store, r"data.level=3 but .* has 2 resolution level\(s\) \(0..1\)", "data.level=3")


def test_a_dicom_folder_with_mixed_series(capsys, tmp_path):
    first = write_dicom_series(tmp_path / "ct", np.zeros((8, 16, 16), np.int16), seed=1)
    second = write_dicom_series(tmp_path / "ct", np.zeros((6, 16, 16), np.int16), seed=2)
    line = refused(
        capsys, tmp_path, f"dicom:{tmp_path / 'ct'}", r"holds 2 DICOM series: .*; choose one with data.series=UID"
    )
    assert f"{first} (8 slices, CT test series)" in line and f"{second} (6 slices" in line


def test_a_dicom_series_without_positions(capsys, tmp_path):
    write_dicom_series(tmp_path / "ct", np.zeros((8, 16, 16), np.int16), positions=False)
    refused(
        capsys,
        tmp_path,
        tmp_path / "ct",
        r"has no ImagePositionPatient tag \(8 of 8 slices lack it\), so the slices cannot be ordered",
    )


def test_a_truncated_chunk(capsys, tmp_path):
    store = write_zarr(tmp_path / "v.zarr", np.random.default_rng(0).integers(0, 999, (32, 32, 32), np.uint16))
    chunk = store / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])
    refused(
        capsys,
        tmp_path,
        store,
        r"cannot read the region zyx=0,0,0 of .*v\.zarr' \(RuntimeError: .*\); the file may be damaged \(e.g. a truncated chunk\)",
        "data.patch=16",
    )


def test_nan_voxels_are_named_with_the_patch(capsys, tmp_path):
    volume = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    volume[20, 3, 30] = np.nan
    store = write_zarr(tmp_path / "v.zarr", volume)
    refused(
        capsys,
        tmp_path,
        store,
        r"v\.zarr' holds 1 NaN or infinite value\(s\) in the patch at zyx=16,0,16; fix the volume",
        "data.patch=16",
    )


def test_a_missing_optional_package_names_the_extra(capsys, tmp_path, monkeypatch):
    write_dicom_series(tmp_path / "ct", np.zeros((4, 8, 8), np.int16))
    real = importlib.import_module

    def without_pydicom(name, *args):
        if name == "pydicom":
            raise ImportError("No module named 'pydicom'")
        return real(name, *args)

    monkeypatch.setattr("icone.data.opening.importlib.import_module", without_pydicom)
    refused(
        capsys,
        tmp_path,
        f"dicom:{tmp_path / 'ct'}",
        r"reading DICOM series needs the pydicom package; install it with: pip install 'icone\[dicom\]'",
    )


def test_a_read_error_in_a_worker_stays_one_line(tmp_path):
    from icone.config import DataConfig
    from icone.data import IndexedDataset, load_dataset
    from icone.errors import UserError
    from icone.training.loader import train_loader

    volume = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    store = write_zarr(tmp_path / "v.zarr", volume)
    train = IndexedDataset(load_dataset(DataConfig(source=str(store), patch=[16])).train)
    store_array = __import__("zarr").open(str(store), mode="r+")
    store_array[0, 0, 0] = np.nan  # damaged after loading, found by a worker
    with pytest.raises(UserError) as caught:
        for _ in train_loader(train, 8, seed=0, epoch=0, num_workers=1, shuffle=False):
            pass
    assert "\n" not in str(caught.value) and "NaN or infinite value(s) in the patch at zyx=0,0,0" in str(caught.value)


def test_icone_data_shows_what_it_will_train_on(capsys, tmp_path, store):
    volume = np.zeros((2, 16, 64, 64), np.uint16)
    ome = write_ome_zarr(tmp_path / "img.ome.zarr", volume)
    code, out, err = run_cli(["data", ome, "data.patch=8,16,16", "data.sampler=grid"], capsys)
    assert code == 0, err
    for expected in (
        "kind: one 3D volume, read patch by patch",
        "axes: CZYX (metadata)",
        "stored shape: 2x16x64x64",
        "dtype: uint16",
        "channels: 2 of 2",
        "spatial shape: 16x64x64 (ZYX)",
        "spacing: z 2 y 0.5 x 0.5 micrometer",
        "patches: 8x16x16, stride 8x16x16 (grid 2x4x4 cells)",
        "sampler: grid",
        "memory: 16 KiB per patch as float32",
        "instances: 32 training patches",
        "train: 32 samples",
    ):
        assert expected in out, (expected, out)
    code, out, err = run_cli(["data", f"{store}#raw", f"data.labels={store}#labels", "data.patch=8"], capsys)
    assert code == 0, err
    assert "labels: " in out and "test patches in the held-out region x 45..56" in out and "per class: {0: " in out
