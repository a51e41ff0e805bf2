"""One norm factory for backbones (2D/3D feature maps) and heads (1D feature vectors)."""

from __future__ import annotations

from torch import nn

from icone.nets.running_norm import RunningNorm

NORMS = ("batch", "group", "instance", "layer")  # backbones: every layer of the network
HEAD_NORMS = ("batch", "running", "layer", "group", "none")  # heads: batch-free unless "batch"


def group_count(channels: int) -> int:
    """Groups for GroupNorm: 8 where the channels allow it (32 in Wu & He; small nets need fewer), else 4, 2, 1."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


def norm_layer(norm: str, channels: int, dims: int, affine: bool = True) -> nn.Module:
    """A norm over ``channels`` for ``dims``-dimensional inputs (1: ``B x C`` vectors; 2, 3: feature maps).

    ``batch``: batch statistics; ``group``: :func:`group_count` groups; ``instance``: per sample and
    channel (maps only); ``layer``: over all features of a sample (``LayerNorm`` for vectors,
    one-group ``GroupNorm`` over ``C x spatial`` for maps); ``running``: per channel with running
    statistics in training too (:class:`RunningNorm`, vectors only); ``none``: identity (heads).
    """
    if norm == "batch":
        return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1](channels, affine=affine)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels, affine=affine)
    if norm == "layer":
        return (
            nn.LayerNorm(channels, elementwise_affine=affine) if dims == 1 else nn.GroupNorm(1, channels, affine=affine)
        )
    if norm == "running" and dims == 1:
        return RunningNorm(channels, affine=affine)
    if norm == "instance" and dims > 1:
        return (nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 2](channels, affine=affine)
    if norm == "none":
        return nn.Identity()
    raise ValueError(
        f"no {norm!r} norm for {dims}D inputs; choose one of: {', '.join(NORMS if dims > 1 else HEAD_NORMS)}"
    )
