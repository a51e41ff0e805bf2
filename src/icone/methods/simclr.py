"""SimCLR: NT-Xent between two views, the rest of the batch as negatives.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv 2002.05709. Needs negatives, so at least 2 samples per batch.
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
class SimCLROptions:
    temperature: float = 0.2  # ours; the paper uses 0.1-0.5 (0.1 with LARS at batch 4096)
    hidden_dim: int = 2048  # projection MLP feature -> hidden -> out (paper: 2048 -> 128)
    out_dim: int = 128
    norm: str = "batch"  # head norm: batch (paper) | layer | group | none

    def validate(self) -> None:
        check_head("simclr", self.norm, hidden_dim=self.hidden_dim, out_dim=self.out_dim)
        check_positive("simclr", temperature=self.temperature)


class SimCLR(Method):
    """Backbone + projection MLP; NT-Xent over the ``2B`` views (all processes' views as negatives).

    ``default_lr`` is for AdamW at small scale (ours); the paper trains with LARS, lr 0.3 x B / 256.
    """

    name = "simclr"
    family = "contrastive"
    batch_needs = "negatives: the other samples of the batch"
    paper = "Chen et al. 2020, arXiv 2002.05709"
    min_batch_size = 2
    default_lr = 1e-3
    default_weight_decay = 0.05
    default_norm = "batch"
    Options = SimCLROptions

    def __init__(self, backbone: nn.Module, options: SimCLROptions, num_instances: int) -> None:
        super().__init__(backbone, options, num_instances)
        self.projector = MLP(self.feature_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)

    def adjust_views(self, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
        require_two_views(self.name, spec)
        return spec

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views[:2]))).float()
        z1, z2 = distributed.all_gather_cat(z[:b]), distributed.all_gather_cat(z[b:])
        loss = losses.nt_xent(z1, z2, temperature=self.options.temperature)
        return full_batch_gradient(loss), {"nt_xent": loss.detach()}
