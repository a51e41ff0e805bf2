"""Helpers shared by the baseline methods: option checks, view checks, teachers, gathered losses."""

from __future__ import annotations

import copy

import torch
from torch import nn

from icone.errors import UserError
from icone.nets.heads import HEAD_NORMS
from icone.train import distributed
from icone.views import ViewSpec


def require_two_views(method: str, spec: ViewSpec) -> None:
    """Two-view methods compare exactly two global crops; anything else is refused before training."""
    if spec.global_crops != 2 or spec.local_crops != 0:
        raise UserError(
            f"{method} compares exactly two views; got {spec.global_crops} global and {spec.local_crops} local crops; "
            "use views.global_crops=2 views.local_crops=0 (multi-crop methods: dino, swav, excb)"
        )


def require_two_or_more_views(method: str, spec: ViewSpec) -> None:
    """Multi-crop methods predict one view from another, so they need at least two views."""
    if spec.global_crops + spec.local_crops < 2:
        raise UserError(f"{method} predicts one view from another and needs at least two views; use views.global_crops=2")


def full_batch_gradient(loss: torch.Tensor) -> torch.Tensor:
    """For a loss computed identically on every process from gathered embeddings.

    Each process back-propagates only through its own rows (``distributed.all_gather_cat``) and
    DDP averages gradients over processes, which divides the full-batch gradient by the number of
    processes; this multiplies the gradient back (the value is unchanged). Identity in one process.
    """
    world = distributed.world_size()
    return loss if world == 1 else loss * world - loss.detach() * (world - 1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A teacher / key encoder: a deep copy without gradients (updated by EMA only)."""
    teacher = copy.deepcopy(module)
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def check_head(method: str, norm: str, **widths: int) -> None:
    """A valid head norm and positive layer widths."""
    if norm not in HEAD_NORMS:
        raise UserError(f"{method}.norm={norm!r} is not valid; choose one of: {', '.join(HEAD_NORMS)}")
    for key, value in widths.items():
        if value is not None and value < 1:
            raise UserError(f"{method}.{key} must be at least 1, got {value}")


def check_positive(method: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise UserError(f"{method}.{key} must be positive, got {value}")


def check_unit_interval(method: str, **values: float) -> None:
    for key, value in values.items():
        if not 0 <= value <= 1:
            raise UserError(f"{method}.{key} must be between 0 and 1, got {value}")


def scaled_to_data(num_instances: int, divisor: int, low: int, high: int) -> int:
    """``clip(N // divisor, low, high)``: a head or queue size that grows with the training set."""
    return int(min(high, max(low, num_instances // divisor)))


def largest_power_of_two(n: int) -> int:
    """The largest power of two ``<= n`` (1 for ``n <= 1``)."""
    return 1 << max(int(n), 1).bit_length() - 1
