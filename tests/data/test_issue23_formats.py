"""Files as microscopes and scanners write them (issue 23): LZW TIFFs written by Pillow, ilastik and
BigDataViewer HDF5, multi-frame and one-image DICOM, OME channel names, guessed axes stated."""

import importlib.util
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import run_cli, write_dicom_image, write_multiframe_dicom
from icone.config import DataConfig
from icone.data import load_dataset, resolve
from icone.data.formats import open_stored
from icone.data.volumes import Volume
from icone.errors import UserError

NO_IMAGECODECS = importlib.util.find_spec("imagecodecs") is None


def load(source, **kw):
    return load_dataset(DataConfig(source=str(source), **kw))


# ---- 1. LZW TIFFs ------------------------------------------------------------------------------


def write_lzw_stack(path, array):
    """A multi-page LZW TIFF as Pillow writes it (what many scanners and microscope exports are)."""
    pages = [Image.fromarray(page) for page in array]
    pages[0].save(path, compression="tiff_lzw", save_all=True, append_images=pages[1:])
    return path


def test_an_lzw_stack_is_read_patch_by_patch(tmp_path):
    array = np.random.default_rng(0).integers(0, 4000, (6, 40, 36), dtype=np.uint16)
    path = write_lzw_stack(tmp_path / "stack.tif", array)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == 5  # LZW, as written
    volume = Volume(open_stored(path), axes="ZYX")
    assert volume.stored.lazy and volume.spatial_shape == (6, 40, 36)
    assert np.array_equal(volume.read((1, 2, 3), (3, 10, 10))[0], array[1:4, 2:12, 3:13])


