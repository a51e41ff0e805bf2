"""Per-dataset intensity normalisation (statistics from the training split, applied to every split)."""

from __future__ import annotations

import numpy as np

from icone.data.arrays import Dataset
from icone.data.samples import ArraySamples

_SAMPLE = 2_000_000  # values per channel used to estimate the statistics


def _channel_values(samples: np.ndarray, channel: int, rng: np.random.Generator) -> np.ndarray:
    values = samples[:, channel].reshape(-1)
    if values.size > _SAMPLE:
        values = values[rng.integers(0, values.size, _SAMPLE)]
    return values


def intensity_statistics(samples: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(offset, scale)`` so that ``(x - offset) / scale`` is normalised.

    ``percentile``: 1st and 99.8th percentiles map to 0 and 1 (robust to hot pixels, the usual
    choice for microscopy); ``minmax``: min and max map to 0 and 1; ``zscore``: mean 0, std 1.
    """
    channels = samples.shape[1]
    offset, scale = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    if mode == "none":
        return offset, scale
    rng = np.random.default_rng(0)
    for c in range(channels):
        values = _channel_values(samples, c, rng)
        if mode == "percentile":
            low, high = np.percentile(values, [1.0, 99.8])
        elif mode == "minmax":
            low, high = values.min(), values.max()
        elif mode == "zscore":
            low, high = values.mean(), values.mean() + values.std()
        else:
            raise ValueError(f"unknown normalisation {mode!r}")
        offset[c], scale[c] = low, max(float(high - low), 1e-6)
    return offset, scale


def normalize_dataset(dataset: Dataset, mode: str, values: np.ndarray | None = None) -> Dataset:
    """Normalise every split with the training split's statistics (in place for samples in memory);
    lazy samples' statistics come from ``values`` (their statistics sample) or a sample read here."""
    train = dataset.train.samples
    if isinstance(train, ArraySamples):
        values = train.array
    elif values is None:
        values = train.statistics_sample()
    offset, scale = intensity_statistics(values, mode)
    for split in (dataset.train, dataset.test):
        if split is not None:
            split.samples.normalize(offset, scale)
    return dataset
