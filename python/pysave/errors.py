"""User-facing errors.

Every problem a user can fix (bad input, bad option, broken model directory) raises
:class:`PySaveError` with a message that names the problem and the fix. The CLI prints
these without a traceback; anything else is a bug and keeps its traceback. Results the user
should look twice at (a collapsed latent, an untrained unconditional field) are reported with
:class:`PySaveWarning`, which saveR turns into R warnings.
"""
import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
# torch.no_grad() and friends, used as decorators of pysave's methods, wrap them in a frame of this
# file: it stands between pysave and its caller, so it is skipped as pysave's own frames are.
_TORCH_DECORATOR = os.path.join("torch", "utils", "_contextlib.py")


class PySaveError(ValueError):
    """A problem with the user's input or options, with a message saying how to fix it."""


class ModelDirectoryError(PySaveError):
    """A model directory that is missing, incomplete, corrupted or from a newer format."""


class PySaveWarning(UserWarning):
    """Something worked but deserves a second look; the message says what and what to do."""


def warn_user(message: str) -> None:
    """A :class:`PySaveWarning` attributed to the first line outside pysave (the user's call),
    however deep inside pysave it is raised: a fixed ``stacklevel`` points into pysave as soon as
    one public method calls another (``generate`` -> ``generate_like``, ``correct`` -> the
    transfer), or when torch.no_grad() wraps a method. Python 3.12's ``skip_file_prefixes`` does
    the same for pysave's own frames; pysave supports 3.10+."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and _inside(os.path.abspath(frame.f_code.co_filename)):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PySaveWarning, stacklevel=level + 1)


def _inside(path: str) -> bool:
    """Whether a frame of this file is pysave's (or a torch decorator's around a pysave method)."""
    return path.startswith(_PACKAGE) or path.endswith(_TORCH_DECORATOR)
