"""Writing files so that a crash, a full disk or a kill never leaves a partial file behind.

Every output icone writes (checkpoints, exports, embeddings, ``eval.json``, plots, tables) goes to
a temporary file beside its target, is flushed to disk, and is then renamed over the target in one
step. A temporary file that a killed process left behind is named ``.NAME.*.tmp`` and is removed
by :func:`remove_orphans` the next time a run starts in that folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a binary handle of a temporary file, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def remove_orphans(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files that an interrupted atomic write left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX)]
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans
