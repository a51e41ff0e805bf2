"""Where and how computation runs: the device, bf16 autocast, the memory format, the seeds; resolved once
into a :class:`Runtime` (by :func:`icone.build.resolve`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from icone.errors import UserError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; one line if unavailable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 natively (CUDA compute capability 8.0 and later: A100, H100, RTX 30xx...)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 where the GPU has it natively, fp16 (with loss scaling) on older GPUs, fp32 on a CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if native_bf16(device) else "fp16"


def memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """``train.channels_last``: channels-last (2D) or channels-last-3d (3D); else contiguous."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if int(spatial_dims) == 3 else torch.channels_last


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes, resolved: the device (this process's under ``torchrun``), the precision
    (``fp32``, ``bf16`` or ``fp16``), the memory format of the backbone and views, and the seed."""

    device: torch.device
    precision: str = "fp32"
    memory_format: torch.memory_format = torch.contiguous_format
    seed: int = 0

    @classmethod
    def resolve(
        cls, device: str = "auto", precision: str = "auto", channels_last: bool = False, spatial_dims: int = 2,
        seed: int = 0,
    ) -> Runtime:  # fmt: skip
        """The one place where ``train.device``, ``train.precision`` and ``train.channels_last`` are resolved."""
        from icone.distributed import process_device

        picked = process_device(pick_device(device))
        return cls(picked, resolve_precision(precision, picked), memory_format(channels_last, spatial_dims), seed)


def peak_memory(device: torch.device, reset: bool = True) -> dict[str, float]:
    """Peak memory since the last call: ``peak_memory_mib`` allocated on a CUDA device (then reset),
    and ``peak_rss_mib``, the process's largest resident set so far (CPU memory)."""
    import resource
    import sys

    out: dict[str, float] = {}
    if device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out["peak_rss_mib"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    return out
