"""What the rules service makes of an event besides the bus: snapshots, counts kept on disk, local actions."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from common.analytics import SeriesWriter
from common.config import AnalyticsConfig, CameraConfig
from common.config.rules import Action, CommandAction, GpioAction, WebhookAction
from common.draw import Colour, draw_box, in_pixels
from common.events import event_dict
from common.files import private_sqlite
from common.privacy import apply_privacy_masks
from common.urls import redact_url
from common.webhook import WebhookError, post_json
from contracts import Event, Snapshot
from services.rules.counts import CountStore

__all__ = ["SqliteCountStore", "event_json", "make_snapshot", "run_action"]

log = logging.getLogger(__name__)

SNAPSHOT_COLOUR: Colour = (0, 0, 255)  # BGR: the event's object, boxed and labelled in red


class SqliteCountStore(CountStore):
    """Cumulative counts in SQLite (WAL) under ``state_dir``: a restart continues from the last value.
    With ``analytics.enabled`` it keeps the series too (``series``, on the same connection): a crossing's
    total and its minute commit in one transaction, so they agree whatever stops the process."""

    def __init__(self, path: Path, analytics: AnalyticsConfig | None = None) -> None:
        super().__init__()
        self.db = sqlite3.connect(private_sqlite(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS counts (camera TEXT, rule TEXT, label TEXT, key TEXT, value INTEGER,"
            " PRIMARY KEY (camera, rule, label, key))"
        )
        for camera, rule, label, key, value in self.db.execute("SELECT camera, rule, label, key, value FROM counts"):
            self.set(camera, rule, label, key, value)
        self.series = SeriesWriter(self.db, analytics) if analytics is not None and analytics.enabled else None

    def add(self, camera: str, rule: str, label: str, key: str, wall_ns: int = 0) -> int:
        value = super().add(camera, rule, label, key, wall_ns)
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO counts VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                    (camera, rule, label, key, value),
                )
                if self.series is not None:
                    self.series.crossing(camera, rule, label, key, wall_ns or time.time_ns())
        except BaseException:
            self.set(camera, rule, label, key, value - 1)  # as on disk: neither the total nor its minute
            if self.series is not None:
                self.series.rolled_back()
            raise
        return value

    def close(self) -> None:
        self.db.close()


def make_snapshot(frame: npt.NDArray[np.uint8], camera: CameraConfig, event: Event, quality: int) -> Snapshot:
    """From a BGR copy of the frame: masks first (nothing unmasked leaves), then the object's box and
    label, then a JPEG."""
    picture = apply_privacy_masks(np.ascontiguousarray(frame), camera.privacy_masks)
    height, width = picture.shape[:2]
    if event.object is not None:
        text = f"{event.object.label} #{event.object.track_id} {event.event_type}"
        box = in_pixels(event.object.box, width, height)
        draw_box(picture, box, SNAPSHOT_COLOUR, thickness=2, label=text, scale=0.5)  # white text on the red
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return Snapshot(width=width, height=height, data=encoded.tobytes())


def event_json(event: Event) -> bytes:
    """The event as rules' ``events.jsonl`` and its actions get it (``common.events``: the snapshot by size)."""
    return json.dumps(event_dict(event)).encode()


async def run_action(action: Action, event: Event) -> None:
    """Runs one local action for ``event``; failures are logged, never raised."""
    try:
        if isinstance(action, WebhookAction):
            await _webhook(action, event)
        elif isinstance(action, CommandAction):
            await _command(action, event)
        elif isinstance(action, GpioAction):
            await _gpio(action, event)
    except Exception as exc:
        log.warning("action failed", extra={"action": action.type, "rule": event.rule, "error": str(exc)})


async def _webhook(action: WebhookAction, event: Event) -> None:
    """POSTs the event (``common.webhook``), retried ``retries`` times with a backoff; the error names
    the URL without its secrets."""
    body = event_json(event)
    for attempt in range(action.retries + 1):
        try:
            await post_json(action.url, body, action.timeout_s)
            return
        except WebhookError as exc:
            if attempt == action.retries:
                raise WebhookError(f"POST {redact_url(action.url)} failed {attempt + 1} times: {exc}") from None
            await asyncio.sleep(min(2**attempt, 30))


async def _command(action: CommandAction, event: Event) -> None:
    """argv as given, never a shell; the event goes in as JSON on standard input."""
    process = await asyncio.create_subprocess_exec(
        *action.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.wait_for(process.communicate(event_json(event)), action.timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"{action.argv[0]} ran longer than {action.timeout_s:g} s and was killed") from None
    if process.returncode:
        raise RuntimeError(f"{action.argv[0]} exited with {process.returncode}")


async def _gpio(action: GpioAction, event: Event) -> None:
    """Drives a GPIO line high for ``active_s`` through the Linux character device (libgpiod). The
    wait is a timer on the event loop, not a sleeping thread: a burst of events cannot use up the
    default executor."""
    try:
        import gpiod
    except ImportError:
        gpiod = None
    if gpiod is None or not await asyncio.to_thread(os.path.exists, action.chip):
        log.info(
            "gpio not available here; would have set the line",
            extra={"chip": action.chip, "line": action.line, "seconds": action.active_s, "rule": event.rule},
        )
        await asyncio.sleep(action.active_s)  # held as long as the line would be: the same concurrency
        return
    settings = gpiod.LineSettings(direction=gpiod.line.Direction.OUTPUT, output_value=gpiod.line.Value.ACTIVE)
    request = await asyncio.to_thread(
        gpiod.request_lines, action.chip, consumer="edgesight", config={action.line: settings}
    )
    try:
        await asyncio.sleep(action.active_s)
    finally:
        await asyncio.to_thread(request.set_value, action.line, gpiod.line.Value.INACTIVE)
        await asyncio.to_thread(request.release)
