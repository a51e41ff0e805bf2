"""The shared base of every method: the contract between a method and the trainer.

A method is an ``nn.Module`` holding ``backbone`` (what is evaluated and exported) plus its heads
and loss state. The trainer calls, and only calls:

- ``initialize(batches)`` once before the first step of a fresh run (not on resume), with
  un-augmented ``(samples, index)`` batches of the training set on the device;
- ``forward(views, index)`` = ``training_step``: ``(loss, metrics)`` for one batch, where
  ``views`` is a list of ``B x C x spatial`` tensors (global crops first, then local crops);
- ``after_optimizer_step(step, total_steps)`` for EMA teachers, queues, size estimates;
- ``param_groups(lr, weight_decay)`` to build the optimizer (a group may carry ``lr_scale``:
  its lr is the scheduled lr times this, and ``weight_decay_start_scale``: its weight decay falls
  from this multiple to 1x by a cosine over training);
- ``adjust_views(spec, epoch, epochs)`` for view schedules (e.g. ExCB's crop scale);
- ``epoch_metrics()`` for per-epoch monitoring (table statistics, cluster occupancy).

Methods know nothing about files, loops or devices beyond their tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from icone.config import check_options, update_dataclass
from icone.views import ViewSpec


@dataclasses.dataclass
class NoOptions:
    """A method without options."""


class Method(nn.Module):
    """Base class: subclasses set the class attributes and implement ``training_step``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # contrastive | distillation | clustering | regularisation | instance-table
    batch_needs: ClassVar[str] = "nothing"  # what the loss needs from the batch
    paper: ClassVar[str] = ""
    min_batch_size: ClassVar[int] = 1
    default_lr: ClassVar[float] = 1e-3  # for AdamW at batch size 64 (see ``scaled_lr``)
    default_weight_decay: ClassVar[float] = 0.05
    default_norm: ClassVar[str] = "group"  # backbone norm: batch-free by default
    default_local_crops: ClassVar[int] = 0
    Options: ClassVar[type] = NoOptions

    def __init__(self, backbone: nn.Module, options: Any, num_instances: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.num_instances = num_instances
        self.feature_dim: int = backbone.feature_dim

    @classmethod
    def make_options(cls, values: dict[str, Any]) -> Any:
        """The method's options dataclass from a dict; unknown keys name the valid ones."""
        options = cls.Options()
        update_dataclass(options, values, prefix=f"{cls.name}.")
        check_options(options, prefix=f"{cls.name}.")
        if hasattr(options, "validate"):
            options.validate()
        return options

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.training_step(views, index)

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Data-dependent initialisation before training (default: none)."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Updates outside the gradient (default: none)."""

    def adjust_views(self, spec: ViewSpec, epoch: int, epochs: int) -> ViewSpec:
        return spec

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        return {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """All trainable parameters; no weight decay on biases and norm parameters (1-d tensors)."""
        return split_decay(self.named_parameters(), lr, weight_decay)


def split_decay(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, **extra: Any) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with decay, biases and norm parameters without."""
    decay, no_decay = [], []
    for _, param in named:
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, **extra}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, **extra})
    return [g for g in groups if g["params"]]


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """EMA momentum rising from ``base`` to ``final`` by a cosine over training (BYOL eq. in §3.2)."""
    import math

    progress = min(step / max(total_steps, 1), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- m * target + (1 - m) * online`` for parameters; buffers are copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
