"""Parts shared by the methods: view requirements, the two-view skeleton, one backbone pass per view
shape, teachers (frozen copies, EMA, momentum schedule), a ring buffer, gathered losses, size rules."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from icone import distributed
from icone.methods.base import Method, ViewRequirements

# two-view methods compare exactly two global crops; multi-crop methods predict one view from another
TWO_VIEWS = ViewRequirements(global_crops=(2, 2), local_crops=(0, 0), needs="compares exactly two views")
TWO_OR_MORE_VIEWS = ViewRequirements(min_views=2, needs="predicts one view from another and needs at least two views")


def forward_by_shape(net: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]) -> torch.Tensor:
    """``net`` on all views, ``(V*B) x ...`` view-major: one pass per run of equally shaped views
    (global crops together, then local crops together)."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape == view.shape:
            runs[-1].append(view)
        else:
            runs.append([view])
    return torch.cat([net(torch.cat(run)) for run in runs])


class TwoViewMethod(Method):
    """A method that compares two global views of each sample; subclasses implement :meth:`pair_step`."""

    @classmethod
    def view_requirements(cls, options: Any) -> ViewRequirements:
        return TWO_VIEWS

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.pair_step(torch.cat(views[:2]), views[0].shape[0], index)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``pair``: the two views of the batch, ``2B x C x spatial`` (first view first)."""
        raise NotImplementedError


def frozen_copy(module: nn.Module) -> nn.Module:
    """A teacher / key encoder: a deep copy without gradients (updated by EMA only)."""
    teacher = copy.deepcopy(module)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """EMA momentum rising from ``base`` to ``final`` by a cosine over training (BYOL §3.2)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, buffers: bool = True) -> None:
    """``target <- m * target + (1 - m) * online`` for parameters; buffers are copied (``buffers=False``:
    the target keeps its own, e.g. norm statistics of its own inputs)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    if buffers:
        for t, o in zip(target.buffers(), online.buffers()):
            t.copy_(o)


def full_batch_gradient(loss: torch.Tensor) -> torch.Tensor:
    """For a loss computed identically on every process from gathered embeddings.

    Each process back-propagates only through its own rows (``distributed.all_gather_cat``) and
    DDP averages gradients over processes, which divides the full-batch gradient by the number of
    processes; this multiplies the gradient back (the value is unchanged). Identity in one process.
    """
    world = distributed.world_size()
    return loss if world == 1 else loss * world - loss.detach() * (world - 1)


class RingBuffer(nn.Module):
    """The newest ``size`` rows (with their instance indices, ``-1`` for none), first in first out.

    Any number of rows may be pushed per step. ``rows`` starts as ``init`` (zeros by default);
    ``filled`` counts the rows pushed so far, up to ``size``. A host copy of that count avoids a
    device sync in every step.
    """

    def __init__(self, size: int, dim: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("rows", init.clone() if init is not None else torch.zeros(size, dim))
        self.register_buffer("index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self._count: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None

    @property
    def filled(self) -> int:
        if self._count is None:
            self._count = int(self.count)
        return self._count

    @torch.no_grad()
    def push(self, rows: torch.Tensor, index: torch.Tensor | None = None) -> None:
        size = len(self)
        if size == 0:
            return
        rows = rows[-size:]
        slots = (self.pointer + torch.arange(len(rows), device=rows.device)) % size
        self.rows[slots] = rows.to(self.rows.dtype)
        if index is not None:
            self.index[slots] = index[-size:]
        self.pointer.copy_((self.pointer + len(rows)) % size)
        self._count = min(self.filled + len(rows), size)
        self.count.fill_(self._count)


def scaled_to_data(num_instances: int, divisor: int, low: int, high: int) -> int:
    """``clip(N // divisor, low, high)``: a head or queue size that grows with the training set."""
    return int(min(high, max(low, num_instances // divisor)))


def largest_power_of_two(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << max(int(n), 1).bit_length() - 1
