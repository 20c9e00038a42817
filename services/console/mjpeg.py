"""Live views as MJPEG (``multipart/x-mixed-replace``), one loop for every kind of picture.

A camera's live view and an app's ``video_out`` differ only in where the newest picture comes from
and how to tell that it changed: each is a :class:`Feed`. The loop sends a picture once per change,
at most ``max_fps`` a second, waits on :class:`Changes` (never polls), and ends when the client goes
or the console stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Protocol

from aiohttp import web

from common._compat import wait_at_most

__all__ = ["BOUNDARY", "Changes", "Feed", "stream"]

BOUNDARY = "edgesight-frame"
IDLE_CHECK_S = 5.0  # a view with nothing new looks again this often (and sees a stop in time)


class Feed(Protocol):
    """Where one live view's pictures come from."""

    def version(self) -> int | None:
        """Changes whenever the picture may have; None while there is none."""

    async def picture(self) -> bytes | None:
        """The newest picture as JPEG; None when it cannot be had now."""


class Changes:
    """Wakes every live view of a key (a camera, an app's camera) once per change.

    >>> changes = Changes()
    >>> changes.notify("dock")  # nobody waits: nothing happens
    >>> changes.closed
    False
    """

    def __init__(self) -> None:
        self._events: dict[Hashable, asyncio.Event] = {}
        self.closed = False  # set by close(): every view ends, so that a stop does not wait for them

    def event(self, key: Hashable) -> asyncio.Event:
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = asyncio.Event()
        return event

    def notify(self, key: Hashable) -> None:
        event = self._events.get(key)
        if event is not None:
            event.set()
            event.clear()  # those waiting wake up; the next wait waits for the next change

    def close(self) -> None:
        self.closed = True
        for event in self._events.values():
            event.set()


async def stream(
    request: web.Request, feed: Feed, changes: Changes, key: Hashable, max_fps: float
) -> web.StreamResponse:
    """Answers ``request`` with ``feed``'s pictures as MJPEG until the client leaves or ``changes`` closes."""
    interval = 1.0 / max_fps
    response = web.StreamResponse(
        headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    sent = None
    while not changes.closed:
        started = time.monotonic()
        version = feed.version()
        if version is None or version == sent:
            await wait_at_most(changes.event(key).wait(), IDLE_CHECK_S)
            continue
        picture = await feed.picture()
        sent = version
        if picture is not None:
            try:
                await response.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(picture)}\r\n\r\n".encode()
                    + picture
                    + b"\r\n"
                )
            except (ConnectionResetError, ConnectionError):
                break
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return response
