"""Checkpoints: written atomically (temp file + rename) so a crash never leaves a broken file;
read with ``weights_only=True``, so opening a file someone sent can never run code in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from icone.errors import UserError
from icone.files import atomic_write
from icone.run_folder import settle_before_use
from icone.weights import load_torch_file


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict, or a clear error when the file is missing or not one of ours."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        settle_before_use(path)  # a run an interrupted --overwrite hid is put back first
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise UserError(
                f"'{path}' has no checkpoints/last.pt; give a run folder that has trained at least one epoch, or a .pt file"
            )
        path = candidate
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; give a run folder or a .pt file")
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise UserError(f"'{path}' is not an icone checkpoint or export (no config inside)")
    checkpoint["path"] = str(path)
    return checkpoint


def rng_state() -> dict[str, Any]:
    """Every random generator a step draws from, as tensors and plain values (``weights_only`` can read them back)."""
    import random

    import numpy as np

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back the generators :func:`rng_state` captured."""
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
