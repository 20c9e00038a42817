"""Puts the TensorRT and cuda-python stand-ins (tests/standin, see its README) in place of the real packages.

In a test::

    trt, cudart = use_standin(monkeypatch, TRT_VERSION="8.6.1", DEVICES=1)

prepends the stand-in folder to ``sys.path``, sets ``EDGESIGHT_STANDIN_<NAME>`` for each keyword, and imports
fresh copies of ``tensorrt`` and ``cuda.bindings.runtime`` (so their counters and memory start empty). When the
test ends, monkeypatch takes it all back: the path, the variables, and the modules (a real ``tensorrt`` that was
imported before comes back too). For a subprocess, ``standin_environment(...)`` gives the variables to run with.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

STANDIN_DIR = Path(__file__).resolve().parent / "standin"
_PACKAGES = ("tensorrt", "cuda")


def _is_standin_module(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in _PACKAGES)


def use_standin(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[ModuleType, ModuleType]:
    """The stand-in ``tensorrt`` and ``cuda.bindings.runtime`` modules, freshly imported, with these settings."""
    for name, value in settings.items():
        monkeypatch.setenv(f"EDGESIGHT_STANDIN_{name.upper()}", str(value))
    for name in [name for name in sys.modules if _is_standin_module(name)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(STANDIN_DIR))
    tensorrt = importlib.import_module("tensorrt")
    runtime = importlib.import_module("cuda.bindings.runtime")
    assert Path(tensorrt.__file__).is_relative_to(STANDIN_DIR), f"imported {tensorrt.__file__}, not the stand-in"
    for name in [name for name in sys.modules if _is_standin_module(name)]:
        # forgotten at teardown: re-registered through monkeypatch while it is absent, so undo deletes it
        monkeypatch.setitem(sys.modules, name, sys.modules.pop(name))
    return tensorrt, runtime


def standin_environment(base: dict[str, str] | None = None, **settings: Any) -> dict[str, str]:
    """Environment for a subprocess that should import the stand-ins, with these settings."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STANDIN_DIR), environment.get("PYTHONPATH")]))
    environment.update({f"EDGESIGHT_STANDIN_{name.upper()}": str(value) for name, value in settings.items()})
    return environment
