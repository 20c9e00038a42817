"""The console's event history in its API (services/console/history.py): events found by camera, rule,
type and time, newest first and paged by cursor; the values to filter by; one event and its snapshot."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from aiohttp import web

from services.console.context import CONSOLE, error
from services.console.history import EventQuery

__all__ = ["MAX_NS", "ROUTES"]

MAX_NS = (1 << 63) - 1  # the largest time (and row id) SQLite stores


def _time_ns(text: str | None, name: str) -> int | None:
    """Nanoseconds since the epoch, or an ISO 8601 time (a naive one is UTC)."""
    if not text:
        return None
    problem = web.HTTPBadRequest(
        text=json.dumps({"error": f"{name}: not an ISO 8601 time or nanoseconds since 1970: {text[:40]!r}"}),
        content_type="application/json",
    )
    if text.isdigit():
        if len(text) > 19 or int(text) > MAX_NS:  # SQLite integers are 64-bit
            raise problem
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        ns = int(when.timestamp() * 1e9)
    except (ValueError, OverflowError):
        raise problem from None
    if not 0 <= ns <= MAX_NS:
        raise problem
    return ns


async def events(request: web.Request) -> web.Response:
    """``?camera=&rule=&type=&since=&until=&limit=&before=`` -> newest first; ``next`` pages on."""
    query = request.query
    try:
        limit = max(1, min(500, int(query.get("limit", "50"))))
        before = None
        if query.get("before"):
            ts_ns, row = query["before"].split(":")
            before = (int(ts_ns), int(row))
            if not all(0 <= part <= MAX_NS for part in before):
                raise ValueError("out of range")
    except ValueError:
        return error(400, "limit must be a number; before a cursor from a previous answer's next")
    found, cursor = await asyncio.to_thread(
        request.app[CONSOLE].history.query,
        EventQuery(
            camera=query.get("camera") or None,
            rule=query.get("rule") or None,
            event_type=query.get("type") or None,
            since_ns=_time_ns(query.get("since"), "since"),
            until_ns=_time_ns(query.get("until"), "until"),
            before=before,
            limit=limit,
        ),
    )
    return web.json_response({"events": found, "next": f"{cursor[0]}:{cursor[1]}" if cursor else None})


async def event_facets(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(request.app[CONSOLE].history.facets))


async def event(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(request.app[CONSOLE].history.get, request.match_info["id"])
    if found is None:
        return error(404, "no such event (pruned, or never seen by the console)")
    return web.json_response(found)


async def snapshot(request: web.Request) -> web.Response:
    picture = await asyncio.to_thread(request.app[CONSOLE].history.snapshot, request.match_info["id"])
    if picture is None:
        return error(404, "this event has no snapshot (the rule has snapshot: false, or it was pruned)")
    return web.Response(body=picture, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


ROUTES = [
    ("GET", "/api/events", events),
    ("GET", "/api/events/facets", event_facets),  # before {id}: "facets" is no event's id
    ("GET", "/api/events/{id}", event),
    ("GET", "/api/events/{id}/snapshot.jpg", snapshot),
]
