"""EdgeSight's error tree (rooted in ``contracts.errors.EdgeSightError``; see its docstring)."""

from __future__ import annotations

from contracts.errors import ContractError, EdgeSightError

__all__ = [
    "AssetError",
    "BusError",
    "ConfigError",
    "ContractError",
    "EdgeSightError",
    "ModelError",
    "PackageError",
    "ShmError",
    "StaleFrameError",
    "StartupError",
]


class ConfigError(EdgeSightError):
    """The site file is wrong. ``problems`` holds one ``file:line: key: message`` per defect."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class BusError(EdgeSightError):
    """A bus endpoint string is malformed or a socket cannot bind or connect."""


class ShmError(EdgeSightError):
    """Shared memory is missing, too small, or owned by another live writer."""


class StaleFrameError(EdgeSightError):
    """The slot was overwritten before or while it was read; the frame must be dropped."""


class AssetError(EdgeSightError):
    """A model or media file was not found on the asset search path."""


class StartupError(EdgeSightError):
    """Something a service needs at start is taken or absent (a port in use, a folder missing)."""


class ModelError(EdgeSightError):
    """A model, or its manifest, cannot be used; raised at load, never at the first frame."""


class PackageError(EdgeSightError):
    """A model package is refused (a bad signature, an untrusted signer, a changed or unsafe member) or
    cannot be made; the message says which and why."""
