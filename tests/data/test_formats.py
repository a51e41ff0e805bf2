"""Readers that use metadata, on files written here: shapes, axes, channels and spacing as stored; the
misreadings of issue 13 (2/4-channel channels-last, CYX TIFFs, 2-channel YXC, .npz 2D with C != 3, a
folder's kind from all its files) fixed."""

import numpy as np
import pytest
import tifffile

from helpers import write_dicom_series, write_ome_zarr, write_zarr
from icone.config import DataConfig
from icone.data import load_dataset, resolve
from icone.data.axes import guess_axes
from icone.data.formats import open_stored
from icone.data.volumes import Volume
from icone.errors import UserError


def load(source, **kw):
    return load_dataset(DataConfig(source=str(source), **kw))


def volume_of(path, **kw):
    return Volume(open_stored(path), **kw)


def test_guessing_rules():
    assert guess_axes((64, 48)) == "YX"
    assert guess_axes((64, 48, 2)) == "YXC" and guess_axes((64, 48, 4)) == "YXC"
    assert guess_axes((2, 64, 48)) == "CYX" and guess_axes((4, 64, 48)) == "CYX"
    assert guess_axes((10, 64, 48)) == "ZYX"
    assert guess_axes((3, 10, 64, 48)) == "CZYX" and guess_axes((10, 64, 48, 2)) == "ZYXC"


@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("layout", ["CYX", "YXC"])
@pytest.mark.parametrize("metadata", [True, False])
def test_multichannel_tiffs_are_2d_images_with_every_channel(tmp_path, channels, layout, metadata):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 4000, (channels, 40, 36), dtype=np.uint16)
    stored = image if layout == "CYX" else np.moveaxis(image, 0, -1)
    kwargs = {"metadata": {"axes": layout}} if metadata else {"metadata": None}
    kwargs.update(photometric="minisblack", planarconfig="contig" if layout == "YXC" else "separate")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"{i}.tif", stored, **kwargs)
    volume = volume_of(folder / "0.tif")
    assert volume.layout.axes == layout and volume.spatial_dims == 2 and volume.num_channels == channels
    assert np.array_equal(volume.read((0, 0), (40, 36)), image.astype(np.float32))  # no channel lost or moved
    assert resolve(str(folder))[0] == "folder"
    data = load(folder, normalize="none")
    assert data.spatial_dims == 2 and data.in_channels == channels and data.spatial_shape == (40, 36)
    assert data.info["axes"].startswith(layout)


def test_a_2_channel_yxc_tiff_written_plainly_is_not_a_volume(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 48, 2), np.uint16))  # tifffile stores 64 pages of 48 x 2
    volume = volume_of(tmp_path / "a.tif")
    assert (volume.layout.axes, volume.layout.origin, volume.num_channels) == ("YXC", "guessed", 2)