def test_a_folder_of_lzw_images_and_an_rgb_one(tmp_path):
    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 20), dtype=np.uint8)).save(
                tmp_path / "imgs" / label / f"{i}.tif", compression="tiff_lzw"
            )
    data = load(tmp_path / "imgs", normalize="none")
    assert data.spatial_dims == 2 and data.spatial_shape == (24, 20) and data.class_names == ["a", "b"]
    rgb = rng.integers(0, 255, (16, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.tif", compression="tiff_lzw")
    volume = Volume(open_stored(tmp_path / "rgb.tif"))
    assert volume.num_channels == 3 and np.array_equal(volume.read((0, 0), (16, 12)), np.moveaxis(rgb, -1, 0))


@pytest.mark.skipif(not NO_IMAGECODECS, reason="with imagecodecs installed every codec is read")
def test_a_rarer_codec_names_the_package(capsys, tmp_path):
    path = tmp_path / "lerc.tif"
    tifffile.imwrite(path, np.zeros((20, 20), np.uint16))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(34887)  # LERC: neither tifffile nor Pillow decode it alone
    with pytest.raises(
        UserError, match=r"LERC-compressed, which needs the imagecodecs package: pip install 'icone\[tiff\]'"
    ):
        open_stored(path)
    code, _, err = run_cli(["data", path], capsys)
    assert code == 2 and "\n" not in err.strip() and "icone[tiff]" in err


# ---- 2. ilastik and BigDataViewer HDF5 ---------------------------------------------------------


def ilastik_axistags(axes: str, resolution: dict | None = None) -> str:
    """The ``axistags`` JSON ilastik (vigra) writes on every exported dataset."""
    flags = {"t": 8, "c": 1, "z": 2, "y": 2, "x": 2}
    return json.dumps({
        "axes": [{"key": a, "typeFlags": flags[a], "resolution": (resolution or {}).get(a, 0), "description": ""} for a in axes]
    })  # fmt: skip


def test_ilastik_axistags_give_the_axes_and_spacing(tmp_path):
    import h5py

    array = np.random.default_rng(0).random((1, 12, 40, 36, 2)).astype(np.float32)  # tzyxc, as ilastik exports
    with h5py.File(tmp_path / "probabilities.h5", "w") as f:
        f.create_dataset("exported_data", data=array, chunks=(1, 4, 16, 16, 2))
        f["exported_data"].attrs["axistags"] = ilastik_axistags("tzyxc", {"z": 2.0, "y": 0.5, "x": 0.5})
    volume = Volume(open_stored(tmp_path / "probabilities.h5"))
    assert (volume.layout.axes, volume.layout.origin) == ("TZYXC", "metadata")
    assert volume.num_channels == 2 and volume.spatial_shape == (12, 40, 36) and volume.spacing == (2.0, 0.5, 0.5)
    assert np.array_equal(volume.read((1, 2, 3), (2, 8, 8)), np.moveaxis(array[0, 1:3, 2:10, 3:11], -1, 0))


def write_bdv(tmp_path, shape=(16, 32, 40), setups=2, levels=2):
    """A BigDataViewer HDF5 file (t00000/sNN/L/cells, ZYX) and its .xml (voxel size x y z)."""
    import h5py

    rng = np.random.default_rng(0)
    arrays = {s: rng.integers(0, 1000, shape, dtype=np.uint16) for s in range(setups)}
    with h5py.File(tmp_path / "dataset.h5", "w") as f:
        for s, array in arrays.items():
            f[f"s{s:02d}/resolutions"] = np.asarray([[2.0**k, 2.0**k, 1.0] for k in range(levels)])
            for k in range(levels):
                f[f"t00000/s{s:02d}/{k}/cells"] = array[:, :: 2**k, :: 2**k].astype(np.int16)
    setups_xml = "".join(
        f"<ViewSetup><id>{s}</id><name>{s}</name><size>{shape[2]} {shape[1]} {shape[0]}</size>"
        "<voxelSize><unit>µm</unit><size>0.4 0.4 1.6</size></voxelSize></ViewSetup>"
        for s in range(setups)
    )
    (tmp_path / "dataset.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2"><BasePath type="relative">.</BasePath>'
        '<SequenceDescription><ImageLoader format="bdv.hdf5"><hdf5 type="relative">dataset.h5</hdf5></ImageLoader>'
        f"<ViewSetups>{setups_xml}</ViewSetups></SequenceDescription></SpimData>"
    )
    return arrays


def test_bigdataviewer_datasets_are_named_clearly_and_take_the_xml_spacing(tmp_path):
    arrays = write_bdv(tmp_path)
    with pytest.raises(
        UserError,
        match=r"BigDataViewer file \(setups s00, s01; timepoints t00000; levels 0..1\); name one image, e\.g\. h5:.*dataset\.h5#t00000/s00/0/cells",
    ):
        open_stored(tmp_path / "dataset.h5")
    volume = Volume(open_stored(tmp_path / "dataset.h5", "t00000/s01/1/cells"))
    assert (volume.layout.axes, volume.stored.name.endswith("dataset.h5#t00000/s01/1/cells")) == ("ZYX", True)
    assert volume.spacing == (1.6, 0.8, 0.8) and volume.stored.unit == "µm"  # level 1: y and x halved
    assert np.array_equal(volume.read((0, 0, 0), (4, 8, 8))[0], arrays[1][:4, :16:2, :16:2])
    data = load(f"{tmp_path / 'dataset.xml'}#1", patch=[8], normalize="none", sampler="grid")
    assert (
        data.info["file"].endswith("dataset.h5#t00000/s01/0/cells") and "z 1.6 y 0.4 x 0.4 µm" in data.info["spacing"]
    )


# ---- 3, 7. multi-frame DICOM, folders of one-image DICOM files ----------------------------------


def test_a_multi_frame_dicom_is_a_volume_ordered_by_its_frame_positions(tmp_path):
    import pydicom

    volume = np.random.default_rng(0).integers(-500, 1500, (7, 24, 20)).astype(np.int16)
    path = write_multiframe_dicom(tmp_path / "ct" / "enhanced.dcm", volume, spacing=(1.5, 0.8, 0.7), intercept=-1024)
    assert int(pydicom.dcmread(path).NumberOfFrames) == 7
    for source in (f"dicom:{tmp_path / 'ct'}", str(path)):
        data = load(source, patch=[4, 8, 8], normalize="none", sampler="grid")
        assert data.spatial_dims == 3 and data.spatial_shape == (4, 8, 8)
        assert data.info["spatial shape"] == "7x24x20 (ZYX)" and data.info["spacing"] == "z 1.5 y 0.8 x 0.7 mm"
        first = data.train.samples[0][0]  # the cell at z, y, x = 0: frames in position order, in HU
        assert np.array_equal(first, volume[:4, :8, :8].astype(np.float32) - 1024)


def test_a_folder_of_one_image_dicom_files_in_class_folders_is_an_image_set(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("normal", "pneumonia"):
        for i in range(3):
            write_dicom_image(tmp_path / "xray" / label / f"{i}.dcm", rng.integers(0, 4000, (32, 28)))
    write_dicom_image(tmp_path / "xray" / "normal" / "bare.dcm", rng.integers(0, 4000, (32, 28)), preamble=False)
    (tmp_path / "xray" / "normal" / "notes.txt").write_text("not an image")
    assert resolve(str(tmp_path / "xray"))[0] == "folder"
    data = load(tmp_path / "xray", normalize="none")
    assert data.spatial_dims == 2 and data.class_names == ["normal", "pneumonia"]
    assert len(data.train) + len(data.test) == 7


def test_a_damaged_dicom_file_is_named(capsys, tmp_path):
    write_dicom_image(tmp_path / "xray" / "a" / "0.dcm", np.zeros((8, 8)))
    write_dicom_image(tmp_path / "xray" / "b" / "0.dcm", np.zeros((8, 8)))
    (tmp_path / "xray" / "b" / "1.dcm").write_bytes(b"this is no DICOM file")
    code, _, err = run_cli(["data", tmp_path / "xray"], capsys)
    assert code == 2 and "\n" not in err.strip() and "1.dcm' as DICOM" in err and "remove it from the folder" in err


# ---- 5, 6. guessed axes stated; channel names ------------------------------------------------------


def test_a_folder_of_5_channel_images_is_read_as_channels_and_the_guess_is_stated(capsys, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cellpainting").mkdir()
    for i in range(3):  # Cell Painting: 5 channels, CYX, no metadata
        tifffile.imwrite(
            tmp_path / "cellpainting" / f"{i}.tif", rng.integers(0, 4000, (5, 40, 36), dtype=np.uint16), metadata=None
        )
    code, out, err = run_cli(["data", tmp_path / "cellpainting"], capsys)
    assert code == 0, err
    assert "2D images" in out and "channels: 5 of 5" in out
    assert (
        err.count("warning:") == 1
        and "read as CYX (guessed); if that is wrong, name the axes, e.g. data.axes=ZYX" in err
    )
    assert "(2 other file(s) alike)" in err
    tifffile.imwrite(tmp_path / "stack.tif", rng.integers(0, 4000, (5, 40, 36), dtype=np.uint16), metadata=None)
    code, out, err = run_cli(["data", tmp_path / "stack.tif"], capsys)  # one file: a 5-slice stack
    assert code == 0 and "spatial shape: 5x40x36 (ZYX)" in out and "e.g. data.axes=CYX" in err
    code, out, err = run_cli(["data", tmp_path / "stack.tif", "data.axes=CYX"], capsys)
    assert code == 0 and "warning" not in err and "channels: 5 of 5" in out


def test_ome_channel_names_are_shown_and_choose_channels(capsys, tmp_path):
    array = np.random.default_rng(0).integers(0, 1000, (3, 40, 36), dtype=np.uint16)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, array, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP"]}})
    code, out, err = run_cli(["data", path], capsys)
    assert code == 0 and "channels: 3 of 3 (0 DAPI, 1 GFP, 2 RFP;" in out, err
    volume = Volume(open_stored(path), channels=["dapi", "RFP"])
    assert volume.channels == [0, 2] and np.array_equal(volume.read((0, 0), (8, 8)), array[[0, 2], :8, :8])
    code, out, err = run_cli(["data", path, "data.channels=DAPI,RFP"], capsys)
    assert code == 0 and "channels: 2 of 3 (0 DAPI, 2 RFP;" in out
    code, _, err = run_cli(["data", path, "data.channels=CY5"], capsys)
    assert code == 2 and "has no channel 'CY5' (channels: DAPI, GFP, RFP)" in err


def test_ome_zarr_channel_labels_are_names(tmp_path):
    import zarr

    from helpers import write_ome_zarr

    store = write_ome_zarr(tmp_path / "img.ome.zarr", np.zeros((2, 8, 32, 32), np.uint16))
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["omero"] = {"channels": [{"label": "nuclei"}, {"label": "membrane"}]}
    volume = Volume(open_stored(store), channels=["membrane"])
    assert volume.channels == [1] and volume.describe()["channels"].startswith("1 of 2 (1 membrane;")
