"""Long-tailed subsampling of a labelled split (the CIFAR-LT profile)."""

from __future__ import annotations

import numpy as np

from icone.errors import UserError


def long_tail_counts(num_classes: int, largest: int, ratio: float) -> list[int]:
    """Per-class counts ``n_c = largest * ratio^(-c / (C - 1))``: class 0 largest, last smallest."""
    if num_classes == 1:
        return [largest]
    return [max(1, int(round(largest * ratio ** (-c / (num_classes - 1))))) for c in range(num_classes)]


def long_tail_rows(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Sorted row indices of a subsample whose largest/smallest class size is ``ratio``.

    The largest class keeps as many samples as the smallest class has before subsampling, so the
    profile is exact for any starting class sizes; the choice of rows is reproducible by ``seed``.
    """
    if ratio == 1:
        return np.arange(len(labels))
    if not (labels >= 0).all():
        raise UserError("data.imbalance_ratio needs a labelled source (class sub-folders or labels in the .npz)")
    classes = np.unique(labels)
    largest = min(int((labels == c).sum()) for c in classes)
    counts = long_tail_counts(len(classes), largest, ratio)
    if largest < ratio:
        raise UserError(
            f"data.imbalance_ratio={ratio:g} needs at least {ratio:g} samples in every class, "
            f"the smallest class has {largest}; use a smaller ratio"
        )
    rng = np.random.default_rng(seed)
    rows = [rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c, n in zip(classes, counts)]
    return np.sort(np.concatenate(rows))
