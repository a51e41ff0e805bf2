"""What a training run is made of, built once (by :func:`icone.build.setup`) and then only consumed: by the
:class:`~icone.training.trainer.Trainer`, the speed harness, and a training loop of your own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from icone.methods import Method
from icone.runtime import Runtime
from icone.training.loader import Loaders
from icone.training.optim import OptimizerSet
from icone.training.step import Schedules, TrainStep
from icone.views import ViewMaker


@dataclass(frozen=True)
class Plan:
    """How the loop runs: epochs of ``steps_per_epoch`` steps of ``batch_size`` samples per process; a metric
    line every ``log_every`` steps; checkpoints each epoch (every ``save_every`` epochs one kept), and within
    epochs every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes``; the collapse monitor on
    ``monitor_samples`` fixed samples."""

    epochs: int
    steps_per_epoch: int
    batch_size: int
    log_every: int = 10
    save_every: int = 0
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    monitor_samples: int = 512

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class Setup:
    """A run, built: the resolved ``config`` it was built from (kept with checkpoints; read by nothing below
    :mod:`icone.build`), the :class:`~icone.runtime.Runtime`, the ``method`` (on the device), its
    ``optimizer``, the ``train_step`` that steps them (``loss, metrics = setup.train_step(x, index, views)``),
    the precomputed ``schedules``, the view maker of each epoch (``views[epoch]``), the ``loaders`` and the
    ``plan`` of the loop."""

    config: Any
    runtime: Runtime
    method: Method
    optimizer: torch.optim.Optimizer | OptimizerSet
    train_step: TrainStep
    schedules: Schedules
    views: tuple[ViewMaker, ...]
    loaders: Loaders
    plan: Plan

    @property
    def model(self) -> torch.nn.Module:
        """What the forward calls: the method, or its DDP wrapper under ``torchrun``."""
        return self.train_step.model
