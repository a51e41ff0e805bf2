"""The built-in synthetic2d source: reproducible, balanced, class not in the intensity statistics."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from icone.config import DataConfig
from icone.data import load_dataset, resolve
from icone.data.synthetic import SYNTHETIC2D_CLASSES, synthetic2d


@pytest.fixture(scope="module")
def data():
    return synthetic2d()


def test_shape_split_and_registration(data):
    assert resolve("synthetic2d") == ("synthetic2d", None)
    assert data.train.samples.shape == (1200, 1, 28, 28) and data.test.samples.shape == (800, 1, 28, 28)
    assert data.spatial_dims == 2 and data.num_classes == len(SYNTHETIC2D_CLASSES) == 8
    loaded = load_dataset(DataConfig(source="synthetic2d"))
    assert np.array_equal(loaded.train.labels, data.train.labels) and loaded.train.samples.array.dtype == np.float32


def test_reproducible_by_seed(data):
    again, other = synthetic2d(per_class=20, seed=0), synthetic2d(per_class=20, seed=1)
    assert np.array_equal(again.train.samples.array, synthetic2d(per_class=20, seed=0).train.samples.array)
    assert not np.allclose(again.train.samples.array, other.train.samples.array)
    assert np.array_equal(data.test.samples.array, synthetic2d().test.samples.array)


def test_labels_are_balanced(data):
    assert np.bincount(data.train.labels).tolist() == [150] * 8
    assert np.bincount(data.test.labels).tolist() == [100] * 8


def test_class_not_readable_from_mean_and_std(data):
    def stats(split):
        flat = split.samples.array.reshape(len(split), -1)
        return np.stack([flat.mean(1), flat.std(1)], 1)

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(stats(data.train), data.train.labels)
    assert probe.score(stats(data.test), data.test.labels) < 0.2  # chance is 0.125 (measured 0.136)
    assert probe.score(stats(data.train), data.train.labels) < 0.2
