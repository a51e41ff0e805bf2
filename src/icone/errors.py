"""Errors meant for people: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input or a request we refuse; the message says what is wrong and what to do."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
