"""Backbones: shapes, and the norm choice reaching every layer (batch-free means no BatchNorm)."""

import pytest
import torch
from torch import nn

from helpers import small_backbone
from icone.errors import UserError
from icone.nets import parse_backbone_name

NORM_TYPES = {
    "batch": (nn.BatchNorm2d, nn.BatchNorm3d),
    "group": (nn.GroupNorm,),
    "layer": (nn.GroupNorm,),
    "instance": (nn.InstanceNorm2d, nn.InstanceNorm3d),
}


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "smallcnn"])
@pytest.mark.parametrize("norm", list(NORM_TYPES))
@pytest.mark.parametrize("dims", [2, 3])
def test_every_norm_layer_is_the_chosen_one(name, norm, dims):
    backbone = small_backbone(name, dims, norm)
    norms = [
        m
        for m in backbone.modules()
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm))
    ]
    assert norms and all(isinstance(m, NORM_TYPES[norm]) for m in norms)
    if norm == "layer":
        assert all(m.num_groups == 1 for m in norms)


@pytest.mark.parametrize("dims", [2, 3])
def test_batch_free_backbone_output_does_not_depend_on_the_batch(dims):
    torch.manual_seed(0)
    backbone = small_backbone("resnet18", dims).train()
    x = torch.randn(3, 1, *([12] * dims))
    with torch.no_grad():
        together = backbone(x)
        alone = torch.cat([backbone(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.shape == (3, backbone.feature_dim)


def test_backbone_names():
    assert parse_backbone_name("resnet18-3d") == ("resnet18", 3)
    assert parse_backbone_name("smallcnn") == ("smallcnn", None)
    with pytest.raises(UserError, match="unknown backbone 'vgg'.*resnet18, resnet50, smallcnn"):
        parse_backbone_name("vgg")
