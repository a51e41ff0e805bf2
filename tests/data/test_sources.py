"""Every data source read from small files written here; normalisation; imbalance."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_tiny_npz
from icone.config import DataConfig
from icone.data import IndexedDataset, load_dataset, resolve
from icone.data.imbalance import long_tail_counts, long_tail_rows
from icone.errors import UserError


def load(source, **kw):
    return load_dataset(DataConfig(source=str(source), **kw))


def test_digits_is_28x28_ten_classes_and_test_split_is_fixed():
    a, b = load("digits"), load("digits")
    assert a.train.samples.shape[1:] == (1, 28, 28) and a.num_classes == 10
    assert len(a.train) + len(a.test) == 1797
    assert np.array_equal(a.test.labels, b.test.labels)
    assert a.view_defaults == {"flip": False, "rotate90": False}


def test_synthetic3d_is_3d_labelled_and_class_not_readable_from_mean_intensity():
    data = load("synthetic3d")
    assert data.spatial_dims == 3 and data.num_classes == 4
    means = np.asarray(data.train.samples).reshape(len(data.train), -1).mean(1)
    from sklearn.linear_model import LogisticRegression

    accuracy = LogisticRegression().fit(means[:, None], data.train.labels).score(means[:, None], data.train.labels)
    assert accuracy < 0.6  # 4 classes: chance is 0.25; intensity alone does not give the class away


@pytest.mark.parametrize("dims,rgb", [(2, False), (2, True), (3, False)])
def test_npz_medmnist_layout(tmp_path, dims, rgb):
    path = write_tiny_npz(tmp_path / "x.npz", dims, rgb=rgb)
    assert resolve(str(path)) == ("npz", path)
    data = load(path)
    assert data.spatial_dims == dims and data.in_channels == (3 if rgb else 1)
    assert len(data.train) == 48 and len(data.test) == 12 and data.train.labelled


def test_npz_multilabel_has_unknown_labels(tmp_path):
    np.savez(tmp_path / "m.npz", train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.ones((4, 3)))
    data = load(tmp_path / "m.npz", normalize="none")
    assert (data.train.labels == -1).all() and data.test is None


def write_images(root, sizes=((12, 12),) * 3, dtype=np.uint8, classes=("a", "b"), suffix=".png"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            high = np.iinfo(dtype).max
            array = rng.integers(0, high, size=size, dtype=np.int64).astype(dtype)
            if suffix == ".tif":
                import tifffile

                tifffile.imwrite(root / c / f"{i}{suffix}", array)
            else:
                Image.fromarray(array).save(root / c / f"{i}{suffix}")
    return root


@pytest.mark.parametrize("dtype,suffix", [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint16, ".tif")])
def test_folder_of_images_with_class_subfolders(tmp_path, dtype, suffix):
    root = write_images(tmp_path / "imgs", sizes=((12, 12),) * 5, dtype=dtype, suffix=suffix)
    assert resolve(str(root))[0] == "folder"
    data = load(root)
    assert data.class_names == ["a", "b"] and data.spatial_shape == (12, 12)
    assert len(data.train) + len(data.test) == 10
    # per-dataset percentile normalisation: the bulk of values lies in [0, 1]
    assert 0.3 < np.median(data.train.samples) < 0.7


def test_folder_rgb_images_have_three_channels(tmp_path):
    (tmp_path / "rgb").mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "rgb" / f"{i}.jpg")
    data = load(tmp_path / "rgb")
    assert data.in_channels == 3 and not data.train.labelled


def test_folder_of_different_sizes_needs_resize(tmp_path):
    root = write_images(tmp_path / "mixed", sizes=((12, 12), (10, 12)))
    with pytest.raises(UserError, match="different sizes.*data.resize=12,12"):
        load(root)
    assert load(root, resize=[8, 8]).spatial_shape == (8, 8)


def test_volumes_tif_nii_npy(tmp_path):
    import nibabel
    import tifffile

    root = tmp_path / "vols"
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
        tifffile.imwrite(root / c / "a.tif", np.random.default_rng(0).integers(0, 65535, (6, 8, 8), dtype=np.uint16))
        nibabel.save(
            nibabel.Nifti1Image(np.random.rand(6, 8, 8).astype(np.float32), np.eye(4)), str(root / c / "b.nii.gz")
        )
        np.save(root / c / "c.npy", np.random.rand(6, 8, 8).astype(np.float32))
    assert resolve(str(root))[0] == "volumes"
    data = load(root)
    assert data.spatial_dims == 3 and data.spatial_shape == (6, 8, 8) and data.class_names == ["x", "y"]
    assert len(data.train) + len(data.test) == 6


def test_single_volume_is_cut_into_patches(tmp_path):
    np.save(tmp_path / "big.npy", np.random.rand(64, 64, 40).astype(np.float32))
    data = load(tmp_path / "big.npy")
    assert data.train.samples.shape == (4, 1, 32, 32, 32) and data.test is None


def test_explicit_prefix_overrides_the_guess(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.float32))
    assert resolve(f"volumes:{tmp_path / 'v.npy'}")[0] == "volumes"


def test_dataset_items_are_sample_index_label():
    data = load("digits")
    sample, index, label = IndexedDataset(data.train)[5]
    assert isinstance(sample, torch.Tensor) and index == 5 and label == int(data.train.labels[5])


def test_long_tail_profile_and_reproducibility():
    assert long_tail_counts(3, 100, 10) == [100, 32, 10]
    labels = np.repeat(np.arange(5), 50)
    rows = long_tail_rows(labels, 10, seed=1)
    counts = np.bincount(labels[rows])
    assert counts[0] == 50 and counts[-1] == 5 and counts.tolist() == sorted(counts, reverse=True)
    assert np.array_equal(rows, long_tail_rows(labels, 10, seed=1))
    assert not np.array_equal(rows, long_tail_rows(labels, 10, seed=2))


def test_imbalance_leaves_test_split_untouched():
    balanced, skewed = load("digits"), load("digits", imbalance_ratio=10)
    counts = np.bincount(skewed.train.labels)
    assert counts.max() / counts.min() == pytest.approx(10, rel=0.05)
    assert np.array_equal(balanced.test.labels, skewed.test.labels)
