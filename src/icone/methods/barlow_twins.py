"""Barlow Twins: the cross-correlation of two views' standardised embeddings pushed to identity.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, arXiv 2103.03230. Standardisation and cross-correlation are batch
statistics: undefined (or constant) below 2 samples, so B = 1 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icone import losses
from icone.methods.base import Method
from icone.methods.common import check_head, check_positive, full_batch_gradient, require_two_views
from icone.nets.heads import MLP
from icone.train import distributed
from icone.views import ViewSpec


@dataclass
class BarlowTwinsOptions:
    projector_dim: int = 2048  # ours (paper: 8192; a smaller projector suits small backbones and data)
    projector_layers: int = 3  # paper: 3
    norm: str = "batch"  # head norm: batch (paper) | layer | group | none
    lambd: float = 5e-3  # weight of the redundancy-reduction term (paper)

    def validate(self) -> None:
        check_head("barlow_twins", self.norm, projector_dim=self.projector_dim, projector_layers=self.projector_layers)
        check_positive("barlow_twins", lambd=self.lambd)


class BarlowTwins(Method):
    """Backbone + projector MLP; the loss on the embeddings of all processes (gathered).

    ``default_lr`` is for AdamW (ours); the paper trains with LARS, lr 0.2 (weights) x B / 256, wd 1.5e-6.
    """

    name = "barlow_twins"
    family = "regularisation"
    batch_needs = "standardisation and cross-correlation over the batch"
    paper = "Zbontar et al. 2021, arXiv 2103.03230"
    min_batch_size = 2
    default_lr = 4e-4  # ours, at batch 64: on digits at B 32 (10 epochs) kNN 0.944 at lr 3e-4 against 0.905 at 7e-4
    default_weight_decay = 0.05
    default_norm = "batch"
    Options = BarlowTwinsOptions

    def __init__(self, backbone: nn.Module, options: BarlowTwinsOptions, num_instances: int) -> None:
        super().__init__(backbone, options, num_instances)
        dim = options.projector_dim
        self.projector = MLP(self.feature_dim, dim, dim, layers=options.projector_layers, norm=options.norm)

    def adjust_views(self, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
        require_two_views(self.name, spec)
        return spec

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views[:2]))).float()
        z1, z2 = distributed.all_gather_cat(z[:b]), distributed.all_gather_cat(z[b:])
        loss = losses.barlow_twins_loss(z1, z2, lambd=self.options.lambd)
        return full_batch_gradient(loss), {}
