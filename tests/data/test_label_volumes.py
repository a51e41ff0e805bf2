"""Labels from a label volume (issue 23, item 8): ``data.labels_ignore`` leaves a background class out of
each patch's majority, and a test region holding one class is stated, not reported as 1.000 without a word."""

import json

import numpy as np
import pytest

from helpers import FAST, expect_error, run_cli
from icone.config import DataConfig
from icone.data import load_dataset


def write_pair(tmp_path, test_classes=(1, 2), dense=False):
    """A 16 x 16 x 96 volume and its segmentation: background 0 with sparse class 1 or 2 voxels, the
    class alternating along x in the first 80% and ``test_classes`` in the held-out last 20% (``dense``:
    every voxel of a block labelled)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((16, 16, 96), np.uint8)
    for start in range(0, 96, 8):
        cls = (1, 2)[(start // 8) % 2] if start < 72 else test_classes[(start // 8) % len(test_classes)]
        step = 1 if dense else 3  # sparse: a few voxels, background is every patch's majority
        labels[::step, ::step, start : start + 8 : step] = cls
    volume = (rng.normal(100, 5, labels.shape) + 300.0 * labels).astype(np.float32)
    np.save(tmp_path / "volume.npy", volume)
    np.save(tmp_path / "labels.npy", labels)
    return tmp_path / "volume.npy", tmp_path / "labels.npy"


def test_labels_ignore_takes_the_majority_of_the_labelled_voxels(tmp_path):
    volume, labels = write_pair(tmp_path)
    common = {"source": str(volume), "labels": str(labels), "patch": [8], "sampler": "grid", "axes": "ZYX"}
    plain = load_dataset(DataConfig(**common))
    assert set(plain.train.labels.tolist()) == {0}  # background wins every patch
    ignored = load_dataset(DataConfig(**common, labels_ignore=0))
    assert set(ignored.train.labels.tolist()) == {1, 2} and set(ignored.test.labels.tolist()) == {1, 2}
    assert "majority class among the voxels not of class 0" in ignored.info["labels"]


def test_labels_ignore_needs_a_label_volume(capsys, tmp_path):
    volume, _ = write_pair(tmp_path)
    expect_error(
        capsys, ["data", volume, "data.labels_ignore=0"], r"data.labels_ignore .*give the volume with data.labels"
    )


@pytest.mark.parametrize("ignore", [None, 0])
def test_a_one_class_test_region_is_stated(capsys, tmp_path, ignore):
    volume, labels = write_pair(tmp_path, test_classes=(2,), dense=ignore is None)
    extra = [] if ignore is None else [f"data.labels_ignore={ignore}"]
    args = ["train", "--data", volume, f"data.labels={labels}", "data.patch=8", "data.axes=ZYX", "--epochs", "1"]
    code, _, err = run_cli([*args, "--batch-size", "4", *FAST, "--out", tmp_path / "run", *extra], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "test split holds a single class" in line]
    assert len(warnings) == 1, err
    assert ("data.labels_ignore=0" in warnings[0]) == (ignore is None)
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert "test split holds a single class" in result["test_warning"]
