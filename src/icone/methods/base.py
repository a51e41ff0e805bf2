"""The contract between a method and everything around it (trainer, evaluation, bench, CLI).

A method is an ``nn.Module`` holding ``backbone`` (the trained network; ``evaluation_backbone()``
is what is evaluated and exported) plus its heads and loss state. Generic code calls, and only calls:

- ``initialize(batches)`` once before the first step of a fresh run (not on resume), with
  un-augmented ``(samples, index)`` batches of the training set on the device;
- ``forward(views, index)`` = ``training_step``: ``(loss, metrics)`` for one batch, where
  ``views`` is a list of ``B x C x spatial`` tensors (global crops first, then local crops) and
  ``index`` the samples' stable instance indices;
- ``after_optimizer_step(step, total_steps)`` for EMA teachers, queues, size estimates;
- ``param_groups(lr, weight_decay)`` to build the optimizer: a group may carry ``lr_scale`` (its
  lr is the scheduled lr times this), ``weight_decay_start_scale`` (its weight decay falls from
  this multiple to 1x by a cosine over training) and ``row_sparse`` (a table whose gradient is a
  sparse tensor of the rows a step used; updated by a row-sparse optimizer);
- ``view_requirements(options)`` (a class method): the views it needs, checked once before training,
  and a schedule of them over the epochs (:class:`ViewRequirements`); the method is built for
  ``global_crops`` global crops per sample (its constructor's argument), local crops following them;
- ``teacher_momentum(step, total_steps, batch_size)``: the EMA momentum of a teacher after each step
  (``None``: no teacher), from which the per-step schedule is precomputed;
- ``epoch_metrics()``: health of the method's own state, logged per epoch as ``health/<key>``;
- ``evaluation_backbone()``: the network its paper evaluates (DINO's and ExCB's teacher);
- ``cluster_assignments(x)`` / ``num_clusters`` for methods that cluster (``None`` otherwise);
- ``describe()``: the paths the method's options chose (e.g. IConE's dense or sparse table);
- the class attributes below, among them ``cost_grows_with_instances``.

Methods know nothing about files, loops, devices or the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from icone.options import check_options, update_dataclass
from icone.views import ViewSpec

HEALTH_PREFIX = "health/"  # a method's epoch_metrics() in metrics.jsonl and its plots


@dataclasses.dataclass(frozen=True)
class ViewRequirements:
    """The views a method needs per sample: global crops in ``[low, high]``, local crops in ``[low, high]``
    (``None``: no upper bound), at least ``min_views`` in all; ``needs`` says why, in the method's words.
    ``schedule(spec, epoch, epochs)``: the views of an epoch (``None``: the same views every epoch)."""

    global_crops: tuple[int, int | None] = (1, None)
    local_crops: tuple[int, int | None] = (0, None)
    min_views: int = 1
    needs: str = ""
    schedule: Callable[[ViewSpec, int, int], ViewSpec] | None = None

    def problem(self, name: str, global_crops: int, local_crops: int) -> str | None:
        """What is wrong with ``global_crops`` and ``local_crops`` for the method ``name`` (``None``: nothing)."""
        inside = all(
            low <= count and (high is None or count <= high)
            for count, (low, high) in ((global_crops, self.global_crops), (local_crops, self.local_crops))
        )
        if inside and global_crops + local_crops >= self.min_views:
            return None
        return f"{name} {self.needs}; got global_crops={global_crops} and local_crops={local_crops}"

    def nearest(self, global_crops: int, local_crops: int) -> tuple[int, int]:
        """The allowed ``(global_crops, local_crops)`` nearest to the given ones."""
        (g_low, g_high), (l_low, l_high) = self.global_crops, self.local_crops
        local = max(l_low, local_crops if l_high is None else min(local_crops, l_high))
        glob = max(g_low, global_crops if g_high is None else min(global_crops, g_high))
        return max(glob, self.min_views - local), local


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
    min_instances: ClassVar[int] = 1  # training instances needed (a method telling instances apart needs 2)
    default_lr: ClassVar[float] = 1e-3  # for AdamW at batch size 64 (see ``icone.training.optim.scaled_lr``)
    default_weight_decay: ClassVar[float] = 0.05
    default_norm: ClassVar[str] = "group"  # backbone norm: batch-free by default
    default_local_crops: ClassVar[int] = 0
    default_order: ClassVar[str] = "shuffle"  # data.order (see order_for)
    cost_grows_with_instances: ClassVar[bool] = False  # per-instance state (IConE's table): time it at several N
    Options: ClassVar[type] = NoOptions

    def __init__(self, backbone: nn.Module, options: Any, num_instances: int, global_crops: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.num_instances = num_instances
        self.global_crops = global_crops  # the first views of a step; local crops follow them
        self.feature_dim: int = backbone.feature_dim

    @classmethod
    def view_requirements(cls, options: Any) -> ViewRequirements:
        """The views the method needs with ``options`` (default: any number of crops, the same every epoch)."""
        return ViewRequirements()

    @classmethod
    def make_options(cls, values: dict[str, Any]) -> Any:
        """The method's options dataclass from a dict; unknown keys name the valid ones, every value is checked."""
        options = cls.Options()
        update_dataclass(options, values, prefix=f"{cls.name}.")
        check_options(options, prefix=f"{cls.name}.")
        cross_field_checks = getattr(options, "validate", None)  # rules that span several options
        if cross_field_checks is not None:
            cross_field_checks()
        return options

    @classmethod
    def order_for(cls, options: Any) -> str:
        """The ``data.order`` this method trains with when none is given (per-instance state learns
        faster from revisits in bursts: ``window``)."""
        return cls.default_order

    def forward(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.training_step(views, index)

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def initialize(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Data-dependent initialisation before training (default: none)."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Updates outside the gradient (default: none)."""

    def teacher_momentum(self, step: int, total_steps: int, batch_size: int) -> float | None:
        """The EMA momentum of the teacher after step ``step`` of ``total_steps`` (default: no teacher)."""
        return None

    @torch.no_grad()
    def epoch_metrics(self) -> dict[str, float]:
        """Health of the method's own state (default: none); logged as ``health/<key>``."""
        return {}

    def evaluation_backbone(self) -> nn.Module:
        """The backbone that is evaluated and exported (default: the trained one)."""
        return self.backbone

    num_clusters: int | None = None  # set by methods that cluster

    def cluster_assignments(self, x: torch.Tensor) -> torch.Tensor | None:
        """The cluster of each un-augmented sample of ``x`` (``None``: the method does not cluster)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the options chose where they leave a choice (e.g. ``{"table_path": "sparse"}``)."""
        return {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """All trainable parameters; no weight decay on biases and norm parameters (1-d tensors)."""
        return split_decay(self.named_parameters(), lr, weight_decay)


def split_decay(
    named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, **extra: Any
) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with decay, biases and norm parameters without."""
    decay, no_decay = [], []
    for _, param in named:
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay, **extra}]
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, **extra})
    return [g for g in groups if g["params"]]
