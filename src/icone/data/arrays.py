"""In-memory samples: one split is an array ``N x C x (D x) H x W`` plus labels (``-1`` when unknown)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    samples: np.ndarray  # float32, N x C x spatial
    labels: np.ndarray  # int64, N; -1 where unknown
    sources: np.ndarray | None = None  # str, N: where each sample comes from (a file, or source:row)

    def __post_init__(self) -> None:
        self.samples = np.ascontiguousarray(self.samples, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.samples) != len(self.labels):
            raise ValueError(f"{len(self.samples)} samples but {len(self.labels)} labels")
        if self.sources is not None:
            self.sources = np.asarray(self.sources, dtype=str).reshape(-1)
            if len(self.sources) != len(self.samples):
                raise ValueError(f"{len(self.samples)} samples but {len(self.sources)} sources")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def subset(self, rows: np.ndarray) -> Split:
        return Split(self.samples[rows], self.labels[rows], None if self.sources is None else self.sources[rows])


@dataclass
class Dataset:
    """A loaded source: its splits, its shape and the view defaults that suit it."""

    name: str
    train: Split
    test: Split | None
    class_names: list[str] = field(default_factory=list)
    view_defaults: dict[str, object] = field(default_factory=dict)  # e.g. digits: no flips

    @property
    def spatial_dims(self) -> int:
        return self.train.samples.ndim - 2

    @property
    def in_channels(self) -> int:
        return int(self.train.samples.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.samples.shape[2:])

    @property
    def num_classes(self) -> int:
        return int(self.train.labels.max()) + 1 if self.train.labelled else 0


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of a train/test split that keeps class proportions (plain shuffle if unlabelled)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)] if (labels >= 0).all() else [np.arange(len(labels))]
    )
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = int(round(len(rows) * test_fraction)) if len(rows) > 1 else 0
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
