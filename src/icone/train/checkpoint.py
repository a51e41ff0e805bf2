"""Checkpoints: written atomically (temp file + rename) so a crash never leaves a broken file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from icone.errors import UserError


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict, or a clear error when the file is missing or not one of ours."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise UserError(f"'{path}' has no checkpoints/last.pt; give a run folder that has trained at least one epoch, or a .pt file")
        path = candidate
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; give a run folder or a .pt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise UserError(f"cannot read checkpoint '{path}' ({type(err).__name__}); it is corrupt or not a PyTorch file") from None
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise UserError(f"'{path}' is not an icone checkpoint or export (no config inside)")
    checkpoint["path"] = str(path)
    return checkpoint
