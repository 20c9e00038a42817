"""The root of EdgeSight's error tree and the one error this package raises.

``EdgeSightError`` lives here, in the lowest layer, so that ``common`` and every service can
derive from it without ``contracts`` importing anything of theirs.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["ContractError", "EdgeSightError", "RejectReason"]

RejectReason = Literal["malformed", "unknown_type", "unknown_version", "invalid"]


class EdgeSightError(Exception):
    """Base of every error EdgeSight raises on purpose.

    EdgeSightError
    ├── ContractError   a bus message that cannot be decoded (contracts)
    ├── ConfigError     a site file that does not validate (common.config)
    ├── BusError        a bad endpoint or a socket that cannot bind (common.bus)
    ├── ShmError        shared memory missing, too small or owned by a live writer (common.shm)
    ├── StaleFrameError a frame overwritten while it was read (common.shm)
    ├── AssetError      a model or media file not found on the search path (common.assets)
    └── StartupError    a port in use or a folder missing at start (common.service)
    """


class ContractError(EdgeSightError, ValueError):
    """A message body was rejected; ``reason`` is a bounded label fit for a metric."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail
