"""Frame intake and ``video_in.get``: the newest frame of each camera, handed to each app masked.

The bus brings a ``FrameRef`` per frame; only the newest per camera is kept (newest wins: an app that
is busy skips frames, counted in its ``skipped``), and the pixels are read from the ring only when an
app asks. A ``get`` returns once every camera of the app has a frame and at least one a new one; a
camera without a new frame gives its last one again, marked ``cached`` (and ``stale`` when its
camera has been silent for ``STALE_AFTER_S``).

Why not ``Subscriber.receive_newest``: it collapses a backlog on the socket, but what the apps need is
the newest ``FrameRef`` *kept* between gets, which arrive at their own pace; and an app's ``skipped``
counts every frame it missed, which a drained backlog would hide.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from common.bus import Subscriber
from common.config import CameraConfig
from common.errors import ShmError, StaleFrameError
from common.privacy import apply_privacy_masks
from common.shm import FrameReaders
from common.urls import redact_url
from contracts import FrameRef
from services.apps.channel_requests import Answer, RequestError
from services.apps.running_app import LastFrame, RunningApp

__all__ = ["STALE_AFTER_S", "VideoIn"]

STALE_AFTER_S = 3.0  # a camera silent this long gives its last frame marked stale


class VideoIn:
    """The newest ``FrameRef`` of each camera from the bus, and each app's ``get`` of their pixels."""

    def __init__(self, cameras: dict[str, CameraConfig], readers: FrameReaders, apps: dict[str, RunningApp]) -> None:
        self.cameras = cameras
        self.readers = readers
        self.apps = apps
        self.newest: dict[str, FrameRef] = {}
        self.arrived_at: dict[str, float] = {}
        self.arrived = asyncio.Condition()

    async def receive(self, frames: Subscriber) -> None:
        """Keeps the newest ``FrameRef`` of each camera, waking the gets that wait for one."""
        async for received in frames:
            ref = received.message
            if not isinstance(ref, FrameRef) or ref.camera != received.key:
                continue
            previous = self.newest.get(ref.camera)
            for app in self.apps.values():
                if (
                    app.asked
                    and previous is not None
                    and ref.camera in app.config.cameras
                    and app.taken.get(ref.camera) is not previous
                ):
                    app.skipped += 1  # newest wins: the app was busy with an older frame
            async with self.arrived:
                self.newest[ref.camera] = ref
                self.arrived_at[ref.camera] = time.monotonic()
                self.arrived.notify_all()

    def _fresh(self, app: RunningApp, camera: str) -> bool:
        ref = self.newest.get(camera)
        return ref is not None and app.taken.get(camera) is not ref

    def _ready(self, app: RunningApp) -> bool:
        """Every camera has a first frame, and one of them a new one."""
        cameras = app.config.cameras
        return all(c in app.last or c in self.newest for c in cameras) and any(self._fresh(app, c) for c in cameras)

    async def get(self, app: RunningApp, timeout: Any) -> Answer:
        """The answer to ``video_in.get``: one stream per camera of the app, its pixels as buffers;
        a ``timeout`` error where no camera had a new frame within ``timeout`` seconds."""
        if timeout is not None and (not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout < 0):
            raise RequestError(f"timeout must be a number of seconds or None, got {str(timeout)[:32]}")
        end = None if timeout is None else time.monotonic() + float(timeout)
        app.asked, app.waiting = True, True
        if app.state == "starting":
            app.state = "running"
            app.changed.set()
        try:
            new = await self._take(app, end)
        except asyncio.TimeoutError:
            return {"error": "timeout", "message": f"no new frame from {app.config.cameras} within {timeout} s"}, []
        finally:
            app.waiting = False
            app.last_get = time.monotonic()
        return self._streams(app, new)

    async def _take(self, app: RunningApp, end: float | None) -> set[str]:
        """Waits for new frames and copies them out until every camera of the app has one; the
        cameras whose frame is handed over for the first time (asyncio.TimeoutError after ``end``)."""
        new: set[str] = set()  # cameras whose frame this get hands over for the first time
        while True:
            remaining = None if end is None else max(0.0, end - time.monotonic())
            async with self.arrived:
                await asyncio.wait_for(self.arrived.wait_for(lambda: self._ready(app)), remaining)
            fresh = {c: self.newest[c] for c in app.config.cameras if self._fresh(app, c)}
            for camera, ref in fresh.items():
                app.taken[camera] = ref
            pictures = await asyncio.to_thread(self._copy_all, list(fresh.values()))
            for ref, pixels in zip(fresh.values(), pictures, strict=True):
                if pixels is None:
                    app.skipped += 1  # overwritten before it was read
                else:
                    app.last[ref.camera] = LastFrame(pixels, ref.capture_ns)
                    new.add(ref.camera)
            if new and all(c in app.last for c in app.config.cameras):
                return new

    def _streams(self, app: RunningApp, new: set[str]) -> Answer:
        streams, buffers = [], []
        now = time.monotonic()
        for camera in app.config.cameras:
            last = app.last[camera]
            pixels = last.pixels if camera in new else last.pixels.copy()  # the app may write on what it got
            app.frames += camera in new
            streams.append(
                {
                    "camera": camera,
                    "uri": redact_url(self.cameras[camera].url),
                    "capture_ns": last.capture_ns,
                    "cached": camera not in new,
                    "stale": now - self.arrived_at.get(camera, 0.0) > STALE_AFTER_S,
                    "shape": list(pixels.shape),
                }
            )
            buffers.append(pixels)
        return {"streams": streams}, buffers

    def _copy_all(self, refs: list[FrameRef]) -> list[npt.NDArray[np.uint8] | None]:
        """Each frame's BGR copy, privacy masks applied: an app never holds a masked area."""
        pictures: list[npt.NDArray[np.uint8] | None] = []
        for ref in refs:
            try:
                pixels = self.readers.copy(ref, "bgr")
            except (StaleFrameError, ShmError):
                pictures.append(None)
                continue
            pictures.append(apply_privacy_masks(pixels, self.cameras[ref.camera].privacy_masks))
        return pictures
