"""STAND-IN for the ``cuda`` namespace of cuda-python, for tests without a GPU. NOT CUDA: see bindings/runtime.py."""
