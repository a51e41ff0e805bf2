"""Shared fixtures: tiny in-memory datasets and a helper that trains any method a few steps."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from icone.config import build_config
from icone.data.arrays import Dataset, Split
from icone.train.setup import resolve_config
from icone.train.trainer import Trainer

torch.set_num_threads(1)  # tiny tensors: one thread is faster, and CI shares 2 cores


def tiny_dataset(spatial_dims: int = 2, n: int = 32, size: int | None = None, classes: int = 4, channels: int = 1, seed: int = 0) -> Dataset:
    """Random samples whose class shifts the mean of one quadrant/octant (learnable, not trivial)."""
    size = size or (16 if spatial_dims == 2 else 12)
    rng = np.random.default_rng(seed)
    shape = (n, channels) + (size,) * spatial_dims
    samples = rng.normal(0, 1, shape).astype(np.float32)
    labels = np.arange(n) % classes
    half = size // 2
    for i, label in enumerate(labels):
        region = (i, slice(None)) + tuple(slice(half * ((label >> d) & 1), half * (((label >> d) & 1) + 1)) for d in range(spatial_dims))
        samples[region] += 2.0
    test = Split(samples[: n // 4].copy(), labels[: n // 4])
    return Dataset(name=f"tiny{spatial_dims}d", train=Split(samples, labels), test=test)


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
    import json
    import tempfile

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
    trainer = Trainer(config, dataset, run_dir, progress=False)
    trainer.fit()
    logs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return trainer, [r for r in logs if r["kind"] == "step"]


@pytest.fixture
def tiny2d() -> Dataset:
    return tiny_dataset(2)


@pytest.fixture
def tiny3d() -> Dataset:
    return tiny_dataset(3)


def write_tiny_npz(path: Path, spatial_dims: int = 2, n: int = 48, rgb: bool = False) -> Path:
    """A MedMNIST-layout .npz of uint8 images (N x H x W [x 3]) or volumes (N x D x H x W)."""
    dataset = tiny_dataset(spatial_dims, n=n, channels=3 if rgb else 1)
    def to_uint8(x: np.ndarray) -> np.ndarray:
        x = np.clip((x + 3) / 6 * 255, 0, 255).astype(np.uint8)
        return np.moveaxis(x, 1, -1) if rgb else x[:, 0]
    np.savez(
        path,
        train_images=to_uint8(dataset.train.samples),
        train_labels=dataset.train.labels[:, None],
        test_images=to_uint8(dataset.test.samples),
        test_labels=dataset.test.labels[:, None],
    )
    return path


@pytest.fixture
def npz2d(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny2d.npz", 2)


@pytest.fixture
def npz3d(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny3d.npz", 3)


FAST = ["--backbone", "smallcnn", "model.width=8", "train.monitor_samples=16", "--no-progress"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run ``icone ARGS`` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from icone.cli import main

    argv = sys.argv
    sys.argv = ["icone", *[str(a) for a in args]]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        sys.argv = argv
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


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_pytest(tmp_path_factory):
    """Run folders that tests make with tempfile go under pytest's own (self-cleaning) temp tree."""
    import tempfile

    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
    yield
    tempfile.tempdir = previous


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
