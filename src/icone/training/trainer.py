"""The training loop: epochs, the collapse monitor, logs, checkpoints and progress, around :class:`TrainStep`.

It consumes a :class:`~icone.training.setup.Setup` (built by :func:`icone.build.setup`) and knows nothing
about a particular method: it meets methods only through the contract in :mod:`icone.methods.base`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icone import distributed
from icone.errors import TrainingDiverged
from icone.evaluate.embeddings import embed_samples
from icone.methods import HEALTH_PREFIX, Method
from icone.runtime import peak_memory, seed_everything
from icone.stats import embedding_std, rankme
from icone.training.checkpoint import atomic_save, restore_rng_state, rng_state
from icone.training.logs import MetricsLog
from icone.training.setup import Setup
from icone.views import ViewMaker
from icone.weights import EVALUATED

MAX_SKIPPED = 100  # fp16: more overflowing steps in a row than this is a divergence, not a loss scale to find


def module_path(root: torch.nn.Module, module: torch.nn.Module) -> str:
    """The dotted name of ``module`` inside ``root`` (e.g. ``teacher.backbone``)."""
    return next(name for name, m in root.named_modules() if m is module)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@dataclass
class TrainResult:
    run_dir: Path
    method: Method
    epochs_done: int
    steps_done: int


class Trainer:
    """Runs ``setup``'s loop into ``run_dir`` (which the caller has prepared), writing records to ``log``.

    ``on_checkpoint`` is called after every checkpoint written (main process).
    """

    def __init__(
        self, setup: Setup, run_dir: Path, log: MetricsLog, progress: bool = True,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.setup, self.run_dir, self.log, self.progress = setup, Path(run_dir), log, progress
        self.method, self.optimizer, self.train_step = setup.method, setup.optimizer, setup.train_step
        self.model, self.device, self.plan = setup.model, setup.runtime.device, setup.plan
        # not a terminal (a SLURM log, `| tee`): one plain line per epoch instead of the progress bar
        self.plain = progress and distributed.is_main_process() and not sys.stdout.isatty()
        self.on_checkpoint = on_checkpoint
        if distributed.is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.train_set = setup.loaders.train_set
        self.steps_per_epoch = setup.plan.steps_per_epoch
        self.epoch = 0
        self.saved_epoch: int | None = None  # the epoch of the last checkpoint written or restored
        self.saved_at = time.monotonic()
        self.resume_batch, self.resume_rng = 0, None  # where a mid-epoch checkpoint stopped
        self.monitor_rows = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(0))[
            : setup.plan.monitor_samples
        ]

    @property
    def config(self) -> Any:
        """The resolved config the setup was built from (for the caller; the loop reads ``setup``'s values)."""
        return self.setup.config

    @property
    def step(self) -> int:
        return self.train_step.step

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    def views(self, epoch: int) -> ViewMaker:
        """The view maker of ``epoch`` (the method's schedule applied)."""
        return self.setup.views[min(epoch, len(self.setup.views) - 1)]

    # ---- checkpoints -----------------------------------------------------------------------

    def state(self, batch: int = 0) -> dict[str, Any]:
        """A checkpoint: after ``epoch`` whole epochs and ``batch`` batches of the next one (with the RNG state there)."""
        state = {
            "config": dataclasses.asdict(self.setup.config),
            "method": self.method.name,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch,
            "train_step": self.train_step.state_dict(),
            "num_instances": len(self.train_set),
            "world_size": distributed.world_size(),  # the batch size is per process: resume with as many
            EVALUATED: module_path(self.method, self.method.evaluation_backbone()),
        }
        if batch:
            state["rng"] = rng_state()
        return state

    def save(self, batch: int = 0) -> None:
        """``checkpoints/last.pt`` (and ``epoch_K.pt`` every ``save_every`` epochs); ``batch``: mid-epoch."""
        self.saved_epoch = self.epoch
        self.saved_at = time.monotonic()
        if not distributed.is_main_process():
            return
        state = self.state(batch)
        atomic_save(state, self.run_dir / "checkpoints" / "last.pt")
        every = self.plan.save_every
        if every and not batch and self.epoch % every == 0:
            atomic_save(state, self.run_dir / "checkpoints" / f"epoch_{self.epoch}.pt")
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save` (compatibility checked by the caller), mid-epoch included."""
        self.method.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.train_step.load_state_dict(checkpoint.get("train_step", {"step": checkpoint["step"]}))
        self.epoch = int(checkpoint["epoch"])
        self.resume_batch, self.resume_rng = int(checkpoint.get("batch", 0)), checkpoint.get("rng")
        self.saved_epoch = self.epoch
        self.log.resume_at(self.epoch, self.step)

    def _step_checkpoint_due(self) -> bool:
        plan = self.plan
        if plan.checkpoint_every_steps and self.step % plan.checkpoint_every_steps == 0:
            return True
        minutes = plan.checkpoint_every_minutes
        return bool(minutes) and time.monotonic() - self.saved_at >= 60 * minutes

    # ---- the loop --------------------------------------------------------------------------

    def _check_finite(self, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss)):
            return
        step = self.train_step
        if step.scaler is not None and step.last_skipped and step.consecutive_skipped < MAX_SKIPPED:
            return  # fp16: an overflowing step is skipped by the loss scaler, not a divergence
        lower = f"optim.lr={float(self.setup.schedules.lr.max()) / 3:.3g}"
        if self.saved_epoch is None:
            advice = f"no checkpoint had been written, so nothing is kept; run again with a lower rate ({lower}) or a larger batch"
        else:
            advice = (
                f"the checkpoint of epoch {self.saved_epoch} is kept: continue it with a lower rate, "
                f"'{distributed.resume_command(self.run_dir, ' ' + lower)}', or start again with a larger batch"
            )
        raise TrainingDiverged(f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {self.step}; {advice}")

    def _end_epoch(self, last_loss: torch.Tensor, started: float, skipped: int, batches: int) -> None:
        """The epoch's record (loss, time, memory, collapse monitor), its plain line, the checkpoint."""
        last_loss = distributed.all_reduce_mean(last_loss)
        self._check_finite(last_loss)
        self.epoch += 1
        seconds = time.perf_counter() - started
        record = {
            "kind": "epoch",
            "epoch": self.epoch,
            "step": self.step,
            "loss": float(last_loss),
            "epoch_seconds": seconds,
        }
        if self.train_step.scaler is not None:
            record["skipped_steps"] = self.train_step.skipped_steps - skipped
        record.update({**peak_memory(self.device), **self.monitor()})
        self.log.write(record)
        if self.plain:
            rate = batches * self.plan.batch_size * distributed.world_size() / max(seconds, 1e-9)
            print(epoch_line(record, self.plan.epochs, self.train_step.lr, rate), flush=True)
        self.save()

    @torch.no_grad()
    def monitor(self) -> dict[str, float]:
        """Collapse monitor on a fixed subset: RankMe and per-dimension std of normalised features,
        and the method's own health (on the main process, which writes the log; nothing elsewhere)."""
        health = {
            f"{HEALTH_PREFIX}{k}": v for k, v in self.method.epoch_metrics().items()
        }  # every process: it may reset state
        if not distributed.is_main_process():
            return {}
        features = embed_samples(self.method.evaluation_backbone(), self.train_set.rows(self.monitor_rows), self.device)
        return {"monitor_rankme": rankme(features), "monitor_std": embedding_std(features), **health}

    def _epoch_loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """This epoch's batches, from where a mid-epoch checkpoint stopped; its RNG state put back after
        the loader has drawn its worker seed, so the steps see exactly what they would have seen."""
        loader = iter(self.setup.loaders.epoch(self.epoch, start_batch=self.resume_batch))
        if self.resume_rng is not None:
            restore_rng_state(self.resume_rng)
        self.resume_batch, self.resume_rng = 0, None
        return loader

    def _log_step(self, loss: torch.Tensor, metrics: dict[str, Any], progress: Any, task: Any) -> torch.Tensor:
        """Every ``log_every`` steps: the loss of all processes (they stop together on NaN), a metric line."""
        loss = distributed.all_reduce_mean(loss)
        self._check_finite(loss)
        record = {
            "kind": "step",
            "epoch": self.epoch + 1,
            "step": self.step,
            "loss": float(loss),
            "lr": self.train_step.lr,
        }
        self.log.write({**record, **_scalars(metrics)})
        progress.update(task, description=f"{self._title()} loss {float(loss):.4f}")
        return loss

    def _title(self) -> str:
        return f"{self.method.name} epoch {self.epoch + 1}/{self.plan.epochs}"

    def _run_epoch(self, progress: Any, task: Any) -> None:
        """One epoch (or its rest, after a mid-epoch checkpoint): steps, step logs and checkpoints, the epoch's record."""
        # augmentations differ between processes (rank 0 draws what a single process draws)
        seed_everything(self.setup.runtime.seed * 1_000_003 + self.epoch + 7_919 * distributed.rank())
        views = self.views(self.epoch)
        self.model.train()
        started, skipped = time.perf_counter(), self.train_step.skipped_steps
        last_loss = torch.zeros(())
        batch = first = self.resume_batch
        for x, index, _ in self._epoch_loader():
            last_loss, metrics = self.train_step(x, index, views)
            batch += 1
            if self.step % self.plan.log_every == 0:
                last_loss = self._log_step(last_loss, metrics, progress, task)
            progress.advance(task)
            if batch < self.steps_per_epoch and self._step_checkpoint_due():
                self.save(batch)
        self._end_epoch(last_loss, started, skipped, batch - first)

    def fit(self, until_epoch: int | None = None) -> TrainResult:
        """Train to the plan's epochs (or stop after ``until_epoch``, as an interruption would)."""
        epochs = self.plan.epochs
        last_epoch = epochs if until_epoch is None else min(until_epoch, epochs)
        if self.step == 0:
            self.method.initialize(self.setup.loaders.plain())
            self.log.write({"kind": "epoch", "epoch": 0, "step": 0, **self.monitor()})
        progress = _progress(self.progress and distributed.is_main_process() and not self.plain)
        with progress:
            task = progress.add_task(self._title(), total=self.total_steps, completed=self.step)
            while self.epoch < last_epoch:
                self._run_epoch(progress, task)
        return TrainResult(self.run_dir, self.method, self.epoch, self.step)


def epoch_line(record: dict[str, Any], epochs: int, lr: float, rate: float) -> str:
    """One plain line for an epoch: loss, lr, the monitor's RankMe, samples per second, time left."""
    left = (epochs - record["epoch"]) * record["epoch_seconds"]
    eta = f"{int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
    rank = record.get("monitor_rankme")
    return (
        f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.4f}  lr {lr:.3g}  "
        + (f"monitor RankMe {rank:.1f}  " if rank is not None else "")
        + f"{rate:.1f} samples/s  ETA {eta}"
    )


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
