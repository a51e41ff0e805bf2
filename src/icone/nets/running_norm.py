"""A batch-free head norm with BatchNorm's geometry: running statistics, used in training too."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from icone import distributed

RUNNING_WINDOW = 1024.0  # rows (samples x views) the running statistics of ``RunningNorm`` average over


class RunningNorm(nn.Module):
    """Standardisation per feature with running statistics, used in training too (``head_norm=running``).

    ``y = (x - mu) / sqrt(var + eps) * weight + bias``, where ``mu`` and ``var`` come from running
    first and second moments of the rows seen *before* this forward (so a row's output does not
    depend on the other rows of its batch, and B = 1 is defined). In training the moments of the
    batch (all processes) are then folded in with momentum ``(1 - 1 / window) ** rows``: the
    statistics average over about ``window`` rows whatever the batch size. The first training
    batch a fresh module sees sets the statistics (:func:`calibrate` sets them from a larger pass).
    The aim is BatchNorm's geometry (centred, unit-variance features across samples) without
    batch statistics; the gradient does not flow through the statistics.

    ``use_batch_statistics(True)`` turns it into BatchNorm in training (this process's batch, biased
    statistics, with their gradient; the running moments still follow the data of all processes and
    serve in evaluation): ExCB's ``head_norm=auto`` chooses that at large batches. The choice is a
    buffer, so a checkpoint keeps it.
    """

    def __init__(self, dim: int, window: float = RUNNING_WINDOW, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.window, self.eps = dim, float(window), eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_sq", torch.ones(dim))  # second moment E[x^2]
        self.register_buffer("rows_seen", torch.zeros((), dtype=torch.float64))
        self.register_buffer("batch_statistics", torch.zeros((), dtype=torch.bool))  # True: BatchNorm in training
        self._calibration: list[torch.Tensor] | None = None  # [rows, sum, sum of squares] while calibrating
        self._started = False  # host copy of rows_seen > 0 (no device sync per forward once started)
        self._batch_mode: bool | None = None  # host copy of batch_statistics

    def momentum(self, rows: float) -> float:
        """Weight of the old statistics after ``rows`` new rows: ``(1 - 1 / window) ** rows``."""
        return math.exp(rows * math.log1p(-1.0 / self.window)) if self.window > 1 else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        if self._calibration is not None:  # calibration: normalise with this batch, accumulate its moments
            detached = flat.detach()
            self._calibration[0] += len(detached)
            self._calibration[1] += detached.sum(0).double()
            self._calibration[2] += (detached * detached).sum(0).double()
            mean, var = detached.mean(0), detached.var(0, unbiased=False)
        elif self.training and self._uses_batch_statistics():  # BatchNorm: this batch's statistics, with gradient
            mean, var = flat.mean(0), flat.var(0, unbiased=False)
            self._update(flat.detach(), initialise=not self._has_statistics())
        else:  # running statistics; in training this batch is folded in after (a fresh module starts from it)
            fresh = self.training and not self._has_statistics()
            if fresh:
                self._update(flat.detach(), initialise=True)
            mean, sq = self.running_mean, self.running_sq
            var = (sq - mean * mean).clamp(min=0)
            y = self._affine((flat - mean) * torch.rsqrt(var + self.eps))
            if self.training and not fresh:
                self._update(flat.detach())
            return y.reshape(x.shape).to(x.dtype)
        return self._affine((flat - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape).to(x.dtype)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.weight is None else y * self.weight + self.bias

    def use_batch_statistics(self, on: bool) -> None:
        """BatchNorm behaviour in training (``True``) or running statistics (``False``, the default)."""
        self.batch_statistics.fill_(bool(on))
        self._batch_mode = bool(on)

    def _uses_batch_statistics(self) -> bool:
        if self._batch_mode is None:
            self._batch_mode = bool(self.batch_statistics)
        return self._batch_mode

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._started, self._batch_mode = False, None  # read rows_seen and batch_statistics again

    def _has_statistics(self) -> bool:
        if not self._started:
            self._started = bool(self.rows_seen > 0)
        return self._started

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, initialise: bool = False) -> None:
        moments = torch.cat([flat.mean(0), (flat * flat).mean(0)])
        rows = float(len(flat))
        if distributed.is_distributed():  # statistics of all processes' rows, identical everywhere
            moments = distributed.all_reduce_mean(moments)
            rows *= distributed.world_size()
        mean, sq = moments.chunk(2)
        keep = 0.0 if initialise else self.momentum(rows)
        self.running_mean.mul_(keep).add_(mean, alpha=1 - keep)
        self.running_sq.mul_(keep).add_(sq, alpha=1 - keep)
        self.rows_seen += rows
        self._started = True

    def extra_repr(self) -> str:
        return f"{self.dim}, window={self.window:g}, eps={self.eps:g}, affine={self.weight is not None}"


@contextlib.contextmanager
def calibrate(module: nn.Module) -> Iterator[None]:
    """Set the statistics of every :class:`RunningNorm` in ``module`` from the batches passed inside.

    Inside, each norm normalises with the statistics of the current batch (as BatchNorm in
    training does) and accumulates them; on exit its running moments become the averages over all
    rows passed (all processes), so that at the start of training it gives the geometry BatchNorm
    gives on batches of that size. On an error nothing is set.
    """
    norms = [m for m in module.modules() if isinstance(m, RunningNorm)]
    for norm in norms:
        norm._calibration = [torch.zeros((), dtype=torch.float64, device=norm.running_mean.device)] + [
            torch.zeros_like(norm.running_mean, dtype=torch.float64) for _ in range(2)
        ]
    try:
        yield
        for norm in norms:
            rows, total, squares = (distributed.all_reduce_mean(t) for t in norm._calibration)
            if float(rows) > 0:
                norm.running_mean.copy_((total / rows).float())
                norm.running_sq.copy_((squares / rows).float())
                norm.rows_seen.fill_(float(rows) * distributed.world_size())
                norm._started = True
    finally:
        for norm in norms:
            norm._calibration = None
