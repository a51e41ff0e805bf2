"""Backbones (2D/3D ResNets from MONAI, a small CNN) and heads (MLPs, centroid layer)."""

from icone.nets.backbones import BACKBONES, NORMS, BackboneSpec, build_backbone, parse_backbone_name
from icone.nets.heads import MLP, CentroidLayer, head_norm

__all__ = ["BACKBONES", "NORMS", "BackboneSpec", "CentroidLayer", "MLP", "build_backbone", "head_norm", "parse_backbone_name"]
