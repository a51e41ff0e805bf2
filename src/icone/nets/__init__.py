"""Backbones (2D/3D ResNets from MONAI, a small CNN), heads (MLPs, centroid layer) and their norms."""

from icone.nets.backbones import (
    BACKBONES,
    BackboneSpec,
    build_backbone,
    parse_backbone_name,
    set_activation_checkpointing,
)
from icone.nets.heads import MLP, CentroidLayer
from icone.nets.norms import HEAD_NORMS, NORMS, group_count, norm_layer
from icone.nets.running_norm import RunningNorm, calibrate

__all__ = [
    "BACKBONES",
    "HEAD_NORMS",
    "MLP",
    "NORMS",
    "BackboneSpec",
    "CentroidLayer",
    "RunningNorm",
    "build_backbone",
    "calibrate",
    "group_count",
    "norm_layer",
    "parse_backbone_name",
    "set_activation_checkpointing",
]
