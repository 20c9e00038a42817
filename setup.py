"""Only the one C extension lives here; everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("common.shm._fence", ["common/shm/_fence.c"], extra_compile_args=["-O2"])])
