"""What every module of the console's HTTP side shares: the service as handlers reach it
(``request.app[CONSOLE]``), how fast a live view may go, and times as the API writes them."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.console.service import ConsoleService

__all__ = ["CONSOLE", "MAX_LIVE_FPS", "iso"]

CONSOLE: web.AppKey[ConsoleService] = web.AppKey("console")
MAX_LIVE_FPS = 15.0  # a live view's pictures a second, at most: a console, not a recorder


def iso(ns: int | None) -> str | None:
    """Nanoseconds since 1970 as ISO 8601 in UTC; None for none (0 is none too)."""
    return None if not ns else dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).isoformat()
