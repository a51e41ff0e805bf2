"""Backbones: 2D/3D ResNet-18/50 from MONAI with a choice of norm layer, and a small CNN.

A backbone maps ``B x C x spatial`` to pooled features ``B x feature_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icone.errors import UserError

NORMS = ("batch", "group", "instance", "layer")
BACKBONES = ("resnet18", "resnet50", "smallcnn")


def monai_norm(norm: str, channels_min: int) -> str | tuple:
    """MONAI norm spec; ``layer`` is GroupNorm with one group (LayerNorm over C x spatial)."""
    if norm == "batch":
        return "batch"
    if norm == "group":
        return ("group", {"num_groups": group_count(channels_min)})
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "layer":
        return ("group", {"num_groups": 1})
    raise UserError(f"model.norm={norm!r} is not valid; choose one of: {', '.join(NORMS)}")


def group_count(channels: int) -> int:
    """Groups for GroupNorm: 8 where the narrowest layer allows it (32 in Wu & He; small nets need fewer)."""
    for groups in (8, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


def norm_layer(norm: str, channels: int, dims: int) -> nn.Module:
    if norm == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    raise UserError(f"model.norm={norm!r} is not valid; choose one of: {', '.join(NORMS)}")


def replace_batch_norm(module: nn.Module, norm: str, spatial_dims: int) -> None:
    """Swap every BatchNorm layer below ``module`` for ``norm`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, norm_layer(norm, child.num_features, spatial_dims))
        else:
            replace_batch_norm(child, norm, spatial_dims)


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone (stored with exported weights)."""

    name: str
    spatial_dims: int
    in_channels: int
    norm: str = "group"
    width: int = 16
    small_stem: bool = True


def parse_backbone_name(name: str) -> tuple[str, int | None]:
    """``resnet18-3d`` -> ``("resnet18", 3)``; no suffix -> dims from the data."""
    base, dims = name.lower(), None
    for suffix, d in (("-2d", 2), ("-3d", 3), ("_2d", 2), ("_3d", 3)):
        if base.endswith(suffix):
            base, dims = base[: -len(suffix)], d
    if base not in BACKBONES:
        raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)} (optionally with -2d or -3d)")
    return base, dims


class SmallCNN(nn.Module):
    """Four conv-norm-ReLU stages (stride 2 after the first), global average pool."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [conv(channels, out, 3, stride=1 if stage == 0 else 2, padding=1, bias=False), norm_layer(norm, out, spatial_dims), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2).mean(2)


class MonaiResNet(nn.Module):
    """MONAI's ResNet without its classifier: pooled features of width ``8 * width * expansion``."""

    def __init__(self, depth: int, spatial_dims: int, in_channels: int, width: int, norm: str, small_stem: bool) -> None:
        super().__init__()
        from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck

        block, layers = (ResNetBlock, [2, 2, 2, 2]) if depth == 18 else (ResNetBottleneck, [3, 4, 6, 3])
        self.net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[width, 2 * width, 4 * width, 8 * width],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=3 if small_stem else 7,
            conv1_t_stride=1 if small_stem else 2,
            no_max_pool=small_stem,
            feed_forward=False,
            norm=monai_norm(norm, width),
        )
        if norm != "batch":  # MONAI passes `norm` to the stem only; its residual blocks keep BatchNorm
            replace_batch_norm(self.net, norm, spatial_dims)
        self.feature_dim = 8 * width * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """A backbone with a ``feature_dim`` attribute."""
    base, _ = parse_backbone_name(spec.name)
    if spec.norm not in NORMS:
        raise UserError(f"model.norm={spec.norm!r} is not valid; choose one of: {', '.join(NORMS)}")
    if base == "smallcnn":
        return SmallCNN(spec.spatial_dims, spec.in_channels, spec.width, spec.norm)
    return MonaiResNet(18 if base == "resnet18" else 50, spec.spatial_dims, spec.in_channels, spec.width, spec.norm, spec.small_stem)
