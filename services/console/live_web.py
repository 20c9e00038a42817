"""The site right now, as the console heard it on the bus (services/console/live.py): each camera's state,
its newest picture and live view, the counts of its lines and zones, and every service's health."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from common.config import CameraConfig
from common.urls import redact_url
from contracts import CameraStatus
from services.console import mjpeg
from services.console.context import CONSOLE, MAX_LIVE_FPS, ConsoleContext, iso, listed_camera
from services.console.live import CameraView

__all__ = ["HEALTH_STALE_S", "ROUTES"]

HEALTH_STALE_S = 3.0  # health intervals without a heartbeat before a service shows as missing


def _public_url(url: str) -> str:
    """Where a camera is, without its secrets; a file by its name only."""
    if "://" in url and not url.startswith("file:"):
        return redact_url(url)
    return Path(urllib.parse.urlsplit(url).path or url).name


async def cameras(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    stale_ns = int(HEALTH_STALE_S * console.config.bus.health_interval_s * 1e9)
    now = time.time_ns()
    return web.json_response(
        [
            _describe(console, name, config, console.live.cameras.get(name), stale_ns, now)
            for name, config in console.config.cameras.items()
        ]
    )


def _describe(
    console: ConsoleContext, name: str, config: CameraConfig, view: CameraView | None, stale_ns: int, now: int
) -> dict[str, Any]:
    status: CameraStatus | None = view.status if view else None
    state = status.state if status else "unknown"
    if status is not None and now - status.ts_ns > stale_ns:
        state = "unknown"  # no word from its ingest for a while
    return {
        "name": name,
        "enabled": config.enabled,
        "state": state if config.enabled else "disabled",
        "fps": round(status.fps, 2) if status else 0.0,
        "error": status.error if status else "",
        "since": iso(status.since_ns) if status else None,
        "reconnects": status.reconnects if status else 0,
        "width": status.width if status else 0,
        "height": status.height if status else 0,
        "codec": status.codec if status else "",
        "source": _public_url(config.url),
        "models": config.models or sorted(console.config.models),
        "rules": {rule_name: rule.type for rule_name, rule in config.rules.items()},
        "labels": sorted(view.labels) if view else [],
        "latest": f"/api/cameras/{name}/latest.jpg",
        "live": f"/api/cameras/{name}/live.mjpg",
    }


async def latest_jpg(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    name = listed_camera(request)
    overlay = request.query.get("overlay", "0") not in ("0", "", "false")
    picture = await asyncio.to_thread(console.live.picture, name, console.config.cameras[name], overlay=overlay)
    if picture is None:
        return web.Response(
            status=503,
            text="no frame from this camera yet\n",
            headers={"Retry-After": "1", "Cache-Control": "no-store"},
        )
    return web.Response(body=picture, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def live_mjpg(request: web.Request) -> web.StreamResponse:
    """MJPEG with tracks, lines and zones drawn, at most the camera's fps (and MAX_LIVE_FPS)."""
    console = request.app[CONSOLE]
    name = listed_camera(request)
    fps = min(MAX_LIVE_FPS, console.config.cameras[name].fps)
    return await mjpeg.stream(request, _CameraFeed(console, name), console.changes, name, fps)


class _CameraFeed:
    """A camera's live view: its newest frame, tracks, lines and zones drawn (by the rules in force)."""

    def __init__(self, console: ConsoleContext, camera: str) -> None:
        self.console, self.camera = console, camera

    def version(self) -> int | None:
        view = self.console.live.cameras.get(self.camera)
        return view.version if view else None

    async def picture(self) -> bytes | None:
        config = self.console.config.cameras.get(self.camera)
        return await asyncio.to_thread(self.console.live.picture, self.camera, config, overlay=True)


async def counts(request: web.Request) -> web.Response:
    """camera -> lines (rule -> label -> in/out) and zones (rule -> label -> objects now)."""
    console = request.app[CONSOLE]
    answer: dict[str, Any] = {}
    for name in console.config.cameras:
        view = console.live.cameras.get(name)
        scene = view.scene if view else None
        answer[name] = {
            "lines": {
                rule: {label: {"in": c.in_, "out": c.out} for label, c in by_label.items()}
                for rule, by_label in (scene.lines.items() if scene else [])
            },
            "zones": dict(scene.zones) if scene else {},
            "updated": iso(scene.frame.capture_ns) if scene else None,
        }
    return web.json_response(answer)


async def services(request: web.Request) -> web.Response:
    """Every service instance heard from (its latest Health), and the uplink's spool and sinks."""
    console = request.app[CONSOLE]
    stale_s = HEALTH_STALE_S * console.config.bus.health_interval_s
    now = time.monotonic()
    answer = []
    uplink: dict[str, Any] = {}
    for (service, instance), (health, received) in sorted(console.live.health.items()):
        age = now - received
        answer.append(
            {
                "service": service,
                "instance": instance,
                "state": health.state if age <= stale_s else "missing",
                "age_s": round(age, 1),
                "uptime_s": round(health.uptime_s, 1),
                "counters": health.counters,
                "detail": health.detail,
            }
        )
        if service == "uplink" and age <= stale_s:
            counters = health.counters
            uplink = {
                "spooled": int(counters.get("spooled", 0)),
                "oldest_s": counters.get("oldest_s", 0.0),
                "sinks": {key[:-3]: bool(value) for key, value in counters.items() if key.endswith("_up")},
            }
    return web.json_response({"services": answer, "uplink": uplink or None})


ROUTES = [
    ("GET", "/api/cameras", cameras),
    ("GET", "/api/cameras/{name}/latest.jpg", latest_jpg),
    ("GET", "/api/cameras/{name}/live.mjpg", live_mjpg),
    ("GET", "/api/counts", counts),
    ("GET", "/api/services", services),
]
