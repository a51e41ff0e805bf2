"""Barlow Twins: the cross-correlation of two views' standardised embeddings pushed to identity.

Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, arXiv 2103.03230. Standardisation and cross-correlation are batch
statistics: undefined (or constant) below 2 samples, so B = 1 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icone import distributed, losses
from icone.methods.parts import TwoViewMethod, full_batch_gradient
from icone.nets import HEAD_NORMS, MLP
from icone.options import option


@dataclass
class BarlowTwinsOptions:
    projector_dim: int = option(2048, low=1)  # ours (paper: 8192; a smaller projector suits small backbones and data)
    projector_layers: int = option(3, low=1)  # paper: 3
    norm: str = option("batch", choices=HEAD_NORMS)  # head norm (paper: batch)
    lambd: float = option(5e-3, above=0)  # weight of the redundancy-reduction term (paper)


class BarlowTwins(TwoViewMethod):
    """Backbone + projector MLP; the loss on the embeddings of all processes (gathered).

    ``default_lr`` is for AdamW (ours); the paper trains with LARS, lr 0.2 (weights) x B / 256, wd 1.5e-6.
    """

    name = "barlow_twins"
    family = "regularisation"
    batch_needs = "standardisation and cross-correlation over the batch"
    paper = "Zbontar et al. 2021, arXiv 2103.03230"
    min_batch_size = 2
    default_lr = 4e-4  # ours, at batch 64 (docs/methods.md)
    default_weight_decay = 0.05
    default_norm = "batch"
    Options = BarlowTwinsOptions

    def __init__(
        self, backbone: nn.Module, options: BarlowTwinsOptions, num_instances: int, global_crops: int = 2
    ) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        dim = options.projector_dim
        self.projector = MLP(self.feature_dim, dim, dim, layers=options.projector_layers, norm=options.norm)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.projector(self.backbone(pair)).float()
        z1, z2 = distributed.all_gather_cat(z[:batch]), distributed.all_gather_cat(z[batch:])
        loss = losses.barlow_twins_loss(z1, z2, lambd=self.options.lambd)
        return full_batch_gradient(loss), {}
