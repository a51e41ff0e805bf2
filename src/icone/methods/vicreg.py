"""VICReg: invariance + variance + covariance regularisation of two views' embeddings.

Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022, arXiv 2105.04906. The variance and covariance terms are
batch statistics (unbiased, divided by B - 1): undefined below 2 samples, so B = 1 is refused.
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
class VICRegOptions:
    expander_dim: int = 2048  # ours (paper: 8192; a smaller expander suits small backbones and data)
    expander_layers: int = 3  # paper: 3
    norm: str = "batch"  # head norm: batch (paper) | layer | group | none
    sim_coeff: float = 25.0  # lambda (paper)
    std_coeff: float = 25.0  # mu (paper)
    cov_coeff: float = 1.0  # nu (paper)

    def validate(self) -> None:
        check_head("vicreg", self.norm, expander_dim=self.expander_dim, expander_layers=self.expander_layers)
        check_positive("vicreg", sim_coeff=self.sim_coeff, std_coeff=self.std_coeff, cov_coeff=self.cov_coeff)


class VICReg(Method):
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

    def __init__(self, backbone: nn.Module, options: VICRegOptions, num_instances: int) -> None:
        super().__init__(backbone, options, num_instances)
        dim = options.expander_dim
        self.expander = MLP(self.feature_dim, dim, dim, layers=options.expander_layers, norm=options.norm)

    def adjust_views(self, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
        require_two_views(self.name, spec)
        return spec

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts, b = self.options, views[0].shape[0]
        z = self.expander(self.backbone(torch.cat(views[:2]))).float()
        z1, z2 = distributed.all_gather_cat(z[:b]), distributed.all_gather_cat(z[b:])
        terms = losses.vicreg_terms(z1, z2)
        loss = opts.sim_coeff * terms["invariance"] + opts.std_coeff * terms["variance"] + opts.cov_coeff * terms["covariance"]
        return full_batch_gradient(loss), {k: v.detach() for k, v in terms.items()}
