"""BYOL: an online network predicts the projection of an EMA target network.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020, arXiv 2006.07733. No negatives; with batch-free head norms B = 1 is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icone import losses
from icone.methods.parts import TwoViewMethod, cosine_momentum, ema_update, frozen_copy
from icone.nets import HEAD_NORMS, MLP
from icone.options import option


@dataclass
class BYOLOptions:
    hidden_dim: int = option(4096, low=1)  # projector feature -> 4096 -> 256, predictor 256 -> 4096 -> 256 (paper)
    out_dim: int = option(256, low=1)
    norm: str = option("layer", choices=HEAD_NORMS)  # head norm; ours (the paper's BatchNorm needs a batch)
    momentum: float = option(
        0.996, low=0, high=1
    )  # EMA of the target, raised to final_momentum by a cosine (paper §3.2)
    final_momentum: float = option(1.0, low=0, high=1)


class BYOL(TwoViewMethod):
    """Online: backbone + projector + predictor; target: EMA of backbone + projector.

    ``default_lr`` is for AdamW (ours); the paper trains with LARS, lr 0.2 x B / 256, wd 1.5e-6.
    """

    name = "byol"
    family = "distillation"
    batch_needs = "nothing (with batch-free head norms)"
    paper = "Grill et al. 2020, arXiv 2006.07733"
    min_batch_size = 1
    default_lr = 4e-4  # ours, at batch 64 (docs/methods.md)
    default_weight_decay = 0.05
    default_norm = "group"
    Options = BYOLOptions

    def __init__(self, backbone: nn.Module, options: BYOLOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        self.projector = MLP(self.feature_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)
        self.predictor = MLP(options.out_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch
        p = self.predictor(self.projector(self.backbone(pair))).float()
        with torch.no_grad():
            z = self.target_projector(self.target_backbone(pair)).float()
        # L + L~ (§3.1): each view's prediction regresses the target projection of the other view
        loss = losses.byol_loss(p[:b], z[b:]) + losses.byol_loss(p[b:], z[:b])
        return loss, {}

    def teacher_momentum(self, step: int, total_steps: int, batch_size: int) -> float:
        """``momentum`` rising to ``final_momentum`` by a cosine over training (§3.2)."""
        return cosine_momentum(self.options.momentum, step, total_steps, self.options.final_momentum)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        momentum = self.teacher_momentum(step, total_steps, 0)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
