"""Pieces shared by the losses: input checks and the cross-entropy of matched view pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_pair(a: torch.Tensor, b: torch.Tensor, names: str, min_batch: int = 1) -> None:
    """Two ``B x d`` tensors of the same shape, with at least ``min_batch`` rows."""
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must both be B x d with the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < min_batch:
        raise ValueError(
            f"{names}: the loss needs at least {min_batch} samples (its batch statistics are undefined below), got {a.shape[0]}"
        )


def check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def stack_views(x: torch.Tensor | Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """``views x B x K`` from a tensor or a list of ``B x K`` tensors."""
    stacked = x if isinstance(x, torch.Tensor) else torch.stack(list(x))
    if stacked.ndim != 3:
        raise ValueError(f"{name} must be views x B x K (or a list of B x K tensors), got shape {tuple(stacked.shape)}")
    return stacked


def other_view_pairs(targets: int, views: int) -> list[tuple[int, int]]:
    """``(t, s)`` for every target view ``t < targets`` and every other view ``s != t`` (DINO, SwAV)."""
    return [(t, s) for t in range(targets) for s in range(views) if s != t]


def pair_cross_entropies(targets: torch.Tensor, log_probs: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """``(P,)``: for each pair ``(t, s)``, ``mean_batch sum_k -targets[t] * log_probs[s]``.

    ``targets``: ``T x B x K`` target distributions (detached here); ``log_probs``: ``S x B x K``.
    """
    targets = targets.detach()
    return torch.stack([-(targets[t] * log_probs[s]).sum(-1).mean() for t, s in pairs])
