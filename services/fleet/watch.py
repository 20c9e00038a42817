"""What the fleet service hears on the site's bus, kept so that a job can tell a change is live.

The service feeds :class:`SiteWatch` every ``Health``, ``CameraStatus``, ``AppStatus``, ``Detections``
and ``Event`` copy it receives. A job then waits (:meth:`SiteWatch.wait_for`) for what it needs to see:
a reload's answer in a Health detail, a restarted service's fresh uptime, the new model version's
detections. The reporter reads the same state for the site's reported state.

Times are the fleet's own monotonic clock at arrival, never a sender's: a site's clocks may disagree.
A service's Health is kept per ``service@instance``, where an instance named ``<service>-<suffix>``
(as ``edgesight run`` names them: ``inference-1``, ``ingest-east``) is ``<service>@<suffix>``:

>>> from contracts import Health
>>> watch = SiteWatch()
>>> watch.feed(Health(service="inference", instance="inference-1", state="ready", ts_ns=1, uptime_s=3.0))
>>> sorted(watch.services), watch.services["inference@1"].ready_since is not None
(['inference@1'], True)
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable

from common._compat import wait_at_most
from contracts import AppStatus, CameraStatus, Detections, Event, Health

__all__ = ["DetectionsSeen", "HealthSeen", "Seen", "SiteWatch", "service_key"]

MAX_SERVICES = 256  # instances kept (compose names a container by its id: a restart is a new instance)
FORGET_S = 3600.0  # a service instance not heard for this long is gone
MAX_MODEL_VERSIONS = 64
MAX_KEYED = 1024  # cameras and apps
HOUR_S = 3600.0
MINUTE_S = 60.0


def service_key(service: str, instance: str) -> str:
    """``service@suffix`` for an instance named ``...<service>-<suffix>``, else ``service@instance``.

    >>> service_key("ingest", "ingest-east"), service_key("inference", "edgesight-inference-2")
    ('ingest@east', 'inference@2')
    >>> service_key("rules", "3f9a2c")
    'rules@3f9a2c'
    """
    head, separator, suffix = instance.rpartition(f"{service}-")
    if separator and suffix and (not head or head.endswith("-")):
        return f"{service}@{suffix}"
    return f"{service}@{instance}"


@dataclasses.dataclass
class Seen:
    """The newest message of one sender, when it arrived, and since when its state is what it says."""

    message: Health | CameraStatus | AppStatus
    arrived: float
    state_since: float

    @property
    def state(self) -> str:
        return self.message.state


@dataclasses.dataclass
class HealthSeen(Seen):
    message: Health
    ready_since: float | None = None  # since when this process says ``ready``, without a break

    @property
    def started(self) -> float:
        """When the process started, on the fleet's clock (its uptime at arrival, counted back)."""
        return self.arrived - self.message.uptime_s


@dataclasses.dataclass
class DetectionsSeen:
    """Detections of one model version: the first and the newest arrival, and how many."""

    first: float
    last: float
    count: int = 1


