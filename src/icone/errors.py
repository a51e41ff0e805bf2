"""Errors meant for people: the CLI prints each as one line and exits with its code."""


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
