"""SimCLR: NT-Xent between two views, the rest of the batch as negatives.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv 2002.05709. Needs negatives, so at least 2 samples per batch.
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
class SimCLROptions:
    temperature: float = option(0.2, above=0)  # ours; the paper uses 0.1-0.5 (0.1 with LARS at batch 4096)
    hidden_dim: int = option(2048, low=1)  # projection MLP feature -> hidden -> out (paper: 2048 -> 128)
    out_dim: int = option(128, low=1)
    norm: str = option("batch", choices=HEAD_NORMS)  # head norm (paper: batch)


class SimCLR(TwoViewMethod):
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

    def __init__(self, backbone: nn.Module, options: SimCLROptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        self.projector = MLP(self.feature_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.projector(self.backbone(pair)).float()
        z1, z2 = distributed.all_gather_cat(z[:batch]), distributed.all_gather_cat(z[batch:])
        loss = losses.nt_xent(z1, z2, temperature=self.options.temperature)
        return full_batch_gradient(loss), {"nt_xent": loss.detach()}
