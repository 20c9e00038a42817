"""The Panorama apps in the console's API: their state, and each app's video (its ``video_out``) per camera.

Behind the console's login like every /api route: the apps service publishes status and pictures on the
bus (see services/console/apps.py) and its own port serves only /metrics, /healthz and /readyz. Only the
apps and cameras of the site file are answered; any other name is a 404, whatever the bus carried.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from aiohttp import web

from common.config import AppConfig
from services.console import mjpeg
from services.console.apps import STALE_S, AppFeed, Apps, video_key
from services.console.context import CONSOLE, MAX_LIVE_FPS, iso

__all__ = ["ROUTES"]


async def apps(request: web.Request) -> web.Response:
    """Every app of the site file, in its order, with its newest status and its video's URLs."""
    console = request.app[CONSOLE]
    now_ns, now = time.time_ns(), time.monotonic()
    return web.json_response(
        [_describe(name, config, console.apps, now_ns, now) for name, config in console.config.apps.items()]
    )


def _describe(name: str, config: AppConfig, known: Apps, now_ns: int, now: float) -> dict[str, Any]:
    seen = known.status(name)
    status = seen.status if seen else None
    age = seen.age_s(now_ns, now) if seen else None
    stale = age is not None and age > STALE_S
    if not config.enabled:
        state = "disabled"
    elif status is None or stale:
        state = "unknown"  # nothing heard yet, or nothing for a while: the apps service may be down
    else:
        state = status.state
    base = f"/api/apps/{_quoted(name)}/video"
    cameras = []
    for camera in config.cameras:
        picture = known.picture(name, camera)
        cameras.append(
            {
                "name": camera,
                "latest": f"{base}/{_quoted(camera)}.jpg",
                "live": f"{base}/{_quoted(camera)}.mjpg",
                "picture": picture is not None,
                "picture_age_s": round(now - picture.received, 1) if picture else None,
            }
        )
    return {
        "name": name,
        "enabled": config.enabled,
        "state": state,
        "reported_state": status.state if status else None,  # as last heard, stale or not
        "stale": stale,
        "age_s": round(age, 1) if age is not None else None,
        "updated": iso(status.ts_ns) if status else None,
        "instance": status.instance if status else None,
        "frames": status.frames if status else 0,
        "skipped": status.skipped if status else 0,
        "restarts": status.restarts if status else 0,
        "last_restart": status.last_restart if status else None,
        "error": status.error if status else "",
        "memory_mb": round(status.memory_mb, 1) if status else 0.0,
        "memory_limit_mb": config.limits.memory_mb,
        "sandbox": status.sandbox if status else "",
        "cameras": cameras,
    }


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _listed(request: web.Request) -> tuple[str, str]:
    """The request's app and camera when the site file lists that camera under that app; else a 404."""
    app, camera = request.match_info["app"], request.match_info["camera"]
    config = request.app[CONSOLE].config.apps.get(app)
    if config is None or camera not in config.cameras:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no app {app[:64]!r} with a camera {camera[:64]!r} in the site file"}),
            content_type="application/json",
        )
    return app, camera


async def video_jpg(request: web.Request) -> web.Response:
    """The app's newest picture for the camera, exactly as the apps service sent it."""
    app, camera = _listed(request)
    picture = request.app[CONSOLE].apps.picture(app, camera)
    if picture is None:
        return web.Response(
            status=503,
            text="no picture from this app for this camera yet\n",
            headers={"Retry-After": "1", "Cache-Control": "no-store"},
        )
    return web.Response(body=picture.video.jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def video_mjpg(request: web.Request) -> web.StreamResponse:
    """The app's video for the camera as MJPEG: each new picture once, at most MAX_LIVE_FPS a second."""
    app, camera = _listed(request)
    console = request.app[CONSOLE]
    feed = AppFeed(console.apps, app, camera)
    return await mjpeg.stream(request, feed, console.changes, video_key(app, camera), MAX_LIVE_FPS)


ROUTES = [
    ("GET", "/api/apps", apps),
    ("GET", "/api/apps/{app}/video/{camera}.jpg", video_jpg),
    ("GET", "/api/apps/{app}/video/{camera}.mjpg", video_mjpg),
]
