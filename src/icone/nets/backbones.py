"""Backbones: 2D/3D ResNet-18/50 from MONAI with a choice of norm layer, and a small CNN.

A backbone maps ``B x C x spatial`` to pooled features ``B x feature_dim``; a :class:`BackboneSpec`
describes it (:func:`icone.build.backbone_spec` makes one from the run's ``model.*`` options).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from icone.errors import UserError
from icone.nets.norms import norm_layer

BACKBONES = ("resnet18", "resnet50", "smallcnn")


def replace_batch_norm(module: nn.Module, norm: str, spatial_dims: int) -> None:
    """Swap every BatchNorm layer below ``module`` for ``norm`` (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, norm_layer(norm, child.num_features, spatial_dims))
        else:
            replace_batch_norm(child, norm, spatial_dims)


def parse_backbone_name(name: str) -> tuple[str, int | None]:
    """``resnet18-3d`` -> ``("resnet18", 3)``; no suffix -> dims from the data."""
    base, dims = name.lower(), None
    for suffix, d in (("-2d", 2), ("-3d", 3), ("_2d", 2), ("_3d", 3)):
        if base.endswith(suffix):
            base, dims = base[: -len(suffix)], d
    if base not in BACKBONES:
        raise UserError(
            f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)} (optionally with -2d or -3d)"
        )
    return base, dims


class SmallCNN(nn.Module):
    """Four conv-norm-ReLU stages (stride 2 after the first), global average pool."""

    def __init__(self, spatial_dims: int, in_channels: int, width: int, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [
                conv(channels, out, 3, stride=1 if stage == 0 else 2, padding=1, bias=False),
                norm_layer(norm, out, spatial_dims),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels

    checkpointing = False  # recompute each stage's activations in the backward pass (set_activation_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not recomputes(self):
            return self.features(x).flatten(2).mean(2)
        for stage in range(0, len(self.features), 3):  # conv, norm, ReLU
            x = checkpoint(self.features[stage : stage + 3], x, use_reentrant=False)
        return x.flatten(2).mean(2)


class MonaiResNet(nn.Module):
    """MONAI's ResNet without its classifier: pooled features of width ``8 * width * expansion``."""

    def __init__(
        self, depth: int, spatial_dims: int, in_channels: int, width: int, norm: str, small_stem: bool
    ) -> None:
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
        )
        if norm != "batch":  # MONAI's `norm` argument reaches the stem only: swap every BatchNorm, blocks included
            replace_batch_norm(self.net, norm, spatial_dims)
        self.feature_dim = 8 * width * block.expansion

    checkpointing = False  # recompute each residual stage's activations in the backward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not recomputes(self):
            return self.net(x)
        net = self.net  # MONAI's ResNet.forward, its four residual stages checkpointed
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = checkpoint(layer, x, use_reentrant=False)
        return net.avgpool(x).view(x.size(0), -1)


def recomputes(backbone: nn.Module) -> bool:
    """Activation checkpointing applies: switched on, training, and a gradient to compute."""
    return backbone.checkpointing and backbone.training and torch.is_grad_enabled()


def set_activation_checkpointing(module: nn.Module, on: bool = True) -> None:
    """Switch activation checkpointing on (or off) for every backbone inside ``module`` (teachers too:
    they run without gradients, where it does nothing). Memory falls to about one stage's activations
    per backbone; each step recomputes the forward pass once more."""
    for child in module.modules():
        if isinstance(child, (SmallCNN, MonaiResNet)):
            child.checkpointing = on


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone: its name (``resnet18``, ``resnet50``, ``smallcnn``, optionally ``-2d``/``-3d``), the spatial
    dimensions and channels of its input, the norm layer, the width of its first stage, and a small stem."""

    backbone: str
    spatial_dims: int
    in_channels: int
    norm: str
    width: int = 16
    small_stem: bool = True  # 3x3 stride-1 stem without max-pool, for small images


def build_backbone(spec: BackboneSpec) -> nn.Module:
    """The backbone ``spec`` describes, with a ``feature_dim`` attribute."""
    base, _ = parse_backbone_name(spec.backbone)
    dims, channels, norm = int(spec.spatial_dims), int(spec.in_channels), str(spec.norm)
    if base == "smallcnn":
        return SmallCNN(dims, channels, spec.width, norm)
    return MonaiResNet(18 if base == "resnet18" else 50, dims, channels, spec.width, norm, spec.small_stem)
