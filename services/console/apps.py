"""What the console knows of each Panorama app right now: its newest status and video pictures.

Fed from the apps service's ``apps/<app>/`` stream (AppStatus, AppVideo). Only what the site file
lists is kept: an app under ``apps:``, a camera on that app's ``cameras``. Anything else (an app that
is not there, a camera the app does not take, a message on another app's topic, a picture that is
not a JPEG) is dropped, counted in ``edgesight_console_app_messages_ignored_total{reason}`` and
logged once a minute with the counts: the console serves what the site's owner listed, nothing a
process on the bus makes up. Memory is bounded by the site file: one status per app, one picture
per app and camera.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping

from common.config import AppConfig
from common.logging import DropTally
from contracts import AppStatus, AppVideo
from services.console import metrics

__all__ = ["IGNORED_REASONS", "STALE_S", "AppFeed", "AppPicture", "AppStatusSeen", "Apps", "video_key"]

log = logging.getLogger(__name__)

# The apps service sends a status every few seconds: one older than this says nothing about now.
STALE_S = 15.0
JPEG_START = b"\xff\xd8\xff"
IGNORED_REASONS = ("unknown_app", "unknown_camera", "wrong_topic", "not_jpeg")


def video_key(app: str, camera: str) -> tuple[str, str, str]:
    """The key live views of an app's video wait on (see mjpeg.Changes); a camera's own is its name."""
    return ("app", app, camera)


@dataclasses.dataclass(frozen=True)
class AppStatusSeen:
    status: AppStatus
    received: float  # time.monotonic()

    def age_s(self, now_ns: int, now: float) -> float:
        """Seconds since it was sent (by the sender's clock) or heard (by ours), whichever is longer:
        a sender whose clock runs ahead does not look fresh forever."""
        return max((now_ns - self.status.ts_ns) / 1e9, now - self.received, 0.0)


@dataclasses.dataclass(frozen=True)
class AppPicture:
    video: AppVideo
    received: float  # time.monotonic()
    version: int  # +1 per picture: a live view waits for it to change


class Apps:
    """The newest AppStatus per app and AppVideo per (app, camera), of the apps in the site file.

    >>> from pathlib import Path
    >>> apps = Apps()
    >>> config = {"counter": AppConfig(code=Path("/srv/counter"), cameras=["dock"])}
    >>> video = AppVideo(app="counter", camera="dock", ts_ns=1, jpeg=b"\\xff\\xd8\\xff\\xe0")
    >>> apps.on_message("counter", video, config)
    ('counter', 'dock')
    >>> apps.on_message("counter", AppVideo(app="counter", camera="hall", ts_ns=1, jpeg=video.jpeg), config)
    >>> apps.picture("counter", "dock").video.jpeg == video.jpeg, apps.picture("counter", "hall")
    (True, None)
    """

    def __init__(self) -> None:
        self.statuses: dict[str, AppStatusSeen] = {}
        self.pictures: dict[tuple[str, str], AppPicture] = {}
        self._drops = DropTally(log, "app messages ignored", IGNORED_REASONS)
        self._counters = {reason: metrics.APP_MESSAGES_IGNORED.labels(reason) for reason in IGNORED_REASONS}

    def on_message(self, key: str, message: object, config: Mapping[str, AppConfig]) -> tuple[str, str] | None:
        """Records a message heard on ``apps/<key>/``; returns the (app, camera) whose picture changed."""
        if not isinstance(message, AppStatus | AppVideo):
            return None
        reason = self._refusal(key, message, config)
        if reason is not None:
            self._counters[reason].inc()
            self._drops.add(reason)
            self._drops.flush()
            return None
        now = time.monotonic()
        if isinstance(message, AppStatus):
            self.statuses[message.app] = AppStatusSeen(message, now)
            return None
        slot = (message.app, message.camera)
        previous = self.pictures.get(slot)
        self.pictures[slot] = AppPicture(message, now, previous.version + 1 if previous else 1)
        return slot

    @staticmethod
    def _refusal(key: str, message: AppStatus | AppVideo, config: Mapping[str, AppConfig]) -> str | None:
        if message.app != key:
            return "wrong_topic"  # sent on one app's topic in another's name
        app = config.get(message.app)
        if app is None:
            return "unknown_app"
        if isinstance(message, AppVideo):
            if message.camera not in app.cameras:
                return "unknown_camera"
            if not message.jpeg.startswith(JPEG_START):
                return "not_jpeg"  # served as image/jpeg: it must be one
        return None

    def status(self, app: str) -> AppStatusSeen | None:
        return self.statuses.get(app)

    def picture(self, app: str, camera: str) -> AppPicture | None:
        return self.pictures.get((app, camera))


class AppFeed:
    """One app's video for one camera, as a live view's :class:`~services.console.mjpeg.Feed`."""

    def __init__(self, apps: Apps, app: str, camera: str) -> None:
        self.apps, self.app, self.camera = apps, app, camera

    def version(self) -> int | None:
        picture = self.apps.picture(self.app, self.camera)
        return picture.version if picture else None

    async def picture(self) -> bytes | None:
        picture = self.apps.picture(self.app, self.camera)
        return picture.video.jpeg if picture else None
