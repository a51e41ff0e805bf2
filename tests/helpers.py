"""Helpers shared by the tests: tiny in-memory datasets, training a method a few steps, the CLI in-process,
files in the layouts icone reads, and a group of CPU processes."""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icone.build import build_method, resolve_config, view_maker
from icone.config import Config, ModelConfig, build_config
from icone.data.arrays import Dataset, Split
from icone.nets import build_backbone
from icone.runtime import pick_device
from icone.training.trainer import Trainer


def tiny_dataset(
    spatial_dims: int = 2, n: int = 32, size: int | None = None, classes: int = 4, channels: int = 1, seed: int = 0
) -> Dataset:
    """Random samples whose class shifts the mean of one quadrant/octant (learnable, not trivial)."""
    size = size or (16 if spatial_dims == 2 else 12)
    rng = np.random.default_rng(seed)
    shape = (n, channels) + (size,) * spatial_dims
    samples = rng.normal(0, 1, shape).astype(np.float32)
    labels = np.arange(n) % classes
    half = size // 2
    for i, label in enumerate(labels):
        region = (i, slice(None)) + tuple(
            slice(half * ((label >> d) & 1), half * (((label >> d) & 1) + 1)) for d in range(spatial_dims)
        )
        samples[region] += 2.0
    test = Split(samples[: n // 4].copy(), labels[: n // 4])
    return Dataset(name=f"tiny{spatial_dims}d", train=Split(samples, labels), test=test)


def small_backbone(
    name: str = "smallcnn", dims: int = 2, norm: str = "group", width: int = 8, channels: int = 1
) -> torch.nn.Module:
    """A backbone as ``model.*`` describes it, for tests that need one without a method."""
    return build_backbone(ModelConfig(backbone=name, spatial_dims=dims, in_channels=channels, norm=norm, width=width))


def make_trainer(config: Config, dataset: Dataset, run_dir: Path) -> Trainer:
    """A trainer for a resolved config, its method built as ``icone train`` builds it."""
    method = build_method(config, num_instances=len(dataset.train))
    return Trainer(
        config,
        dataset,
        run_dir,
        method,
        lambda epoch: view_maker(config, method, epoch),
        pick_device(config.train.device),
        progress=False,
    )


def train_steps(
    method: str,
    spatial_dims: int = 2,
    batch_size: int = 4,
    epochs: int = 1,
    run_dir: Path | None = None,
    overrides: list[str] | None = None,
    dataset: Dataset | None = None,
) -> tuple[Trainer, list[dict[str, Any]]]:
    """Train ``method`` on a tiny dataset with the small CNN; returns the trainer and its step logs."""
    dataset = dataset or tiny_dataset(spatial_dims)
    items = [
        f"method={method}",
        "model.backbone=smallcnn",
        "model.width=8",
        f"train.batch_size={batch_size}",
        f"train.epochs={epochs}",
        "train.log_every=1",
        "train.monitor_samples=16",
        "optim.warmup_epochs=0",
    ] + list(overrides or [])
    config = resolve_config(build_config(None, items), dataset)
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="icone-test-"))
    trainer = make_trainer(config, dataset, run_dir)
    trainer.fit()
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, [r for r in logs if r["kind"] == "step"]


def write_tiny_npz(path: Path, spatial_dims: int = 2, n: int = 48, rgb: bool = False) -> Path:
    """A MedMNIST-layout .npz of uint8 images (N x H x W [x 3]) or volumes (N x D x H x W)."""
    dataset = tiny_dataset(spatial_dims, n=n, channels=3 if rgb else 1)

    def to_uint8(x: np.ndarray) -> np.ndarray:
        x = np.clip((x + 3) / 6 * 255, 0, 255).astype(np.uint8)
        return np.moveaxis(x, 1, -1) if rgb else x[:, 0]

    np.savez(
        path,
        train_images=to_uint8(np.asarray(dataset.train.samples)),
        train_labels=dataset.train.labels[:, None],
        test_images=to_uint8(np.asarray(dataset.test.samples)),
        test_labels=dataset.test.labels[:, None],
    )
    return path


FAST = ["--backbone", "smallcnn", "model.width=8", "train.monitor_samples=16", "--no-progress"]


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    """Run ``icone ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from icone.cli import run

    code = run([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_error(capsys, args: list, pattern: str, code: int = 2) -> str:
    """``icone ARGS`` fails with one line on stderr matching ``pattern``, exit code ``code``, no traceback."""
    import re

    got, out, err = run_cli(args, capsys)
    assert got == code, (out, err)
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert re.search(pattern, line), line
    return line


def run_on_processes(worker: Callable[..., None], *args: Any, world: int = 2) -> None:
    """Run ``worker(rank, world, *args)`` on ``world`` CPU processes joined in one gloo group."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_gloo_process, args=(world, port, worker, args), nprocs=world, join=True)


def _gloo_process(rank: int, world: int, port: int, worker: Callable[..., None], args: tuple) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        worker(rank, world, *args)
        torch.distributed.barrier()  # nobody leaves the group while another process still talks to it
    finally:
        torch.distributed.destroy_process_group()
