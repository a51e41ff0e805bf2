"""Writing files so that a crash, a full disk or a kill never leaves a partial file behind.

Every output icone writes (checkpoints, exports, embeddings, ``eval.json``, plots, tables) goes to
a temporary file beside its target, is flushed to disk, and is then renamed over the target in one
step. A temporary file that a killed process left behind is named ``.NAME.*.tmp`` and is removed
by :func:`remove_orphans` the next time a run starts in that folder.

A full disk (``ENOSPC``, or ``EDQUOT`` for a quota) while any writer writes is one line naming the
file, whatever the writer turned the error into (torch reports it as a ``RuntimeError``): writers
get a handle that remembers the first failed write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from icone.errors import UserError

TEMP_SUFFIX = ".tmp"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
WRITE_LISTENERS: list[Callable[[Path], None]] = []  # called with every file written (run folders list their own)


def disk_full(err: BaseException, path: str | Path) -> UserError | None:
    """The one line for a full disk (or quota) while writing ``path``; ``None`` for any other error."""
    text = str(err)  # libraries writing in C (pyarrow, h5py) keep only the system's words
    if isinstance(err, OSError) and (err.errno in DISK_FULL or "No space left" in text or "quota exceeded" in text):
        return UserError(f"the disk is full while writing '{path}'; free some space or choose another --out")
    return None


class RecordingHandle:
    """A binary handle that remembers the first ``OSError`` a write raised (serialisers that write through
    it, like ``torch.save``, report it as something else); everything else is the handle's."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed over ``path`` when the block ends without error.

    The file gets the permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes it
    0600); on any error, or an interrupt, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise disk_full(err, path) or err from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        full = disk_full(err, path)
        if full is not None:
            raise full from None
        raise
    for listener in list(WRITE_LISTENERS):
        listener(path)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a binary handle of a temporary file, then rename it to ``path``; a failed
    write of the handle is raised as itself, whatever ``write`` made of it."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        recording = RecordingHandle(handle)
        try:
            write(recording)
        except Exception:
            if recording.error is not None:
                raise recording.error from None
            raise
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def json_text(value: Any, indent: int | None = 2) -> str:
    """``value`` as strict JSON: a NaN or infinite number (which ``json.dumps`` writes as a bare ``NaN``, not
    JSON) becomes ``null``."""

    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {k: finite(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(v) for v in item]
        return item

    return json.dumps(finite(value), indent=indent, allow_nan=False)


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files that an interrupted atomic write left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans
