"""movielens-recs: MovieLens histories -> TFRS two-tower model -> ScaNN top-N for every user.

The one place where the process environment is prepared for TensorFlow: TFRS 0.7.7 needs
Keras 2, which ``tf-keras`` provides when ``TF_USE_LEGACY_KERAS=1`` is set *before*
TensorFlow is first imported. Every entry point (jobs, Spark Python workers, tests) imports
``recsys`` first, so setting it here covers drivers and workers alike.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from recsys.version import __version__  # noqa: E402

__all__ = ["__version__"]
