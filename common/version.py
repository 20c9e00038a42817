"""This installation's version, as ``edgesight version`` says it and the fleet service reports it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["edgesight_version"]


def edgesight_version() -> str:
    """The installed ``edgesight`` distribution's version; ``0+unknown`` in a source tree never installed."""
    try:
        return version("edgesight")
    except PackageNotFoundError:
        return "0+unknown"
