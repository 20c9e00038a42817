"""A message that fails to decode is dropped, counted and logged; nothing stops for it.

Counted in ``edgesight_bus_rejected_total{service,reason}`` (a contracts ``RejectReason`` or
``malformed``); the log line carries the detail cut short.
"""

from __future__ import annotations

import logging

from common.metrics import BUS_REJECTED

__all__ = ["SOCKETS_LOGGER", "reject"]

# The logger every bus socket has always logged under (log lines carry its name): kept as the sockets
# moved into modules of their own
SOCKETS_LOGGER = "common.bus.sockets"

log = logging.getLogger(SOCKETS_LOGGER)


def reject(service: str, reason: str, detail: str) -> None:
    BUS_REJECTED.labels(service=service, reason=reason).inc()
    log.warning("bus message rejected", extra={"reason": reason, "detail": detail[:200]})
