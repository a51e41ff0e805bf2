"""The training loop: epochs, the collapse monitor, logs, checkpoints and progress, around :class:`TrainStep`.

It receives a built method and a view factory and knows nothing about a particular method: it
meets methods only through the contract in :mod:`icone.methods.base`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from icone import distributed
from icone.config import Config, save_config
from icone.data import Dataset, IndexedDataset
from icone.errors import TrainingDiverged
from icone.evaluate.embeddings import embed_samples
from icone.methods import HEALTH_PREFIX, Method
from icone.nets import set_activation_checkpointing
from icone.runtime import memory_format, peak_memory, seed_everything
from icone.stats import embedding_std, rankme
from icone.training.checkpoint import atomic_save, restore_rng_state, rng_state
from icone.training.loader import Revisits, train_loader
from icone.training.logs import MetricsLog
from icone.training.optim import build_optimizer, row_sparse_parameter_names
from icone.training.step import Schedule, TrainStep
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
    """Trains ``method`` (built for ``config`` and ``dataset``, on ``device``) into ``run_dir`` (which the caller has prepared).

    ``views(epoch)`` gives the view maker of an epoch (the method's schedules applied).
    """

    def __init__(
        self,
        config: Config,
        dataset: Dataset,
        run_dir: Path,
        method: Method,
        views: Callable[[int], ViewMaker],
        device: torch.device,
        progress: bool = True,
        on_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.dataset, self.run_dir, self.views = config, dataset, Path(run_dir), views
        self.device, self.progress = device, progress
        # not a terminal (a SLURM log, `| tee`): one plain line per epoch instead of the progress bar
        self.plain = progress and distributed.is_main_process() and not sys.stdout.isatty()
        self.on_checkpoint = on_checkpoint  # called after every checkpoint written (main process)
        if distributed.is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        method = method.to(
            device, memory_format=memory_format(config.train.channels_last, int(config.model.spatial_dims))
        )
        self.method = distributed.sync_batch_norm(method, device)  # before the optimizer and DDP see it
        set_activation_checkpointing(self.method, config.train.activation_checkpointing)
        self.optimizer = build_optimizer(self.method, config)
        self.train_set = IndexedDataset(dataset.train)
        per_epoch = config.data.patches_per_epoch or len(self.train_set)
        self.steps_per_epoch = per_epoch // (config.train.batch_size * distributed.world_size())
        total_steps = self.steps_per_epoch * config.train.epochs
        schedule = Schedule(
            total_steps, int(round(config.optim.warmup_epochs * self.steps_per_epoch)), config.optim.min_lr_ratio
        )
        model: torch.nn.Module = self.method
        if distributed.is_distributed():
            # row-sparse tables are kept identical by their optimizer, which exchanges only the touched rows
            distributed.ddp_ignore(self.method, row_sparse_parameter_names(self.method, self.optimizer))
            model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.model = model
        train = config.train
        self.train_step = TrainStep(
            self.method,
            self.optimizer,
            schedule,
            float(config.optim.lr),
            device,
            grad_clip=config.optim.grad_clip,
            precision=train.precision,
            channels_last=train.channels_last,
            spatial_dims=int(config.model.spatial_dims),
            model=model,
        )
        self.epoch = 0
        self.saved_epoch: int | None = None  # the epoch of the last checkpoint written or restored
        self.saved_at = time.monotonic()
        self.resume_batch, self.resume_rng = 0, None  # where a mid-epoch checkpoint stopped
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", train.logger, config.to_dict())
        self.monitor_rows = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(0))[
            : train.monitor_samples
        ]

    @property
    def step(self) -> int:
        return self.train_step.step

    @property
    def total_steps(self) -> int:
        return self.train_step.schedule.total_steps

    # ---- checkpoints -----------------------------------------------------------------------

    def state(self, batch: int = 0) -> dict[str, Any]:
        """A checkpoint: after ``epoch`` whole epochs and ``batch`` batches of the next one (with the RNG state there)."""
        state = {
            "config": self.config.to_dict(),
            "method": self.config.method,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch,
            "train_step": self.train_step.state_dict(),
            "num_instances": len(self.train_set),
            "world_size": distributed.world_size(),  # train.batch_size is per process: resume with as many
            EVALUATED: module_path(self.method, self.method.evaluation_backbone()),
        }
        if batch:
            state["rng"] = rng_state()
        return state

    def save(self, batch: int = 0) -> None:
        """``checkpoints/last.pt`` (and ``epoch_K.pt`` every ``train.save_every`` epochs); ``batch``: mid-epoch."""
        self.saved_epoch = self.epoch
        self.saved_at = time.monotonic()
        if not distributed.is_main_process():
            return
        state = self.state(batch)
        atomic_save(state, self.run_dir / "checkpoints" / "last.pt")
        every = self.config.train.save_every
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
        train = self.config.train
        if train.checkpoint_every_steps and self.step % train.checkpoint_every_steps == 0:
            return True
        return (
            bool(train.checkpoint_every_minutes)
            and time.monotonic() - self.saved_at >= 60 * train.checkpoint_every_minutes
        )

    # ---- the loop --------------------------------------------------------------------------

    def _plain_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, index, _ in train_loader(self.train_set, 256, self.config.train.seed, 0, shuffle=False):
            yield x.to(self.device), index.to(self.device)

    def _check_finite(self, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss)):
            return
        step = self.train_step
        if step.scaler is not None and step.last_skipped and step.consecutive_skipped < MAX_SKIPPED:
            return  # fp16: an overflowing step is skipped by the loss scaler, not a divergence
        lower = f"optim.lr={self.config.optim.lr / 3:.3g}"
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
            samples = batches * self.config.train.batch_size * distributed.world_size()
            print(
                epoch_line(record, self.config.train.epochs, self.train_step.lr, samples / max(seconds, 1e-9)),
                flush=True,
            )
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
        config, start = self.config, self.resume_batch
        self.train_set.set_epoch(self.epoch)
        loader = iter(
            train_loader(
                self.train_set,
                config.train.batch_size,
                config.train.seed,
                self.epoch,
                config.data.num_workers,
                self.device,
                start_batch=start,
                num_samples=config.data.patches_per_epoch,
                revisits=revisits(config.data),
            )
        )
        if self.resume_rng is not None:
            restore_rng_state(self.resume_rng)
        self.resume_batch, self.resume_rng = 0, None
        return loader

    def fit(self, until_epoch: int | None = None) -> TrainResult:
        """Train to ``train.epochs`` (or stop after ``until_epoch``, as an interruption would)."""
        config = self.config
        last_epoch = config.train.epochs if until_epoch is None else min(until_epoch, config.train.epochs)
        if distributed.is_main_process():  # on --resume too: the options given again are the run's now
            save_config(config, self.run_dir / "config.yaml")
        if self.step == 0:
            self.method.initialize(self._plain_batches())
            self.log.write({"kind": "epoch", "epoch": 0, "step": 0, **self.monitor()})
        progress = _progress(self.progress and distributed.is_main_process() and not self.plain)
        with progress:
            task = progress.add_task(
                f"{config.method} epoch {self.epoch + 1}/{config.train.epochs}",
                total=self.total_steps,
                completed=self.step,
            )
            while self.epoch < last_epoch:
                # augmentations differ between processes (rank 0 draws what a single process draws)
                seed_everything(config.train.seed * 1_000_003 + self.epoch + 7_919 * distributed.rank())
                views = self.views(self.epoch)
                self.model.train()
                started, skipped = time.perf_counter(), self.train_step.skipped_steps
                last_loss = torch.zeros(())
                batch = first = self.resume_batch
                for x, index, _ in self._epoch_loader():
                    last_loss, metrics = self.train_step(x, index, views)
                    batch += 1
                    if self.step % config.train.log_every == 0:
                        last_loss = distributed.all_reduce_mean(last_loss)  # every process stops together on NaN
                        self._check_finite(last_loss)
                        record = {
                            "kind": "step",
                            "epoch": self.epoch + 1,
                            "step": self.step,
                            "loss": float(last_loss),
                            "lr": self.train_step.lr,
                        }
                        self.log.write({**record, **_scalars(metrics)})
                        progress.update(
                            task,
                            description=f"{config.method} epoch {self.epoch + 1}/{config.train.epochs} loss {float(last_loss):.4f}",
                        )
                    progress.advance(task)
                    if batch < self.steps_per_epoch and self._step_checkpoint_due():
                        self.save(batch)
                self._end_epoch(last_loss, started, skipped, batch - first)
        return TrainResult(self.run_dir, self.method, self.epoch, self.step)


def revisits(data: Any) -> Revisits | None:
    """The sliding windows of ``data.order=window`` (resolved sizes), else ``None``."""
    if data.order != "window":
        return None
    return Revisits(int(data.window_size), int(data.window_stride))


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
