"""Checkpoints: written atomically (temp file + rename) so a crash never leaves a broken file;
read with ``weights_only=True``, so opening a file someone sent can never run code in it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from icone.errors import UserError
from icone.files import atomic_write
from icone.weights import load_torch_file


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict, or a clear error when the file is missing or not one of ours."""
    path = Path(path)
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
