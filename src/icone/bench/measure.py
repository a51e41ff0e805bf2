"""Measuring: peak memory, the machine, wall times of calls, and the training log of a run folder."""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from icone.evaluate.plots import read_metrics


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block: CUDA max allocated on a GPU; on a CPU the growth of the process's
    resident set over its value at the start (sampled every 20 ms from /proc; ru_maxrss elsewhere)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.kind = "cuda_max_allocated" if self.cuda else "cpu_rss_growth"
        self.peak_bytes: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start = rss_bytes()
        self._max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._peak = self._start or 0
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, rss_bytes() or 0)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._start is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(0, max(self._peak, rss_bytes() or 0) - self._start)
        else:  # ru_maxrss: KiB on Linux, bytes on macOS; only grows, so later cells may read 0
            unit = 1 if platform.system() == "Darwin" else 1024
            self.peak_bytes = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._max_rss) * unit


def training_log(run_dir: Path) -> tuple[int | None, int | None, float | None]:
    """(epochs, steps, seconds in the training loop) from ``metrics.jsonl``, robust to resumes."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None, None, None
    epochs: dict[int, dict] = {}
    for record in read_metrics(path):
        if record.get("kind") == "epoch" and record.get("epoch", 0) > 0:
            epochs[int(record["epoch"])] = record
    if not epochs:
        return 0, 0, 0.0
    return (
        max(epochs),
        max(int(r["step"]) for r in epochs.values()),
        sum(float(r.get("epoch_seconds", 0.0)) for r in epochs.values()),
    )


def forward_passes(run_dir: Path) -> int | None:
    """Backbone forward passes a finished run used for training: views per sample x samples seen
    (steps x batch; one process, as bench cells run), from ``config.yaml`` and ``metrics.jsonl`` (a local crop counts as a view)."""
    import yaml

    path = run_dir / "config.yaml"
    steps = training_log(run_dir)[1]
    if not path.is_file() or steps is None:
        return None
    config = yaml.safe_load(path.read_text())
    views = int(config["views"]["global_crops"]) + int(config["views"]["local_crops"] or 0)
    return views * steps * int(config["train"]["batch_size"])


def environment_of(device: torch.device) -> dict[str, Any]:
    """Date, platform, CPU, torch version and threads, and the training device."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(device: torch.device, call: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones (synchronised on CUDA)."""
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def release_memory(device: torch.device) -> None:
    """Give freed memory back (GC, the CUDA cache, glibc's heap) so the next peak starts low."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def describe_device(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3 (cuda:0)`` or ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
