"""STAND-IN for ``cuda.bindings`` (cuda-python >= 12.8), for tests without a GPU. NOT CUDA: see ``runtime.py``."""

__version__ = "12.6.0"
