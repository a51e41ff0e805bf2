"""Errors meant for people: the CLI prints each as one line and exits with its code."""


class UserError(Exception):
    """Bad input or a request we refuse; the message says what is wrong and what to do (exit code 2)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says what was kept (exit code 1)."""


class Interrupted(Exception):
    """Ctrl-C during a run; the message names the last checkpoint and how to continue (exit code 130)."""
