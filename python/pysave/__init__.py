"""pysave: SAVE (gene-block attention VAE + latent flow matching) for single-cell RNA-seq."""

__version__ = "0.1.0"

from .errors import PySaveError, PySaveWarning  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .model import SAVE  # noqa: E402

__all__ = ["SAVE", "PySaveError", "PySaveWarning", "evaluate", "__version__"]
