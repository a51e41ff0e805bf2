"""DINO: self-distillation with no labels; a student matches a centred, sharpened EMA teacher.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
arXiv 2104.14294. The only batch statistic is the centre, an EMA of the teacher's batch means,
so B = 1 is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icone import distributed, losses
from icone.methods.base import Method, ViewRequirements
from icone.methods.parts import (
    TWO_OR_MORE_VIEWS,
    cosine_momentum,
    ema_update,
    forward_by_shape,
    frozen_copy,
    scaled_to_data,
)
from icone.nets import HEAD_NORMS, MLP, CentroidLayer
from icone.options import option

MAX_PROTOTYPES = 65536  # the paper's K (ImageNet)


def default_num_prototypes(num_instances: int) -> int:
    """``K = clip(N // 4, 8, 65536)`` (ours): about four training samples per output."""
    return scaled_to_data(num_instances, divisor=4, low=8, high=MAX_PROTOTYPES)


@dataclass
class DINOOptions:
    num_prototypes: int | None = option(None, low=1)  # K; None: clip(N // 4, 8, 65536)
    hidden_dim: int = option(
        2048, low=1
    )  # head: feature -> 2048 -> 2048 -> 256, L2-normalise, weight-normalised K outputs (paper)
    bottleneck_dim: int = option(256, low=1)
    head_layers: int = option(3, low=1)
    norm: str = option("none", choices=HEAD_NORMS)  # head norm (paper: none)
    student_temp: float = option(0.1, above=0)
    teacher_temp: float = option(0.04, above=0)  # after the warm-up
    warmup_teacher_temp: float = option(
        0.04, above=0
    )  # the warm-up starts here (paper default: no warm-up, 0.04 -> 0.04)
    warmup_fraction: float = option(
        0.3, low=0, high=1
    )  # share of training steps for the linear warm-up (ours; the paper: 30 epochs)
    center_momentum: float = option(0.9, low=0, high=1)
    momentum: float = option(0.996, low=0, high=1)  # teacher EMA, raised to final_momentum by a cosine
    final_momentum: float = option(1.0, low=0, high=1)


class DINOHead(nn.Module):
    """MLP to a bottleneck, then K cosine outputs (L2-normalised input, weight-normalised rows, gain 1)."""

    def __init__(self, in_dim: int, options: DINOOptions, num_prototypes: int) -> None:
        super().__init__()
        self.mlp = MLP(
            in_dim, options.hidden_dim, options.bottleneck_dim, layers=options.head_layers, norm=options.norm
        )
        self.last_layer = CentroidLayer(options.bottleneck_dim, num_prototypes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.mlp(x))


class DINO(Method):
    """Student: backbone + head on every view; teacher: EMA copy on the global views.

    ``L`` = mean over (teacher global view, other student view) pairs of the cross-entropy
    (``losses.dino_loss``). ``default_lr`` is ours for small data; the paper uses AdamW with lr
    5e-4 x B / 256 after a warm-up and weight decay rising 0.04 -> 0.4 (ours: fixed 0.04).
    Local crops: 2 by default (ours; the paper uses 6-10).
    """

    name = "dino"
    family = "distillation"
    batch_needs = "nothing (the centre is an EMA of teacher batch means)"
    paper = "Caron et al. 2021, arXiv 2104.14294"
    min_batch_size = 1
    default_lr = 5e-4
    default_weight_decay = 0.04
    default_norm = "group"
    default_local_crops = 2
    Options = DINOOptions

    def __init__(self, backbone: nn.Module, options: DINOOptions, num_instances: int, global_crops: int = 2) -> None:
        super().__init__(backbone, options, num_instances, global_crops)
        self.num_prototypes = options.num_prototypes or default_num_prototypes(num_instances)
        self.head = DINOHead(self.feature_dim, options, self.num_prototypes)
        self.teacher_backbone = frozen_copy(self.backbone)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(self.num_prototypes))
        self.register_buffer("progress", torch.zeros(()))  # step / total_steps, for the temperature warm-up
        self._progress: float | None = None  # host copy of ``progress`` (no device sync in the step)
        self._batch_center: torch.Tensor | None = None

    def evaluation_backbone(self) -> nn.Module:
        """The teacher's backbone: DINO's paper evaluates the teacher network (better than the student during training)."""
        return self.teacher_backbone

    @classmethod
    def view_requirements(cls, options: DINOOptions) -> ViewRequirements:
        return TWO_OR_MORE_VIEWS

    def teacher_temp(self) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_fraction`` of training."""
        opts = self.options
        if opts.warmup_fraction <= 0:
            return opts.teacher_temp
        if self._progress is None:  # once, after construction or a checkpoint restore
            self._progress = float(self.progress)
        ramp = min(self._progress / opts.warmup_fraction, 1.0)
        return opts.warmup_teacher_temp + ramp * (opts.teacher_temp - opts.warmup_teacher_temp)

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        globals_ = min(self.global_crops, len(views))
        b = views[0].shape[0]
        student = forward_by_shape(lambda x: self.head(self.backbone(x)), views).float().reshape(len(views), b, -1)
        with torch.no_grad():
            teacher = (
                self.teacher_head(self.teacher_backbone(torch.cat(views[:globals_]))).float().reshape(globals_, b, -1)
            )
        temp = self.teacher_temp()
        loss = losses.dino_loss(
            student, teacher, self.center, student_temp=self.options.student_temp, teacher_temp=temp
        )
        self._batch_center = teacher.mean(dim=(0, 1))
        with torch.no_grad():
            targets = torch.softmax((teacher - self.center) / temp, dim=-1)
            entropy = -(targets * targets.clamp(min=1e-12).log()).sum(-1).mean()
        return loss, {"teacher_entropy": entropy, "teacher_temp": torch.tensor(temp)}

    def teacher_momentum(self, step: int, total_steps: int, batch_size: int) -> float:
        """``momentum`` rising to ``final_momentum`` by a cosine over training."""
        return cosine_momentum(self.options.momentum, step, total_steps, self.options.final_momentum)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        opts = self.options
        momentum = self.teacher_momentum(step, total_steps, 0)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self._batch_center is not None:  # c <- m c + (1 - m) mean of teacher outputs over all processes (eq. 4)
            batch_center = distributed.all_reduce_mean(self._batch_center)
            self.center.mul_(opts.center_momentum).add_(batch_center, alpha=1 - opts.center_momentum)
            self._batch_center = None
        self._progress = min(step / max(total_steps, 1), 1.0)
        self.progress.fill_(self._progress)
