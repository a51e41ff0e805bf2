"""Files as microscopes and scanners write them (issue 23): LZW TIFFs written by Pillow, ilastik and
BigDataViewer HDF5, multi-frame and one-image DICOM, OME channel names, guessed axes stated."""

import importlib.util

import numpy as np
import pytest
import tifffile
from PIL import Image

from helpers import run_cli
from icone.config import DataConfig
from icone.data import load_dataset
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
