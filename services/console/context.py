"""What every module of the console's HTTP side shares: the part of the console its handlers may use
(``request.app[CONSOLE]``, a :class:`ConsoleContext`), how fast a live view may go, times as the API
writes them, and the small answers and checks every handler gives alike.

Handlers get a context rather than the service, so that they see what they serve (the site file, the
live state, the history, the sessions) and nothing of how the service runs (its bus, its tasks); the
service builds the context and keeps its ``config`` current.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from common.config import SiteConfig
from common.config.site_file import SiteFile
from services.console.analytics import Analytics
from services.console.apps import Apps
from services.console.auth import Auth
from services.console.fleet import FleetFollower
from services.console.history import EventHistory
from services.console.live import Live
from services.console.mjpeg import Changes

__all__ = ["CONSOLE", "MAX_LIVE_FPS", "Audit", "ConsoleContext", "client", "error", "iso", "listed_camera"]

MAX_LIVE_FPS = 15.0  # a live view's pictures a second, at most: a console, not a recorder


class Audit(Protocol):
    """Appends a record to the site's audit trail (``Service.audit``)."""

    def __call__(self, action: str, target: str, **detail: Any) -> Awaitable[None]: ...


@dataclasses.dataclass
class ConsoleContext:
    """Exactly what the console's handlers use."""

    config: SiteConfig  # the site as loaded, then as last saved by the rule editor (see rules_saved)
    auth: Auth
    site_file: SiteFile
    live: Live
    history: EventHistory
    apps: Apps
    analytics: Analytics  # the series rules keeps (rules.sqlite), read-only
    changes: Changes  # live views wait on these: a camera's by its name, an app's video by apps.video_key
    audit: Audit
    rules_saved: Callable[[SiteConfig, str], Awaitable[None]]  # new rules for a camera: apply them
    fleet: FleetFollower | None = None  # every site's reported state (console.fleet), else None


CONSOLE: web.AppKey[ConsoleContext] = web.AppKey("console", ConsoleContext)


def iso(ns: int | None) -> str | None:
    """Nanoseconds since 1970 as ISO 8601 in UTC; None for none (0 is none too)."""
    return None if not ns else dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).isoformat()


def client(request: web.Request) -> str:
    """The client's address (through trusted proxies: see auth.client_address)."""
    return str(request.get("client") or request.remote or "?")


def error(status: int, message: str, **extra: Any) -> web.Response:
    """The API's answer to a request it refuses: ``{"error": message, ...}``."""
    return web.json_response({"error": message, **extra}, status=status)


def listed_camera(request: web.Request) -> str:
    """The request's camera (``{name}``) when the site lists it; else a 404."""
    name = request.match_info["name"]
    if name not in request.app[CONSOLE].config.cameras:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no camera {name[:64]!r}"}), content_type="application/json")
    return name
