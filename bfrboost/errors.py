"""Errors that reach the user as one line: the file (if any) and what to do."""


class BfrboostError(Exception):
    """Base class: the message is shown to the user as-is, on one line."""


class InputError(BfrboostError):
    """An input file cannot be read or decoded."""


class OutputError(BfrboostError):
    """An output cannot be written."""


class WeightsError(BfrboostError):
    """A checkpoint is missing, corrupt, unsafe or of the wrong format."""


class UsageError(BfrboostError):
    """The options given do not make sense together (exit code 2)."""
