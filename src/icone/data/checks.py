"""Checks of loaded data, run before anything is written: values, labels, sizes in memory."""

from __future__ import annotations

import logging
import os

import numpy as np

from icone.data.samples import ArraySamples, Samples
from icone.errors import UserError

log = logging.getLogger("icone")
CHUNK = 256  # samples checked at a time (no full-size temporary arrays)


def _name(samples: Samples, row: int, split: str) -> str:
    source = samples.source(row)
    return f"'{source}'" if source and not source.startswith("[") else f"{split} sample {row}"


def check_finite_and_varied(samples: Samples, split: str, statistics: np.ndarray | None = None) -> None:
    """Refuse NaN or infinite values (naming the first sample that has them); warn about constant samples.

    Samples in memory are checked whole. Lazy samples check every sample they read themselves (one
    line naming the file, and the patch's position); here, their statistics sample (``statistics``, the
    raw samples of ``samples.statistics_rows()``, read if not given) is read and checked for constant ones.
    """
    if not isinstance(samples, ArraySamples):
        _check_lazy(samples, split, statistics)
        return
    values = samples.array
    constant, first_constant = 0, None
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK].reshape(min(CHUNK, len(values) - start), -1)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            bad = int((~np.isfinite(chunk[row - start])).sum())
            raise UserError(
                f"{_name(samples, row, split)} holds {bad} NaN or infinite value(s); fix or remove it "
                "(icone cannot learn from undefined pixels)"
            )
        flat = chunk.max(axis=1) == chunk.min(axis=1)
        if flat.any():
            constant += int(flat.sum())
            first_constant = first_constant if first_constant is not None else start + int(np.flatnonzero(flat)[0])
    if constant:
        log.warning(
            "%d of %d %s samples are constant (e.g. %s): they carry no information to learn from",
            constant,
            len(samples),
            split,
            _name(samples, first_constant, split),
        )


def _check_lazy(samples: Samples, split: str, values: np.ndarray | None) -> None:
    rows = samples.statistics_rows()
    values = samples.read_raw(rows) if values is None else values
    flat = values.reshape(len(values), -1)
    constant = flat.max(axis=1) == flat.min(axis=1)
    if constant.any():
        log.warning(
            "%d of %d sampled %s samples are constant (e.g. %s): they carry no information to learn from%s",
            int(constant.sum()),
            len(values),
            split,
            samples.where(int(rows[int(np.flatnonzero(constant)[0])])),
            "; data.sampler=foreground skips empty patches" if samples.position(0) else "",
        )


def check_labels(labels: np.ndarray, count: int, what: str) -> tuple[np.ndarray, bool]:
    """One integer class per sample (``-1`` = unknown) from a label array of ``count`` samples.

    Returns ``(labels, multi_label)``: an ``N x L`` array with ``L > 1`` is multi-label (no single
    class per sample), read as unknown labels. Wrong lengths, non-numeric and non-integer values,
    and negative classes other than ``-1`` are refused with one line.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biuf":
        raise UserError(f"{what} must hold integer classes, not {labels.dtype} values; store them as integers 0..C-1")
    if labels.ndim == 0 or len(labels) != count:
        length = "a single value" if labels.ndim == 0 else f"{len(labels)} entries"
        raise UserError(f"{what} has {length} but there are {count} samples; give one label per sample")
    labels = labels.reshape(count, -1)
    if labels.shape[1] > 1:
        return np.full(count, -1, np.int64), True
    labels = labels[:, 0]
    if labels.dtype.kind == "f" and not (np.isfinite(labels) & (labels == np.round(labels))).all():
        raise UserError(
            f"{what} holds non-integer values (e.g. {labels[~(labels == np.round(labels))][0]}); store integer classes 0..C-1"
        )
    labels = labels.astype(np.int64)
    if (labels < -1).any():
        raise UserError(
            f"{what} holds negative classes (e.g. {labels[labels < -1][0]}); classes are 0..C-1, and -1 means unknown"
        )
    return labels, False


def available_memory_bytes() -> int | None:
    """Memory available to new allocations (``MemAvailable`` on Linux), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(
    count: int, shape: tuple[int, ...], what: str, fraction: float = 0.6, lazy_hint: bool = False
) -> None:
    """Refuse to stack ``count`` float32 samples of ``shape`` (``C x spatial``) if they would not fit in memory."""
    needed = count * int(np.prod(shape)) * 4
    available = available_memory_bytes()
    if available is not None and needed > fraction * available:
        text = "x".join(str(s) for s in shape)
        raise UserError(
            f"{what}: {count} samples of {text} need {needed / 2**30:.1f} GiB as float32, more than this machine has free "
            f"({available / 2**30:.1f} GiB); pass data.resize=... (e.g. data.resize={','.join(['256'] * (len(shape) - 1))})"
            + (", or data.load=lazy to read them from the files per step" if lazy_hint else "")
        )
