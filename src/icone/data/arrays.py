"""A loaded dataset: splits of samples (:mod:`icone.data.samples`) with labels (``-1`` when unknown)."""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import numpy as np

from icone.data.samples import ArraySamples, Samples


@dataclass
class Split:
    """Samples and their labels; an array given as ``samples`` is held in memory (with ``sources``, if given)."""

    samples: Samples  # N samples C x spatial (an array N x C x spatial is wrapped in ArraySamples)
    labels: np.ndarray  # int64, N; -1 where unknown
    sources: InitVar[np.ndarray | None] = None  # str, N: where each sample of an array comes from

    def __post_init__(self, sources: np.ndarray | None) -> None:
        if not isinstance(self.samples, Samples):
            self.samples = ArraySamples(self.samples, sources)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.samples) != len(self.labels):
            raise ValueError(f"{len(self.samples)} samples but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def subset(self, rows: np.ndarray) -> Split:
        return Split(self.samples.subset(rows), self.labels[rows])


@dataclass
class Dataset:
    """A loaded source: its splits, its shape and the view defaults that suit it."""

    name: str
    train: Split
    test: Split | None
    class_names: list[str] = field(default_factory=list)
    view_defaults: dict[str, object] = field(default_factory=dict)  # e.g. digits: no flips
    info: dict[str, str] = field(default_factory=dict)  # what `icone data` shows: kind, axes, shape, patches...

    @property
    def spatial_dims(self) -> int:
        return len(self.train.samples.sample_shape) - 1

    @property
    def in_channels(self) -> int:
        return int(self.train.samples.sample_shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.samples.sample_shape[1:])

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


VALIDATION_FRACTION = 0.2  # share of the training split held out to choose settings on


def validation_split(dataset: Dataset, fraction: float = VALIDATION_FRACTION, seed: int = 0) -> Dataset:
    """``dataset`` with its training split cut in two, stratified and seeded: ``train`` the rest, ``test``
    the held-out ``fraction``. Settings (an lr, a lever) are chosen on this, never on the test split."""
    if not dataset.train.labelled:
        raise ValueError("a validation split needs a labelled training split")
    keep, held_out = stratified_split(dataset.train.labels, fraction, seed)
    return Dataset(
        dataset.name, dataset.train.subset(keep), dataset.train.subset(held_out), dataset.class_names,
        dataset.view_defaults, dataset.info,
    )  # fmt: skip
