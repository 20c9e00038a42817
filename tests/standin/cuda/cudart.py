"""STAND-IN for cuda-python's old ``cuda.cudart`` module, for tests without a GPU. NOT CUDA.

As in cuda-python 12.8 and later, it re-exports ``cuda.bindings.runtime`` (same functions, same state) and warns
that it is deprecated.
"""

import warnings

from cuda.bindings.runtime import *  # noqa: F403

warnings.warn(
    "The cuda.cudart module is deprecated and will be removed in a future release, "
    "please switch to use the cuda.bindings.runtime module instead.",
    FutureWarning,
    stacklevel=2,
)
