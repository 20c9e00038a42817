"""Models that fell silent: ``edgesight_tracks_active{camera,model}`` goes to 0 for a model whose
Detections for a camera stopped.

The gauge is set with each Detections handled, so a model that stops sending (its inference replica
died, an external detector went away) would leave it at its last value for ever. ``SilentModels``
remembers when each (camera, model) was last heard, on the receiver's monotonic clock (a frame's own
time stands still when its sender has stopped, so it cannot tell), and a sweep each ``SWEEP_S`` sets the
gauge of any not heard for longer than the tracker's ``max_age_s`` to 0: by then every track it had
is gone anyway. The service is then told (``on_silent``): a model the site does not name gives its
tracker's slot up there (``services.rules.slots``), so made-up model names cannot keep the slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.rules import metrics

__all__ = ["SWEEP_S", "SilentModels"]

SWEEP_S = 1.0  # how often the sweep looks: the gauge is at most max_age_s + this late


class SilentModels:
    """When each (camera, model) was last heard; ``sweep`` zeroes the tracks gauge of the silent ones."""

    def __init__(self, max_age_s: float, on_silent: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.max_age_s = max_age_s
        self.on_silent = on_silent  # (camera, model), after its gauge went to 0
        self.heard_at: dict[tuple[str, str], float] = {}  # bounded: one per tracker the service keeps

    def heard(self, camera: str, model: str, now: float | None = None) -> None:
        """A Detections of ``model`` for ``camera`` was handled (``now``: monotonic seconds)."""
        self.heard_at[(camera, model)] = time.monotonic() if now is None else now

    def forget(self, camera: str) -> None:
        """A camera rules no longer serves (a reload removed it): its gauges go to 0 and are not looked at."""
        for key in [key for key in self.heard_at if key[0] == camera]:
            del self.heard_at[key]
            metrics.ACTIVE_TRACKS.labels(*key).set(0)

    def sweep(self, now: float | None = None) -> list[tuple[str, str]]:
        """Sets the gauge of every (camera, model) silent past ``max_age_s`` to 0; returns them. Each is
        then forgotten until it is heard again (one zero per silence, not one a second)."""
        now = time.monotonic() if now is None else now
        silent = [key for key, at in self.heard_at.items() if now - at > self.max_age_s]
        for key in silent:
            del self.heard_at[key]
            metrics.ACTIVE_TRACKS.labels(*key).set(0)
        return silent

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            for camera, model in self.sweep():
                if self.on_silent is not None:
                    await self.on_silent(camera, model)
