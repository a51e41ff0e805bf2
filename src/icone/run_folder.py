"""Run folders on disk: icone's marker, a lock while a process writes one, and safe replacement.

- A run folder holds ``.icone-run`` (the marker) from the moment icone makes it; the marker lists
  what the run wrote (every file a run, ``icone evaluate`` or a bench cell writes into it while
  :func:`recording`). ``--overwrite`` replaces only a run folder that holds nothing else: a file
  not on the list (the user's notes, embeddings, a figure in ``plots/``) is named and the folder
  refused. A folder of an older icone (an empty marker, or none) is judged by its names. The data
  source, the current folder and a folder that holds either of them are refused.
- A process that writes a run folder holds ``.lock`` (``flock``; the pid is written into it). A
  second process is refused; a lock whose process died is released by the system and taken over.
- Replacing moves the old run aside (``.NAME.replaced-PID`` beside it) and removes it only once
  the new run has written its first checkpoint; if the new run fails before that, the old run is
  put back. A replacement cut short by a kill is finished or undone the next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from icone import files
from icone.errors import UserError
from icone.files import TEMP_SUFFIX, atomic_write_text, remove_orphans

log = logging.getLogger("icone")

MARKER = ".icone-run"
LOCK = ".lock"
RUN_ENTRIES = {
    MARKER,
    LOCK,
    "config.yaml",
    "metrics.jsonl",
    "checkpoints",
    "backbone.pt",
    "eval.json",
    "plots",
    "bench.json",
}
REPLACED = ".replaced-"
APPENDED = ("metrics.jsonl", "tensorboard", "mlruns")  # written in place (appended, or by a logger): listed whole

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, said once per process
    fcntl = None  # type: ignore[assignment]


def has_contents(path: Path) -> bool:
    """Whether a folder holds anything but icone's marker and lock."""
    return path.is_dir() and any(p.name not in (MARKER, LOCK) for p in path.iterdir())


def is_run_folder(path: Path) -> bool:
    """The marker, or only the entries a run folder holds (and its config or checkpoints)."""
    if not path.is_dir():
        return False
    if (path / MARKER).is_file():
        return True
    names = {p.name for p in path.iterdir()}
    return bool(names) and names <= RUN_ENTRIES and bool(names & {"config.yaml", "checkpoints"})


# ---- what a run wrote: the list in the marker ---------------------------------------------------------

_RECORDING: dict[Path, int] = {}  # folders whose writes this process lists (how many open recordings each)


def written(folder: Path) -> set[str] | None:
    """The paths (relative; a folder stands for all below it) the marker lists; ``None`` without a list."""
    try:
        listed = json.loads((folder / MARKER).read_text()).get("written")
    except (OSError, ValueError, AttributeError):
        return None
    return set(listed) if isinstance(listed, list) else None


def record_written(folder: Path, paths: Iterable[str]) -> None:
    """Add ``paths`` (relative to ``folder``) to the run's list, making the marker if needed; an older
    run's marker (no list) first gets its own entries, by their names."""
    folder = Path(folder)
    known = written(folder)
    start = known if known is not None else set()
    if known is None and folder.is_dir():
        start = {p.name for p in folder.iterdir() if p.name in RUN_ENTRIES | set(APPENDED)}
    new = (start | set(paths)) - {MARKER, LOCK}
    if new != known:
        atomic_write_text(folder / MARKER, json.dumps({"written": sorted(new)}))


@contextlib.contextmanager
def recording(folder: Path) -> Iterator[None]:
    """While open, every file this process writes under ``folder`` (through :mod:`icone.files`) is listed as the run's."""
    key = Path(folder).resolve()
    _RECORDING[key] = _RECORDING.get(key, 0) + 1
    try:
        yield
    finally:
        _RECORDING[key] -= 1
        if not _RECORDING[key]:
            del _RECORDING[key]


def _on_write(path: Path) -> None:
    if path.name == MARKER:
        return
    path = path.resolve()
    for folder in list(_RECORDING):
        if folder in path.parents:
            record_written(folder, [path.relative_to(folder).as_posix()])


files.WRITE_LISTENERS.append(_on_write)


def foreign_entries(path: Path) -> list[str]:
    """What ``path`` holds that its run did not write (relative paths, sorted): by the marker's list, or
    for a folder without one, the top-level names that are not a run's."""
    listed = written(path)
    if listed is None:
        return sorted(p.name for p in path.iterdir() if p.name not in RUN_ENTRIES | set(APPENDED))
    ours = listed | {MARKER, LOCK}
    foreign = []
    for entry in sorted(path.rglob("*")):
        rel = entry.relative_to(path).as_posix()
        parts = rel.split("/")
        if any("/".join(parts[: k + 1]) in ours for k in range(len(parts))) or entry.name.endswith(TEMP_SUFFIX):
            continue
        if entry.is_file() or not any(w.startswith(rel + "/") for w in ours):
            foreign.append(rel)
    return [f for f in foreign if not any(f.startswith(g + "/") for g in foreign)]


