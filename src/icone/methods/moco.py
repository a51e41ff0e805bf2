"""MoCo v2: InfoNCE against a FIFO queue of keys from a momentum (EMA) key encoder.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020, arXiv 1911.05722; Chen, Fan, Girshick & He, "Improved Baselines with
Momentum Contrastive Learning", arXiv 2003.04297 (MLP head, stronger augmentation, tau 0.2).
Negatives come from the queue, not the batch, so B = 1 is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icone import distributed, losses
from icone.methods.parts import RingBuffer, TwoViewMethod, ema_update, frozen_copy, largest_power_of_two
from icone.nets import HEAD_NORMS, MLP
from icone.options import option

MAX_QUEUE = 65536  # the paper's queue length (ImageNet)


def default_queue_size(num_instances: int) -> int:
    """``min(65536, the largest power of two <= N)``: at most one epoch of keys (ours)."""
    return min(MAX_QUEUE, largest_power_of_two(num_instances))


@dataclass
class MoCoOptions:
    temperature: float = option(0.2, above=0)  # MoCo v2
    momentum: float = option(
        0.99, low=0, high=1
    )  # ours (MoCo v2: 0.999, tuned for long ImageNet runs; MoCo v3 uses 0.99)
    queue_size: int | None = option(None, low=1)  # None: min(65536, largest power of two <= N)
    hidden_dim: int = option(2048, low=1)  # MoCo v2 head: feature -> 2048 -> ReLU -> 128, no BN
    out_dim: int = option(128, low=1)
    norm: str = option("none", choices=HEAD_NORMS)  # head norm (paper: none)
    symmetric: bool = True  # ours: both views are queries (MoCo v2 uses one direction)
    mask_own_keys: bool = True  # ours: an older key of the query's own instance is not a negative


class MoCo(TwoViewMethod):
    """Query encoder (backbone + MLP head) trained; key encoder = its EMA; queue of past keys.

    ``default_lr`` is for AdamW (ours); MoCo v2 trains with SGD, lr 0.03 at batch 256, wd 1e-4.
    """

    name = "moco"
    family = "contrastive"
    batch_needs = "nothing (negatives come from the queue)"
    paper = "He et al. 2020, arXiv 1911.05722; MoCo v2: arXiv 2003.04297"
    min_batch_size = 1
    default_lr = 1e-3
    default_weight_decay = 0.05
    default_norm = "group"
    Options = MoCoOptions

    def __init__(self, backbone: nn.Module, options: MoCoOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        self.projector = MLP(self.feature_dim, options.hidden_dim, options.out_dim, layers=2, norm=options.norm)
        self.key_backbone = frozen_copy(self.backbone)
        self.key_projector = frozen_copy(self.projector)
        size = options.queue_size or default_queue_size(num_instances)
        # random keys at first, as in MoCo; their instance index -1 is no training instance
        self.queue = RingBuffer(size, options.out_dim, init=F.normalize(torch.randn(size, options.out_dim), dim=1))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=-1)

    def pair_step(
        self, pair: torch.Tensor, batch: int, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        opts, b = self.options, batch
        q = self.projector(self.backbone(pair)).float()
        k = self.keys(pair)
        q1, q2, k1, k2 = q[:b], q[b:], k[:b], k[b:]
        keys = self.queue.rows
        mask = index[:, None] == self.queue.index[None, :] if opts.mask_own_keys else None
        loss = losses.moco_infonce(q1, k2, keys, opts.temperature, mask=mask)
        if opts.symmetric:
            loss = (loss + losses.moco_infonce(q2, k1, keys, opts.temperature, mask=mask)) / 2
        self._pending = (distributed.all_gather_cat(k1), distributed.all_gather_cat(index))
        positive = (F.normalize(q1, dim=-1) * k2).sum(-1).mean()
        return loss, {"positive_cosine": positive.detach()}

    def teacher_momentum(self, step: int, total_steps: int, batch_size: int) -> float:
        """The key encoder's EMA momentum: constant (§3.2 of MoCo)."""
        return self.options.momentum

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        momentum = self.teacher_momentum(step, total_steps, 0)
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projector, self.projector, momentum)
        if self._pending is not None:
            self.queue.push(*self._pending)  # the newest keys overwrite the oldest
            self._pending = None
