"""SimSiam: a predictor on one branch, stop-gradient on the other, no negatives, no EMA.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, arXiv 2011.10566.
With batch-free head norms (our default) B = 1 is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icone import losses
from icone.methods.parts import TwoViewMethod
from icone.nets import HEAD_NORMS, MLP, norm_layer
from icone.options import option


@dataclass
class SimSiamOptions:
    proj_dim: int = option(2048, low=1)  # projector: 3 layers of 2048, norm after each including the output (paper)
    pred_hidden_dim: int = option(512, low=1)  # predictor bottleneck 2048 -> 512 -> 2048 (paper)
    norm: str = option("layer", choices=HEAD_NORMS)  # head norm; ours (the paper's BatchNorm needs a batch)


class SimSiam(TwoViewMethod):
    """Backbone + 3-layer projector + 2-layer predictor; ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``.

    ``default_lr`` is for AdamW (ours); the paper trains with SGD, lr 0.05 x B / 256, wd 1e-4.
    """

    name = "simsiam"
    family = "distillation"
    batch_needs = "nothing (with batch-free head norms)"
    paper = "Chen & He 2021, arXiv 2011.10566"
    min_batch_size = 1
    default_lr = 5e-4
    default_weight_decay = 0.05
    default_norm = "group"
    Options = SimSiamOptions

    def __init__(self, backbone: nn.Module, options: SimSiamOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        dim = options.proj_dim
        # the output norm has no affine parameters (the paper's BatchNorm1d(affine=False), or its batch-free twin)
        self.projector = nn.Sequential(
            MLP(self.feature_dim, dim, dim, layers=3, norm=options.norm),
            norm_layer(options.norm, dim, dims=1, affine=False),
        )
        self.predictor = MLP(dim, options.pred_hidden_dim, dim, layers=2, norm=options.norm)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch
        z = self.projector(self.backbone(pair))
        p = self.predictor(z).float()
        z = z.float()
        loss = losses.simsiam_loss(p[:b], z[b:]) / 2 + losses.simsiam_loss(p[b:], z[:b]) / 2
        # the SimSiam collapse monitor (§4.1): per-dimension std of the normalised outputs, about 1/sqrt(d) when healthy
        std = F.normalize(z.detach(), dim=-1).std(0).mean()  # over both views' 2B rows
        return loss, {"output_std": std}
