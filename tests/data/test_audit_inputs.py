"""Inputs of the 133-case audit (issue 19) that a library used to report as an internal error, or
with advice that led nowhere: each is one line naming the input and what to do, exit code 2."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TRAIN, refused, run_cli, write_zarr


def test_a_named_array_in_a_store_that_is_one_array(capsys, tmp_path):
    store = write_zarr(tmp_path / "one.zarr", np.zeros((16, 16, 16), np.uint8))
    refused(capsys, tmp_path, f"zarr:{store}#nosuch", r"'.*one\.zarr' is a single array, not a group; drop '#nosuch'")


def test_object_arrays_in_an_npz_are_one_line(capsys, tmp_path):
    images = np.empty(8, dtype=object)
    for i in range(8):
        images[i] = np.zeros((8, 8), np.uint8)
    np.savez(tmp_path / "objects.npz", train_images=images, train_labels=np.arange(8) % 2)
    refused(
        capsys, tmp_path, tmp_path / "objects.npz", r"objects\.npz': train_images holds Python objects .*numeric array"
    )


@pytest.mark.parametrize(
    "spacing,pattern",
    [
        ("1000", r"data.spacing=1000 leaves .*v\.nii' 0x0x0 voxels \(zyx\); give a spacing within 1000 times"),
        ("1e300", r"data.spacing=1e\+300 leaves .*v\.nii' 0x0x0 voxels"),
        ("1e-300", r"data.spacing=1e-300 is .* times finer than the stored spacing of .*v\.nii' \(z 2 y 0.5 x 0.5\)"),
        ("1e-6", r"data.spacing=1e-06 is 2e\+06 times finer than the stored spacing"),
    ],
)
def test_an_extreme_spacing_is_one_line(capsys, tmp_path, spacing, pattern):
    import nibabel

    volume = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([2.0, 0.5, 0.5, 1])), tmp_path / "v.nii")
    refused(capsys, tmp_path, tmp_path / "v.nii", pattern, f"data.spacing={spacing}")


def test_an_instance_id_label_volume_is_named_as_the_cause(capsys, tmp_path):
    volume = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    instances = np.arange(32**3, dtype=np.uint32).reshape(32, 32, 32)  # every voxel its own object
    store = write_zarr(tmp_path / "cells.zarr", volume, name="raw", ids=instances)
    refused(
        capsys,
        tmp_path,
        f"{store}#raw",
        r"label volume .*#ids' holds classes up to \d+ .*instance ids.*class per voxel",
        f"data.labels={store}#ids",
        "data.patch=8",
    )


@pytest.mark.parametrize("shape", [(4096,), (2, 1, 3, 4, 8, 8)])
def test_an_array_no_axes_can_read_says_so(capsys, tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    line = refused(capsys, tmp_path, tmp_path / "x.npy", rf"has {len(shape)} dimension\(s\) .*icone reads 2 to 5")
    assert "data.axes" not in line  # no axes string can read it


def test_a_time_series_is_read_at_the_time_point_asked(capsys, tmp_path):
    from icone.config import DataConfig
    from icone.data import load_dataset

    series = np.stack([np.full((1, 16, 16, 16), t, np.float32) for t in range(3)])  # T x C x Z x Y x X
    series += np.random.default_rng(0).normal(0, 0.1, series.shape).astype(np.float32)
    np.save(tmp_path / "t.npy", series)
    refused(
        capsys,
        tmp_path,
        tmp_path / "t.npy",
        r"holds 3 time points \(axes TCZYX\); pick one with data.timepoint=0\.\.2",
        "data.axes=TCZYX",
    )
    refused(capsys, tmp_path, tmp_path / "t.npy", r"data.timepoint=3 but .* has 3 time point\(s\) \(axes TCZYX\); choose 0..2", "data.axes=TCZYX",
            "data.timepoint=3")  # fmt: skip
    config = DataConfig(source=str(tmp_path / "t.npy"), axes="TCZYX", timepoint=2, patch=[8], normalize="none")
    patch = np.asarray(load_dataset(config).train.samples[0])
    assert abs(float(patch.mean()) - 2.0) < 0.1
    code, out, err = run_cli(["data", tmp_path / "t.npy", "data.axes=TCZYX", "data.timepoint=1"], capsys)
    assert code == 0 and "time point 1 of 3" in out, err


def test_a_store_missing_chunks_is_warned_about_once(capsys, tmp_path):
    volume = np.random.default_rng(0).integers(1, 999, (32, 32, 32), np.uint16)
    store = write_zarr(tmp_path / "v.zarr", volume, chunks=(16, 16, 16))
    (store / "c" / "1" / "1" / "1").unlink()  # a chunk lost in a copy: read as zeros
    said = (
        f"warning: '{store}' holds 7 of its 8 chunks; the missing ones are read as the fill value 0 (zarr leaves out "
        "chunks of only that value; or is the copy incomplete?)"
    )
    code, _, err = run_cli(["data", store, "data.patch=16"], capsys)
    assert code == 0 and err.splitlines()[0] == said
    code, _, err = run_cli(["train", "--data", store, "--out", tmp_path / "run", *TRAIN, "data.patch=16"], capsys)
    assert code == 0 and err.count("holds 7 of its 8 chunks") == 1, err  # once per store, not per patch read