class SiteWatch:
    """The site as the bus shows it. ``clock`` is monotonic seconds; ``wake_s`` bounds how long a
    waiter goes without looking again when nothing arrives (a condition on time, such as "for 10 s")."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, wake_s: float = 0.5) -> None:
        self.clock = clock
        self.wake_s = wake_s
        self.services: dict[str, HealthSeen] = {}
        self.cameras: dict[str, Seen] = {}
        self.apps: dict[str, Seen] = {}
        self.detections: dict[tuple[str, str], DetectionsSeen] = {}
        self.last_error: str | None = None
        self._events: collections.OrderedDict[int, int] = collections.OrderedDict()  # minute -> new events
        self._changed = asyncio.Event()

    # -- feeding -------------------------------------------------------------------------------
    def feed(self, message: object) -> None:
        """Takes one bus message (anything else is ignored) and wakes every waiter."""
        now = self.clock()
        if isinstance(message, Health):
            self._take_health(message, now)
        elif isinstance(message, CameraStatus):
            self._take_state(self.cameras, message.camera, message, now)
            if message.state in ("stalled", "backoff") and message.error:
                self.last_error = f"camera {message.camera}: {message.error}"
        elif isinstance(message, AppStatus):
            self._take_state(self.apps, message.app, message, now)
            if message.state in ("failed", "hung"):
                self.last_error = f"app {message.app} {message.state}" + (f": {message.error}" if message.error else "")
        elif isinstance(message, Detections):
            self._take_detections(message, now)
        elif isinstance(message, Event):
            if message.lifecycle == "new":  # an update or end is the same event again
                self._count_event(now)
        else:
            return
        self._changed.set()
        self._changed = asyncio.Event()

    def note_error(self, text: str) -> None:
        """An error of the fleet's own (a job that failed) as the site's last error."""
        self.last_error = text

    def _take_health(self, health: Health, now: float) -> None:
        key = service_key(health.service, health.instance)
        seen = self.services.get(key)
        if seen is None or health.uptime_s + 1.0 < seen.message.uptime_s or health.state != seen.state:
            # new, another process (its uptime went back), or another state: ready anew if ready
            ready_since = now if health.state == "ready" else None
            seen = self.services[key] = HealthSeen(health, now, now, ready_since)
        else:
            seen.message, seen.arrived = health, now
        if health.state == "degraded":
            self.last_error = f"{key} degraded"
        for stale in [k for k, s in self.services.items() if now - s.arrived > FORGET_S]:
            del self.services[stale]
        while len(self.services) > MAX_SERVICES:
            del self.services[min(self.services, key=lambda k: self.services[k].arrived)]

    @staticmethod
    def _take_state(table: dict[str, Seen], key: str, message: CameraStatus | AppStatus, now: float) -> None:
        seen = table.get(key)
        if seen is None or seen.state != message.state:
            table[key] = Seen(message, now, now)
        else:
            seen.message, seen.arrived = message, now
        if len(table) > MAX_KEYED:  # names are the site file's: bounded; this is a guard
            del table[min(table, key=lambda k: table[k].arrived)]

    def _take_detections(self, detections: Detections, now: float) -> None:
        key = (detections.model, detections.model_version)
        seen = self.detections.get(key)
        if seen is None:
            self.detections[key] = DetectionsSeen(now, now)
            if len(self.detections) > MAX_MODEL_VERSIONS:
                del self.detections[min(self.detections, key=lambda k: self.detections[k].last)]
        else:
            seen.last, seen.count = now, seen.count + 1

    def _count_event(self, now: float) -> None:
        minute = int(now // MINUTE_S)
        self._events[minute] = self._events.get(minute, 0) + 1
        self._forget_events(now)

    def _forget_events(self, now: float) -> None:
        oldest = int((now - HOUR_S) // MINUTE_S)
        while self._events and next(iter(self._events)) <= oldest:
            self._events.popitem(last=False)

    # -- reading -------------------------------------------------------------------------------
    def events_last_hour(self) -> int:
        """New events heard in the last hour (by the minute)."""
        self._forget_events(self.clock())
        return sum(self._events.values())

    def healths(self, service: str, *, since: float | None = None) -> list[HealthSeen]:
        """Every instance of ``service`` heard (since ``since``, on the watch's clock, if given)."""
        return [
            seen
            for seen in self.services.values()
            if seen.message.service == service and (since is None or seen.arrived >= since)
        ]

    def instance_of(self, service: str, suffix: str) -> str | None:
        """The instance name behind ``service@suffix`` as heard, or None if no such instance was heard."""
        seen = self.services.get(f"{service}@{suffix}")
        return seen.message.instance if seen is not None and seen.message.service == service else None

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """True as soon as ``predicate()`` holds (asked now, after each message and every ``wake_s``);
        False once ``timeout_s`` passed without it."""
        deadline = time.monotonic() + timeout_s  # the wait's own clock: ``clock`` may be a test's
        while True:
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await wait_at_most(self._changed.wait(), min(left, self.wake_s))