def test_ome_tiff_axes_and_spacing(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (3, 10, 40, 36), dtype=np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path,
        array,
        ome=True,
        metadata={"axes": "CZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )
    volume = volume_of(path)
    assert (volume.layout.axes, volume.layout.origin) == ("CZYX", "metadata")
    assert volume.spacing == (2.0, 0.5, 0.5) and volume.stored.unit == "µm"
    assert volume.spatial_shape == (10, 40, 36) and volume.num_channels == 3
    assert np.array_equal(volume.read((2, 5, 6), (4, 8, 8)), array[:, 2:6, 5:13, 6:14])


def test_imagej_hyperstack_zcyx_and_spacing(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (10, 2, 40, 36), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, array, imagej=True, metadata={"axes": "ZCYX", "spacing": 3.0, "unit": "um"}, resolution=(4, 4)
    )
    volume = volume_of(path)
    assert volume.layout.axes == "ZCYX" and volume.spacing == (3.0, 0.25, 0.25)
    assert np.array_equal(volume.read((1, 2, 3), (2, 4, 4)), np.moveaxis(array[1:3, :, 2:6, 3:7], 1, 0))


def test_compressed_tiff_is_read_through_zarr(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (20, 64, 48), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "z.tif", array, compression="zlib", tile=(16, 16))
    volume = volume_of(tmp_path / "z.tif")
    assert volume.stored.lazy and not volume.stored.mappable
    assert np.array_equal(volume.read((3, 10, 20), (5, 16, 16)), array[3:8, 10:26, 20:36][None])


def test_nifti_with_a_non_unit_affine_keeps_its_spacing(tmp_path):
    import nibabel

    array = np.random.default_rng(0).normal(size=(20, 24, 28)).astype(np.float32)
    affine = np.array([[0, 0, 2.0, 10], [0, 0.7, 0, -5], [0.5, 0, 0, 3], [0, 0, 0, 1]])  # permuted axes, anisotropic
    image = nibabel.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    nibabel.save(image, tmp_path / "scan.nii.gz")
    volume = volume_of(tmp_path / "scan.nii.gz")
    assert volume.layout.axes == "ZYX" and volume.spatial_shape == (20, 24, 28)
    assert volume.spacing == pytest.approx((0.5, 0.7, 2.0)) and volume.stored.unit == "mm"
    assert np.array_equal(volume.read((1, 2, 3), (4, 4, 4)), array[1:5, 2:6, 3:7][None])
    four = nibabel.Nifti1Image(np.zeros((20, 24, 28, 2), np.float32), affine)
    nibabel.save(four, tmp_path / "two.nii")
    assert volume_of(tmp_path / "two.nii").layout.axes == "ZYXC"


def test_resampling_to_a_spacing_reads_patches_at_that_spacing(tmp_path):
    import nibabel

    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[None, None, :], (16, 16, 40)).copy()
    nibabel.save(nibabel.Nifti1Image(ramp, np.diag([1.0, 1.0, 0.5, 1])), tmp_path / "r.nii")
    volume = volume_of(tmp_path / "r.nii", target_spacing=[1.0, 1.0, 1.0])
    assert volume.spatial_shape == (16, 16, 20) and volume.spacing == (1.0, 1.0, 1.0)
    patch = volume.read((0, 0, 4), (2, 2, 8))[0, 0, 0]
    assert patch == pytest.approx(np.arange(4, 12) * 2 + 0.5)  # voxel centres of the coarser grid


def test_zarr_store_without_prefix_and_named_arrays(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (40, 48, 56), dtype=np.uint16)
    store = write_zarr(tmp_path / "vol.zarr", array, chunks=(16, 16, 16))
    assert resolve(str(store)) == ("zarr", store)
    volume = volume_of(store)
    assert volume.stored.chunks == (16, 16, 16) and volume.stored.dtype == np.uint16
    assert np.array_equal(volume.read((4, 5, 6), (8, 8, 8)), array[4:12, 5:13, 6:14][None])
    group = write_zarr(tmp_path / "g.zarr", array, name="raw", labels=np.zeros(array.shape, np.uint8))
    data = load(f"zarr:{group}#raw")
    assert data.spatial_shape == (32, 32, 32) and len(data.train) == 1
    assert load(f"{group}#raw").info["file"] == f"{group}#raw"


def test_ome_zarr_axes_levels_and_spacing(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (2, 16, 64, 64), dtype=np.uint16)
    store = write_ome_zarr(tmp_path / "img.ome.zarr", array)
    level0 = Volume(open_stored(store))
    assert (level0.layout.axes, level0.layout.origin) == ("CZYX", "metadata")
    assert level0.spacing == (2.0, 0.5, 0.5) and level0.stored.unit == "micrometer"
    level1 = Volume(open_stored(store, level=1))
    assert level1.spatial_shape == (16, 32, 32) and level1.spacing == (2.0, 1.0, 1.0)
    assert np.array_equal(level1.read((0, 0, 0), (2, 4, 4)), array[:, 0:2, 0:8:2, 0:8:2])
    data = load(store, patch=[8, 16, 16], level=1)
    assert data.in_channels == 2 and len(data.train) == 2 * 2 * 2


def test_hdf5_dataset_and_its_spacing(tmp_path):
    import h5py

    array = np.random.default_rng(0).integers(0, 1000, (40, 48, 56), dtype=np.uint16)
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f.create_dataset("volumes/raw", data=array, chunks=(16, 16, 16))
        f["volumes/raw"].attrs["element_size_um"] = [4.0, 1.0, 1.0]
    assert resolve(str(tmp_path / "em.h5"))[0] == "h5"
    volume = volume_of(tmp_path / "em.h5")
    assert volume.name.endswith("em.h5#volumes/raw") and volume.spacing == (4.0, 1.0, 1.0)
    assert np.array_equal(volume.read((1, 2, 3), (8, 8, 8)), array[1:9, 2:10, 3:11][None])
    assert len(load(f"h5:{tmp_path / 'em.h5'}#volumes/raw", patch=[16]).train) == 2 * 3 * 3


def test_npy_is_memory_mapped(tmp_path):
    np.save(tmp_path / "v.npy", np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10))
    volume = volume_of(tmp_path / "v.npy")
    assert isinstance(volume.stored.handle(), np.memmap)


