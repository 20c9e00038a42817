"""One app as the apps service runs it: its settings, its process, what it took and what it is told.

Shared by the pieces of the service (its supervision, its channel, its frames), each of which changes
its own fields and sets ``changed`` for the status report to go out at once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from common.config import AppConfig
from contracts import AppStatus, FrameRef
from services.apps.models import AppModels
from services.apps.output import LAST_WORDS
from services.apps.sandbox import Cgroup

__all__ = ["LastFrame", "RunningApp"]


@dataclass
class LastFrame:
    """A camera's frame as the app last got it (masked): handed over again, as cached, while no newer one is."""

    pixels: npt.NDArray[np.uint8]
    capture_ns: int


@dataclass
class RunningApp:
    name: str
    config: AppConfig
    uid: int
    models: AppModels
    state: str = "starting"
    error: str = ""
    process: asyncio.subprocess.Process | None = None
    cgroup: Cgroup | None = None
    restarts: int = 0
    last_restart: str | None = None
    killed_for: str | None = None  # hung | memory | disk: why this service killed the running process
    started: float = 0.0
    frames: int = 0
    skipped: int = 0
    asked: bool = False  # the running process has asked for frames at least once
    waiting: bool = False  # inside get(): blocked on the cameras, not on the app
    last_get: float = 0.0
    # camera -> the FrameRef last handed over, compared by identity: a restarted ingest counts seq from 0 again
    taken: dict[str, FrameRef] = field(default_factory=dict)
    last: dict[str, LastFrame] = field(default_factory=dict)
    connections: int = 0
    big_read: asyncio.Lock = field(default_factory=asyncio.Lock)
    memory_bytes: int = 0
    disk_bytes: int = 0
    oom_kills: int = 0
    rendering: bool = False  # a video_out picture is being drawn: the next put is dropped, not queued
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LAST_WORDS))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self, instance: str) -> AppStatus:
        """What the console is told of this app (``apps/<app>/``)."""
        cgroup = "cgroup limits" if self.cgroup is not None else "rlimits + memory watch"
        return AppStatus(
            app=self.name,
            instance=instance,
            state=self.state,  # type: ignore[arg-type]
            ts_ns=time.time_ns(),
            cameras=list(self.config.cameras),
            frames=self.frames,
            skipped=self.skipped,
            restarts=self.restarts,
            last_restart=self.last_restart,  # type: ignore[arg-type]
            error=self.error[:1000],
            memory_mb=round(self.memory_bytes / (1 << 20), 1),
            sandbox=f"uid {self.uid}, network {self.config.network}, {cgroup}",
        )
