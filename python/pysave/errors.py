"""User-facing errors.

Every problem a user can fix (bad input, bad option, broken model directory) raises
:class:`PySaveError` with a message that names the problem and the fix. The CLI prints
these without a traceback; anything else is a bug and keeps its traceback.
"""


class PySaveError(ValueError):
    """A problem with the user's input or options, with a message saying how to fix it."""


class ModelDirectoryError(PySaveError):
    """A model directory that is missing, incomplete, corrupted or from a newer format."""
