"""User-facing errors.

Every problem a user can fix (bad input, bad option, broken model directory) raises
:class:`PySaveError` with a message that names the problem and the fix. The CLI prints
these without a traceback; anything else is a bug and keeps its traceback. Results the user
should look twice at (a collapsed latent, an untrained unconditional field) are reported with
:class:`PySaveWarning`, which saveR turns into R warnings.
"""


class PySaveError(ValueError):
    """A problem with the user's input or options, with a message saying how to fix it."""


class ModelDirectoryError(PySaveError):
    """A model directory that is missing, incomplete, corrupted or from a newer format."""


class PySaveWarning(UserWarning):
    """Something worked but deserves a second look; the message says what and what to do."""
