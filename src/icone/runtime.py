"""Where and how computation runs: the device, bf16 autocast, the memory format, the seeds."""

from __future__ import annotations

import random

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


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: ``train.precision=bf16``, or ``auto`` on a CUDA device."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def memory_format(channels_last: bool, spatial_dims: int) -> torch.memory_format:
    """``train.channels_last``: channels-last (2D) or channels-last-3d (3D); else contiguous."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last_3d if int(spatial_dims) == 3 else torch.channels_last
