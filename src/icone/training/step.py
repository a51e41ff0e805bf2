"""One training step, public: schedules, precision, backward, clipping, the optimizer, the after-step hook.

The trainer, the speed harness and a user's own loop all step a method through :class:`TrainStep`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from icone.methods import Method
from icone.runtime import AUTOCAST, memory_format, resolve_precision
from icone.training.optim import OptimizerSet, all_reduce_row_gradients, clip_grad_norm
from icone.views import ViewMaker


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio`` at ``total_steps``."""

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.01

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class TrainStep:
    """Steps ``method`` with ``optimizer``: ``loss, metrics = step(x, index, views)``.

    Per step: each optimizer group's lr is ``base_lr x group["lr_scale"] x schedule``; a group with
    ``weight_decay_start_scale`` gets a weight decay falling from that multiple of its own to 1x by
    a cosine; views are made on the device; the forward runs under autocast for ``precision``
    ``bf16`` or ``fp16`` (``fp32``: none; ``auto`` as :func:`icone.runtime.resolve_precision`);
    then backward (``fp16``: of the loss scaled by a ``GradScaler``), the exchange of row-sparse
    gradients across processes, gradient clipping (``grad_clip``; 0 or ``None``: off; on the
    unscaled gradients), the optimizer step (``fp16``: skipped when a gradient overflowed, and
    counted in ``skipped_steps``) and the method's ``after_optimizer_step``. ``model`` is what the
    forward calls (a DDP wrapper of the method under ``torchrun``; the method itself by default).
    ``device`` is a ``torch.device`` or its name (``"cpu"``, ``"cuda:0"``).
    """

    def __init__(
        self,
        method: Method,
        optimizer: torch.optim.Optimizer | OptimizerSet,
        schedule: Schedule,
        base_lr: float,
        device: torch.device | str,
        grad_clip: float | None = None,
        precision: str = "auto",
        channels_last: bool = False,
        spatial_dims: int = 2,
        model: torch.nn.Module | None = None,
    ) -> None:
        device = torch.device(device)  # "cpu", "cuda", "cuda:1" as well as a torch.device
        self.method, self.optimizer, self.schedule = method, optimizer, schedule
        self.base_lr, self.device, self.grad_clip = base_lr, device, grad_clip
        self.model = model if model is not None else method
        self.precision = resolve_precision(precision, device)
        self.autocast = AUTOCAST.get(self.precision)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.memory_format = memory_format(channels_last, spatial_dims)
        self.step = 0  # steps done
        self.skipped_steps = 0  # fp16: steps whose gradients overflowed (the optimizer did not step)
        self.consecutive_skipped = 0
        self.last_skipped = False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the step: the count, the skipped steps, the loss scale."""
        state: dict[str, Any] = {"step": self.step, "skipped_steps": self.skipped_steps}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.skipped_steps = int(state["step"]), int(state.get("skipped_steps", 0))
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    @property
    def lr(self) -> float:
        """The lr of the first group in the last step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_schedules(self) -> None:
        factor = self.schedule.factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * group.get("lr_scale", 1.0) * factor
            start = group.get("weight_decay_start_scale")
            if start is not None:
                cosine = Schedule(self.schedule.total_steps, 0, 1.0 / start).factor(self.step)
                group["weight_decay"] = group["base_weight_decay"] * cosine * start

    def __call__(self, x: torch.Tensor, index: torch.Tensor, views: ViewMaker) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step on the batch ``x`` (its instance indices ``index``); returns the detached loss and the method's metrics."""
        self.set_schedules()
        x, index = x.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
        made = [v.contiguous(memory_format=self.memory_format) for v in views(x)]
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            loss, metrics = self.model(made, index)
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        all_reduce_row_gradients(self.optimizer)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip:
            clip_grad_norm(self.method.parameters(), self.grad_clip)
        if self.scaler is not None:
            scale = self.scaler.get_scale()  # a host sync, fp16 only: did this step overflow?
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.last_skipped = self.scaler.get_scale() < scale
            self.skipped_steps += int(self.last_skipped)
            self.consecutive_skipped = self.consecutive_skipped + 1 if self.last_skipped else 0
        else:
            self.optimizer.step()
        self.step += 1
        self.method.after_optimizer_step(self.step, self.schedule.total_steps)
        return loss.detach(), metrics
