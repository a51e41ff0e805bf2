"""What the readers are told: a small frozen value, made once where a source is loaded (from the run's
``data.*`` options by :func:`icone.data.load_dataset`), and passed down in place of the run config (which no
reader sees)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from icone.options import fields_from


@dataclass(frozen=True)
class ReadOptions:
    """How a source is read, cut into samples or patches, labelled, split and normalised (docs/data.md)."""

    source: str = "digits"
    imbalance_ratio: float = 1.0  # long-tailed subsampling of the training split: largest/smallest class
    resize: list[int] | None = None  # spatial size every sample is resized to
    normalize: str = "percentile"
    test_fraction: float = 0.2  # held-out share where a source has no test split of its own
    load: str = "auto"  # folders: auto | memory | lazy
    patch: list[int] | None = None  # volumes as patches of this size (one number: every axis)
    stride: list[int] | None = None
    sampler: str = "random"  # grid | random | foreground
    foreground_threshold: float | None = None
    foreground_fraction: float = 0.1
    labels: str | None = None  # a label volume: a patch's label is its majority class
    labels_ignore: int | None = None
    axes: str | None = None
    channels: list[int | str] | None = None
    level: int = 0  # OME-Zarr resolution level
    spacing: list[float] | None = None
    series: str | None = None  # DICOM series
    timepoint: int | None = None

    @classmethod
    def of(cls, options: Any) -> ReadOptions:
        """``options`` as read options: a :class:`ReadOptions` as it is, else its fields of these names
        (e.g. the run's ``data.*`` section)."""
        return fields_from(cls, options)