def is_inside(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies below it (links resolved)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def check_replaceable(path: Path, protected: Iterable[Path] = ()) -> None:
    """Refuse (one line) to replace ``path`` unless it is a run folder holding nothing that is protected."""
    for keep in [Path.cwd(), Path.home(), *protected]:
        if is_inside(keep, path):
            what = "the current folder" if keep.resolve() == Path.cwd().resolve() else f"'{keep}'"
            raise UserError(f"--overwrite would delete '{path}', which holds {what}; choose another --out")
    if not is_run_folder(path):
        raise UserError(
            f"--overwrite replaces only icone run folders, and '{path}' holds other files; "
            "choose another --out or remove the folder yourself"
        )
    foreign = foreign_entries(path)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise UserError(
            f"--overwrite replaces only what icone wrote, and '{path}' also holds {', '.join(foreign[:5])}{more}; "
            "move them out of the folder or choose another --out"
        )


class RunLock:
    """An exclusive lock on a run folder, held while this process writes it (``flock`` on ``.lock``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._handle = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK, "a+")  # noqa: SIM115 - held open: the lock lasts as long as the handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"'{self.folder}' is in use by process {holder} (a training or evaluation writing it); "
                "wait for it to finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def move_to(self, folder: Path) -> None:
        """The folder was renamed: the lock (on the file, not its name) goes with it."""
        self.folder = Path(folder)

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replaced_copies(path: Path) -> list[Path]:
    prefix = f".{path.name}{REPLACED}"
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())


def settle_interrupted_replacement(path: Path) -> str | None:
    """Finish or undo a replacement that a killed process left half done; returns what was done."""
    for old in _replaced_copies(path):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue  # still in progress elsewhere
        if (path / "checkpoints" / "last.pt").is_file():
            shutil.rmtree(old, ignore_errors=True)
            return f"removed '{old}', the run that '{path}' replaced"
        if path.exists():
            shutil.rmtree(path)
        old.rename(path)
        return f"restored '{path}': a replacement of it was interrupted before the new run wrote a checkpoint"
    return None


def settle_before_use(path: Path) -> None:
    """Before a command reads or writes the run folder ``path``: finish or undo a replacement of it that a
    killed process left half done (the old run hidden as ``.NAME.replaced-PID``), and say so."""
    note = settle_interrupted_replacement(Path(path))
    if note:
        log.warning(note)


class RunFolder:
    """The folder of one run, from the checks before training to its first checkpoint.

    ``open(mode)`` locks it and cleans orphan temporary files: ``new`` needs a missing or empty
    folder, ``replace`` first moves the existing run aside, ``resume`` continues the run in it.
    ``started`` (after the first checkpoint) drops the replaced run; ``failed`` (before it) removes
    what this run wrote and puts the replaced run back, so a failed start changes nothing on disk.
    """

    MODES = ("new", "replace", "resume")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.note: str | None = None
        self._old: Path | None = None
        self._made = False
        self._was_empty = False
        self._kept = False
        self._recording = contextlib.ExitStack()

    def open(self, mode: str = "new") -> RunFolder:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.note = settle_interrupted_replacement(self.path)
        if mode == "replace" and has_contents(self.path):
            old_lock = RunLock(self.path).acquire()  # nobody may be writing the run we replace
            self._old = self.path.with_name(f".{self.path.name}{REPLACED}{os.getpid()}")
            self.path.rename(self._old)
            old_lock.release()
        self._made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        self._was_empty = not has_contents(self.path)
        if mode != "resume" and not self._was_empty:  # another process made it since the checks
            self.lock.release()
            raise UserError(
                f"run folder '{self.path}' already exists; pass --resume to continue it, --overwrite to replace it, or choose another --out"
            )
        record_written(self.path, APPENDED)  # the marker, with the list of what the run writes
        self._recording.enter_context(recording(self.path))
        remove_orphans(self.path)
        remove_orphans(self.path / "checkpoints")
        return self

    def started(self) -> None:
        """The new run has a checkpoint (or work worth keeping: ``optim.lr=auto``'s trials): the run it
        replaced can go, and a failure from now on keeps the folder."""
        self._kept = True
        if self._old is not None:
            shutil.rmtree(self._old, ignore_errors=True)
            self._old = None

    def failed(self) -> None:
        """The run stopped before its first checkpoint: undo what it wrote, restore what it replaced."""
        if self._kept or (self.path / "checkpoints" / "last.pt").is_file() or not self._was_empty:
            return
        self.lock.release()
        if self._made or self._old is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        else:  # a folder the user made empty stays, empty
            for entry in self.path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if self._old is not None:
            self._old.rename(self.path)
            self._old = None

    def close(self) -> None:
        self._recording.close()
        self.lock.release()
