"""The fleet in the console's API (shown at ``/fleet``): every site's row of the fleet table, as heard on
the fleet's broker by services/console/fleet.py.

What a row holds came from the sites over MQTT and is untrusted: it is answered as JSON (never HTML), and
the page puts every string in with ``textContent``; a site's console link is in only when it is an
http(s) URL (``safe_link``).
"""

from __future__ import annotations

from aiohttp import web

from services.console.context import CONSOLE

__all__ = ["ROUTES"]


async def fleet(request: web.Request) -> web.Response:
    """``{"enabled", "connected", "error", "broker", "topic", "online", "offline", "sites": [...], "dropped"}``;
    with ``console.fleet`` off, ``enabled`` is false and there are no sites."""
    follower = request.app[CONSOLE].fleet
    if follower is None:
        answer = {"enabled": False, "connected": False, "online": 0, "offline": 0, "sites": []}
        return web.json_response(answer, headers={"Cache-Control": "no-store"})
    return web.json_response(follower.summary(), headers={"Cache-Control": "no-store"})


ROUTES = [
    ("GET", "/api/fleet", fleet),
]
