"""The training loop: optimizer, warm-up + cosine schedule, precision, checkpoints, logs, progress.

It knows nothing about a particular method: it meets methods only through the contract in
:mod:`icone.methods.base`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from icone.config import Config, save_config
from icone.data import Dataset, IndexedDataset
from icone.errors import TrainingDiverged
from icone.files import atomic_write_text
from icone.evaluate.embeddings import embed_samples
from icone.evaluate.metrics import embedding_std, rankme
from icone.methods import Method
from icone.train import distributed
from icone.train.checkpoint import atomic_save
from icone.train.optim import all_reduce_row_gradients, build_optimizer, clip_grad_norm, row_sparse_parameter_names
from icone.train.setup import build_method, memory_format, pick_device, seed_everything, uses_bf16, view_spec
from icone.views import ViewMaker


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if distributed.is_main_process():
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def resume_at(self, epoch: int, step: int) -> None:
        """Drop the records a resumed run will write again (after its checkpoint), then mark the resume."""
        if not distributed.is_main_process():
            return
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if int(record.get("step", 0)) <= step:
                    kept.append(line)
        kept.append(json.dumps({"kind": "resume", "epoch": epoch, "step": step, "time": time.time()}))
        atomic_write_text(self.path, "\n".join(kept) + "\n")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


@dataclass
class TrainResult:
    run_dir: Path
    method: Method
    epochs_done: int
    steps_done: int


class Trainer:
    """Trains ``config.method`` on ``dataset`` into ``run_dir`` (which the caller has prepared)."""

    def __init__(
        self, config: Config, dataset: Dataset, run_dir: Path, progress: bool = True, on_checkpoint: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.on_checkpoint = on_checkpoint  # called after every checkpoint written (main process)
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        if distributed.is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.device = distributed.process_device(pick_device(config.train.device))
        distributed.init_from_env(self.device)
        method = build_method(config, num_instances=len(dataset.train)).to(self.device, memory_format=memory_format(config))
        self.method = distributed.sync_batch_norm(method, self.device)  # before the optimizer and DDP see it
        self.optimizer = build_optimizer(self.method, config)
        self.train_set = IndexedDataset(dataset.train)
        world = distributed.world_size()
        self.steps_per_epoch = len(self.train_set) // (config.train.batch_size * world)
        self.total_steps = self.steps_per_epoch * config.train.epochs
        self.warmup_steps = int(round(config.optim.warmup_epochs * self.steps_per_epoch))
        self.epoch, self.step = 0, 0
        self.saved_epoch: int | None = None  # the epoch of the last checkpoint written or restored
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.monitor_rows = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(0))[: config.train.monitor_samples]
        self.use_bf16 = uses_bf16(config, self.device)
        self.memory_format = memory_format(config)
        self.model: torch.nn.Module = self.method
        if distributed.is_distributed():
            # row-sparse tables are kept identical by their optimizer, which exchanges only the touched rows
            distributed.ddp_ignore(self.method, row_sparse_parameter_names(self.method, self.optimizer))
            self.model = torch.nn.parallel.DistributedDataParallel(self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ---- checkpoints -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "method": self.config.method,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "num_instances": len(self.train_set),
            "world_size": distributed.world_size(),  # train.batch_size is per process: resume with as many
        }

    def save(self) -> None:
        self.saved_epoch = self.epoch
        if not distributed.is_main_process():
            return
        state = self.state()
        atomic_save(state, self.run_dir / "checkpoints" / "last.pt")
        every = self.config.train.save_every
        if every and self.epoch % every == 0:
            atomic_save(state, self.run_dir / "checkpoints" / f"epoch_{self.epoch}.pt")
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save` (compatibility checked by the caller)."""
        self.method.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.epoch, self.step = int(checkpoint["epoch"]), int(checkpoint["step"])
        self.saved_epoch = self.epoch
        self.log.resume_at(self.epoch, self.step)

    # ---- the loop --------------------------------------------------------------------------

    def _loader(self, epoch: int, shuffle: bool = True, batch_size: int | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.train.seed * 1_000_003 + epoch)
        if distributed.is_distributed() and shuffle:
            sampler: Any = DistributedSampler(self.train_set, shuffle=True, seed=self.config.train.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_set, generator=generator) if shuffle else None
        return DataLoader(
            self.train_set,
            batch_size=batch_size or self.config.train.batch_size,
            sampler=sampler,
            drop_last=shuffle,
            num_workers=self.config.data.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _plain_batches(self):
        for x, index, _ in self._loader(0, shuffle=False, batch_size=256):
            yield x.to(self.device), index.to(self.device)

    def _set_lr(self) -> None:
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps, self.config.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.optim.lr * group["lr_scale"] * factor
            start = group.get("weight_decay_start_scale")
            if start is not None:  # weight decay from start * wd down to wd by a cosine (ExCB centroids)
                group["weight_decay"] = group["base_weight_decay"] * lr_factor(self.step, self.total_steps, 0, 1.0 / start) * start

    def _train_step(self, maker: ViewMaker, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._set_lr()
        x, index = x.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)
        views = [v.contiguous(memory_format=self.memory_format) for v in maker(x)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss, metrics = self.model(views, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_row_gradients(self.optimizer)
        if self.config.optim.grad_clip:
            clip_grad_norm(self.method.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.method.after_optimizer_step(self.step, self.total_steps)
        return loss.detach(), metrics

    def _check_finite(self, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss)):
            return
        lower = f"optim.lr={self.config.optim.lr / 3:.3g}"
        if self.saved_epoch is None:
            advice = f"no checkpoint had been written, so nothing is kept; run again with a lower rate ({lower}) or a larger batch"
        else:
            advice = (
                f"the checkpoint of epoch {self.saved_epoch} is kept: continue it with a lower rate, "
                f"'icone train --resume --out {self.run_dir} {lower}', or start again with a larger batch"
            )
        raise TrainingDiverged(f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {self.step}; {advice}")

    @torch.no_grad()
    def monitor(self) -> dict[str, float]:
        """Collapse monitor on a fixed subset: RankMe and per-dimension std of normalised features
        (on the main process, which writes the log; nothing elsewhere)."""
        if not distributed.is_main_process():
            return {}
        features = embed_samples(self.method.backbone, self.train_set.samples[self.monitor_rows], self.device)
        return {"monitor_rankme": rankme(features), "monitor_std": embedding_std(features)}

    def fit(self, until_epoch: int | None = None) -> TrainResult:
        """Train to ``train.epochs`` (or stop after ``until_epoch``, as an interruption would)."""
        config = self.config
        last_epoch = config.train.epochs if until_epoch is None else min(until_epoch, config.train.epochs)
        if self.step == 0:
            if distributed.is_main_process():
                save_config(config, self.run_dir / "config.yaml")
            self.method.initialize(self._plain_batches())
            self.log.write({"kind": "epoch", "epoch": 0, "step": 0, **self.monitor(), **self.method.epoch_metrics()})
        base_spec = view_spec(config)
        progress = _progress(self.progress and distributed.is_main_process())
        with progress:
            task = progress.add_task(f"{config.method} epoch {self.epoch + 1}/{config.train.epochs}", total=self.total_steps, completed=self.step)
            while self.epoch < last_epoch:
                # augmentations differ between processes (rank 0 draws what a single process draws)
                seed_everything(config.train.seed * 1_000_003 + self.epoch + 7_919 * distributed.rank())
                maker = ViewMaker(self.method.adjust_views(base_spec, self.epoch, config.train.epochs))
                self.model.train()
                started = time.perf_counter()
                last_loss = torch.zeros(())
                for x, index, _ in self._loader(self.epoch):
                    last_loss, metrics = self._train_step(maker, x, index)
                    if self.step % config.train.log_every == 0:
                        last_loss = distributed.all_reduce_mean(last_loss)  # every process stops together on NaN
                        self._check_finite(last_loss)
                        lr = self.optimizer.param_groups[0]["lr"]
                        self.log.write({"kind": "step", "epoch": self.epoch + 1, "step": self.step, "loss": float(last_loss), "lr": lr, **_scalars(metrics)})
                        progress.update(task, description=f"{config.method} epoch {self.epoch + 1}/{config.train.epochs} loss {float(last_loss):.4f}")
                    progress.advance(task)
                last_loss = distributed.all_reduce_mean(last_loss)
                self._check_finite(last_loss)
                self.epoch += 1
                record = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "loss": float(last_loss), "epoch_seconds": time.perf_counter() - started}
                record.update(self.monitor())
                record.update(self.method.epoch_metrics())
                self.log.write(record)
                self.save()
        return TrainResult(self.run_dir, self.method, self.epoch, self.step)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )
