"""The ``icone`` command (Typer): the commands live in :mod:`icone.cli.commands` and
:mod:`icone.cli.grids`; this module runs them so that every error is one line with its exit code."""

from __future__ import annotations

import errno
import logging
import os
import sys

import typer

from icone.cli import commands, grids  # noqa: F401 - they register the commands on the app
from icone.cli.app import ARGV, DEBUG, app, err_console
from icone.errors import Interrupted, OutOfMemory, TrainingDiverged, UserError, is_out_of_memory


def _is_main_process() -> bool:
    """Rank 0 under ``torchrun`` (read from the environment: no torch import for an error line)."""
    return int(os.environ.get("RANK", "0")) == 0


def _print_error(line: str) -> None:
    """One line on stderr; under ``torchrun`` from rank 0 only (every process raises the same error)."""
    if _is_main_process():
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


class _OneLineWarnings(logging.Handler):
    """icone's warnings as ``warning: ...`` lines on stderr (rank 0 only)."""

    def emit(self, record: logging.LogRecord) -> None:
        _print_error(f"warning: {record.getMessage()}")


def _usage_line(err: Exception) -> str:
    """Typer's usage error (with its "did you mean") as one line, naming the command's --help."""
    message = " ".join(str(err.format_message()).split())  # type: ignore[attr-defined]
    ctx = getattr(err, "ctx", None)
    command = getattr(ctx, "command_path", None) or "icone"
    return f"error: {message}; see '{command} --help'"


def _os_error_line(err: OSError) -> str:
    where = f" '{err.filename}'" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"error: the disk is full (writing{where}); free some space and run the command again"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"error: no permission to write{where} ({err.strerror}); choose another --out"
    return f"error: {err.strerror or type(err).__name__}{where}"


def run(argv: list[str] | None = None) -> int:
    """Run the ``icone`` command; returns the exit code. Every error is one line (``--debug``: the traceback).

    2: usage, input or I/O; 1: a failure during training (a diverged loss, out of memory, an internal
    error); 130: Ctrl-C.
    """
    logger = logging.getLogger("icone")
    if not any(isinstance(h, _OneLineWarnings) for h in logger.handlers):
        logger.addHandler(_OneLineWarnings())
        logger.propagate = False
    DEBUG["on"] = bool(os.environ.get("ICONE_DEBUG"))
    args = list(sys.argv[1:] if argv is None else argv)
    ARGV[:] = args
    leading = args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]
    debug = DEBUG["on"] or "--debug" in leading
    try:
        code = app(args=argv, prog_name="icone", standalone_mode=False)
        if code == 130:  # Typer turns a Ctrl-C outside a run into this return value
            _print_error("interrupted")
        return code if isinstance(code, int) else 0
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except typer.Exit as err:
        return int(err.exit_code)
    except typer.Abort:
        _print_error("aborted")
        return 1
    except Exception as err:
        if debug:
            raise
        line, code = _error_line(err)
        _print_error(line)
        return code


# icone's own errors: (type, prefix of the line, exit code)
KNOWN = ((Interrupted, "", 130), (UserError, "error: ", 2), (TrainingDiverged, "training stopped: ", 1),
         (OutOfMemory, "error: ", 1))  # fmt: skip


def _error_line(err: Exception) -> tuple[str, int]:
    """The one line an error is shown as, and the exit code."""
    for kind, prefix, code in KNOWN:
        if isinstance(err, kind):
            return f"{prefix}{err}", code
    if hasattr(err, "format_message") and isinstance(getattr(err, "exit_code", None), int):  # Typer's usage errors
        return _usage_line(err), int(err.exit_code) if err.exit_code else 2  # type: ignore[attr-defined]
    if is_out_of_memory(err):
        return (
            "error: out of memory; lower --batch-size, the sample or patch size (data.resize=...), "
            "or the backbone (model.width=..., --backbone smallcnn)"
        ), 1
    if isinstance(err, OSError):
        return _os_error_line(err), 2
    first = str(err).splitlines()[0] if str(err) else ""
    return f"internal error: {type(err).__name__}: {first}; run 'icone --debug ...' for the traceback and report it", 1


def main() -> None:
    """Entry point of the ``icone`` command."""
    sys.exit(run())
