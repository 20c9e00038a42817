"""The console's pages: one static HTML file each (the browser asks the JSON API for the rest), a page's
404 for a person, the favicon and the API's own description (services/console/openapi.yaml)."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from services.console.context import CONSOLE

__all__ = ["OPENAPI", "PAGES", "ROUTES", "STATIC", "page"]

STATIC = Path(__file__).parent / "static"
OPENAPI = Path(__file__).parent / "openapi.yaml"
FAVICON = STATIC / "favicon.svg"
PAGES = {
    "/": "index.html",
    "/login": "login.html",
    "/events": "events.html",
    "/events/{id}": "events.html",  # an event's own URL: the timeline, opened at that event
    "/audit": "audit.html",
    "/apps": "apps.html",
    "/analytics": "analytics.html",
    "/fleet": "fleet.html",
    "/cameras/{name}": "camera.html",
    "/cameras/{name}/editor": "editor.html",
}


def page(name: str) -> Handler:
    """The handler of a page: the file ``name``, or a 404 page for a camera or event that is not there."""

    async def handler(request: web.Request) -> web.StreamResponse:
        console = request.app[CONSOLE]
        camera = request.match_info.get("name")
        if camera is not None and camera not in console.config.cameras:
            return _not_found_page(f"No camera named {camera[:64]!r}", "It is not in this site's file.")
        event_id = request.match_info.get("id")
        if event_id is not None and await asyncio.to_thread(console.history.get, event_id) is None:
            return _not_found_page("No such event", "It was pruned, or the console never saw it.")
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-store"})

    return handler


def _not_found_page(title: str, detail: str) -> web.Response:
    """A page's 404 for a person in a browser: a real page with a way back (the API answers JSON)."""
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Not found · EdgeSight</title>
<link rel="icon" href="/favicon.ico" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
</head>
<body>
<main class="notfound">
<h1>{html.escape(title)}</h1>
<p class="muted">{html.escape(detail)}</p>
<p><a id="home" href="/">Back to the overview</a> · <a href="/events">Events</a></p>
</main>
</body>
</html>
"""
    return web.Response(status=404, text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        FAVICON, headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"}
    )


async def openapi(request: web.Request) -> web.FileResponse:
    # text/yaml and inline: a browser shows it (application/yaml was saved as a download); clients don't care
    headers = {"Content-Type": "text/yaml; charset=utf-8", "Content-Disposition": 'inline; filename="openapi.yaml"'}
    return web.FileResponse(OPENAPI, headers=headers)


ROUTES = [
    ("GET", "/favicon.ico", favicon),
    ("GET", "/api/openapi.yaml", openapi),
]
