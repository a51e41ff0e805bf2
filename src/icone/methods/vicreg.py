"""VICReg: invariance + variance + covariance regularisation of two views' embeddings.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, arXiv 2105.04906. The variance and covariance terms are
batch statistics (unbiased, divided by B - 1): undefined below 2 samples, so B = 1 is refused.
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
class VICRegOptions:
    expander_dim: int = option(2048, low=1)  # ours (paper: 8192; a smaller expander suits small backbones and data)
    expander_layers: int = option(3, low=1)  # paper: 3
    norm: str = option("batch", choices=HEAD_NORMS)  # head norm (paper: batch)
    sim_coeff: float = option(25.0, above=0)  # lambda (paper)
    std_coeff: float = option(25.0, above=0)  # mu (paper)
    cov_coeff: float = option(1.0, above=0)  # nu (paper)


class VICReg(TwoViewMethod):
    """Backbone + expander MLP; the loss on the embeddings of all processes (gathered).

    ``default_lr`` is for AdamW (ours); the paper trains with LARS, base lr 0.2 x B / 256, wd 1e-6.
    """

    name = "vicreg"
    family = "regularisation"
    batch_needs = "variance and covariance over the batch"
    paper = "Bardes et al. 2022, arXiv 2105.04906"
    min_batch_size = 2
    default_lr = 1e-3
    default_weight_decay = 0.05
    default_norm = "batch"
    Options = VICRegOptions

    def __init__(self, backbone: nn.Module, options: VICRegOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        dim = options.expander_dim
        self.expander = MLP(self.feature_dim, dim, dim, layers=options.expander_layers, norm=options.norm)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts = self.options
        z = self.expander(self.backbone(pair)).float()
        z1, z2 = distributed.all_gather_cat(z[:batch]), distributed.all_gather_cat(z[batch:])
        loss, terms = losses.vicreg_loss(
            z1, z2, sim_coeff=opts.sim_coeff, std_coeff=opts.std_coeff, cov_coeff=opts.cov_coeff, return_terms=True
        )
        return full_batch_gradient(loss), {k: v.detach() for k, v in terms.items()}