def test_axes_and_channels_options(tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (4, 40, 36), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", array, metadata=None, photometric="minisblack")
    assert volume_of(tmp_path / "a.tif").layout.axes == "CYX"
    as_volume = volume_of(tmp_path / "a.tif", axes="zyx")
    assert as_volume.spatial_dims == 3 and as_volume.num_channels == 1
    chosen = volume_of(tmp_path / "a.tif", channels=[0, 2])
    assert chosen.num_channels == 2
    assert np.array_equal(chosen.read((0, 0), (40, 36)), array[[0, 2]].astype(np.float32))


@pytest.mark.parametrize("channels", [2, 4, 5])
def test_npz_2d_channels_last_with_any_channel_count(tmp_path, channels):
    images = np.random.default_rng(0).integers(0, 255, (10, 28, 28, channels), dtype=np.uint8)
    np.savez(tmp_path / "x.npz", train_images=images, train_labels=np.arange(10) % 2)
    axes = "YXC" if channels > 4 else None  # beyond 4 channels last, say so
    data = load(tmp_path / "x.npz", normalize="none", axes=axes)
    assert data.spatial_dims == 2 and data.in_channels == channels
    assert np.array_equal(np.asarray(data.train.samples)[3], np.moveaxis(images[3], -1, 0).astype(np.float32))
    kept = load(tmp_path / "x.npz", normalize="none", axes=axes, channels=[1])
    assert kept.in_channels == 1 and np.array_equal(np.asarray(kept.train.samples)[3, 0], images[3, :, :, 1])


def test_a_folders_kind_comes_from_all_its_files(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(3):
        tifffile.imwrite(folder / f"{i}.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(folder / "z_stack.tif", np.zeros((10, 32, 32), np.uint16))  # the last file, sorted
    with pytest.raises(UserError, match=r"z_stack\.tif' is a 3D volume \(ZYX 10x32x32\) but 3 other file"):
        load(folder)


def test_rgba_png_drops_its_alpha(tmp_path):
    from PIL import Image

    folder = tmp_path / "png"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 4), 50 * i, np.uint8), "RGBA").save(folder / f"{i}.png")
    assert load(folder).in_channels == 3


def test_a_lazy_folder_reads_each_file_when_asked(tmp_path):
    folder = tmp_path / "imgs"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(4):
            tifffile.imwrite(folder / c / f"{i}.tif", np.full((2, 16, 16), i + 10 * (c == "b"), np.uint16))
    memory, lazy = load(folder, normalize="none"), load(folder, normalize="none", load="lazy")
    assert memory.train.samples.in_memory and not lazy.train.samples.in_memory
    assert np.array_equal(np.asarray(memory.train.samples), np.asarray(lazy.train.samples))
    assert lazy.train.samples.source(0) == memory.train.samples.source(0)


def test_dicom_series_is_one_volume_ordered_rescaled_with_spacing(tmp_path):
    stored = np.random.default_rng(0).integers(0, 2000, (12, 20, 24)).astype(np.int16)
    stored[:, 0, 0] = np.arange(12)  # slice z holds z at its corner: the order is visible
    write_dicom_series(tmp_path / "ct", stored, spacing=(2.5, 0.7, 0.6), slope=2.0, intercept=-1024)
    assert resolve(str(tmp_path / "ct"))[0] == "dicom"
    data = load(f"dicom:{tmp_path / 'ct'}", patch=[4, 10, 12], normalize="none", sampler="grid")
    volume = data.train.samples.volumes[0]
    assert volume.spatial_shape == (12, 20, 24) and volume.spacing == pytest.approx((2.5, 0.7, 0.6))
    whole = volume.read((0, 0, 0), (12, 20, 24))[0]
    assert np.array_equal(whole, stored * 2.0 - 1024)
    assert len(data.train) == 3 * 2 * 2


def test_dicom_series_is_chosen_by_uid(tmp_path):
    first = write_dicom_series(tmp_path / "two", np.zeros((4, 8, 8), np.int16), seed=1)
    second = write_dicom_series(tmp_path / "two", np.ones((6, 8, 8), np.int16), seed=2)
    with pytest.raises(UserError, match=f"holds 2 DICOM series: .*{first} .*; choose one with data.series=UID"):
        load(f"dicom:{tmp_path / 'two'}")
    data = load(f"dicom:{tmp_path / 'two'}", series=second, patch=[2, 8, 8])
    assert data.train.samples.volumes[0].spatial_shape == (6, 8, 8)
