"""Errors meant for people: the CLI prints each as one line and exits with its code."""

from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """Bad input or a request we refuse; the message says what is wrong and what to do (exit code 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says what was kept (exit code 1)."""


class Interrupted(Exception):
    """Ctrl-C during a run; the message names the last checkpoint and how to continue (exit code 130)."""


class OutOfMemory(RuntimeError):
    """Memory ran out during a run; the message names what to make smaller (exit code 1)."""


def is_out_of_memory(err: BaseException) -> bool:
    """Python's ``MemoryError``, CUDA's ``OutOfMemoryError``, or torch's CPU allocator giving up."""
    text = str(err).lower()
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or "can't allocate memory" in text
        or "cannot allocate memory" in text
    )


def import_optional(module: str, missing: str) -> Any:
    """Import an optional package, or raise ``missing`` (one line naming the extra that installs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(missing) from None
