"""The site's reported state: what operators see of it in ``edgesight fleet status`` and the console.

REPORTED (the brief's shape, at most 8 kB: :func:`common.fleet.shapes.fit_reported`) is made from what
the bus shows (:class:`~services.fleet.watch.SiteWatch`), the model store's installed versions and
their signers, the site file and the runner's job. It goes to the named shadow's update topic
(retained in retained mode, so a newly connected operator sees every site at once) when it changes,
at most every ``fleet.min_report_interval_s``, and at least every ``fleet.report_interval_s`` (the
heartbeat: a site unheard for twice that is offline). What changes on its own (uptimes, frame rates,
the spool, the event count) rides along but is no change; a clean stop sends one last report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common._compat import raise_if_cancelled, wait_at_most
from common.config import SiteConfig
from common.errors import EdgeSightError
from common.fleet.shapes import REPORTED_SCHEMA, encode, reported_update
from common.trust.store import ModelStore
from common.version import edgesight_version
from services.fleet import metrics
from services.fleet.fleet_site import FleetSite
from services.fleet.jobs import JobState, Publish
from services.fleet.watch import SiteWatch

__all__ = ["Reporter", "steady"]

log = logging.getLogger(__name__)

FINAL_TIMEOUT_S = 2.0
MOVING = {"reported_at", "spool", "events_last_hour"}  # top-level keys whose change is no change
MOVING_ENTRY = {"fps", "uptime_s"}  # the same, within an entry of cameras, services


def steady(reported: dict[str, Any]) -> dict[str, Any]:
    """``reported`` less what moves on its own: two reports that differ only there are the same state.

    >>> a = {"reported_at": 1.0, "cameras": {"dock": {"state": "streaming", "fps": 9.8}}, "last_error": None}
    >>> b = {"reported_at": 9.0, "cameras": {"dock": {"state": "streaming", "fps": 10.1}}, "last_error": None}
    >>> steady(a) == steady(b), steady(a) == steady({**b, "last_error": "camera dock: timeout"})
    (True, False)
    """
    kept = {key: value for key, value in reported.items() if key not in MOVING}
    for key in ("cameras", "services"):
        entries = kept.get(key)
        if isinstance(entries, dict):
            kept[key] = {
                name: {k: v for k, v in entry.items() if k not in MOVING_ENTRY} if isinstance(entry, dict) else entry
                for name, entry in entries.items()
            }
    return kept


class Reporter:
    """Builds REPORTED (:meth:`build`) and publishes it as the module says (:meth:`run`)."""

    def __init__(
        self,
        config: SiteConfig,
        fleet: FleetSite,
        watch: SiteWatch,
        publish: Publish,
        *,
        job: Callable[[], dict[str, Any]] = lambda: dict(JobState().reported()),
        desired: Callable[[], dict[str, Any] | None] = lambda: None,
    ) -> None:
        assert config.fleet is not None, "the fleet service runs only where the site file has fleet:"
        self.settings = config.fleet
        self.site = config.site.name
        self.fleet, self.watch, self.publish = fleet, watch, publish
        self.job, self.desired = job, desired
        self.store = ModelStore(Path(config.site.state_dir) / "models")
        self.version = edgesight_version()
        self.sent = 0
        self._last_sent: float | None = None  # monotonic, of the last report that went out
        self._last_try: float | None = None  # monotonic, of the last attempt
        self._last_steady: dict[str, Any] | None = None
        self._nudged = asyncio.Event()
        self._store_error: str | None = None

    # -- the MQTT side (the reporter subscribes to nothing) ---------------------------------------
    def subscriptions(self) -> list[str]:
        return []

    async def connected(self) -> None:
        """A new connection is told at once (retained mode: a broker that lost its retained state)."""
        self._last_steady, self._last_try = None, None
        self.nudge()

    def disconnected(self) -> None:
        pass

    async def take(self, topic: str, payload: bytes) -> bool:
        return False

    def nudge(self) -> None:
        """Something worth saying happened (a job's status): reported soon, within the rate limit."""
        self._nudged.set()

    # -- reporting -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: a report when the state changed (at most every min interval) or the heartbeat is due."""
        while True:
            raise_if_cancelled()  # a stop that a publish's wait swallowed ends the loop, not waits again
            await wait_at_most(self._nudged.wait(), self._until_due())
            self._nudged.clear()
            if self._last_try is not None:  # the rate limit; and while the broker is away, the retry pace
                hold = self._last_try + self.settings.min_report_interval_s - time.monotonic()
                if hold > 0:
                    await asyncio.sleep(hold)
            await self.report_if_due()

    def _until_due(self) -> float:
        """Seconds until the state is looked at again: the min interval, or sooner when the heartbeat is due."""
        look = self.settings.min_report_interval_s
        if self._last_sent is None:
            return 0.0 if self._last_try is None else look
        return max(0.0, min(look, self._last_sent + self.settings.report_interval_s - time.monotonic()))

    async def report_if_due(self) -> bool:
        """Publishes REPORTED if it changed or the heartbeat is due; True if it went out."""
        reported = await self.build()
        due = self._last_sent is None or time.monotonic() - self._last_sent >= self.settings.report_interval_s
        if not due and steady(reported) == self._last_steady:
            return False
        return await self._send(reported)

    async def final(self) -> None:
        """One last report, on a clean stop (bounded: a broker gone does not hold the stop up)."""
        try:
            # "stopped": operators see a clean stop at once, not two report intervals later
            await wait_at_most(self._send(await self.build() | {"state": "stopped"}), FINAL_TIMEOUT_S)
        except Exception as exc:  # a stop goes on whatever the broker says
            log.debug("last report not sent", extra={"error": str(exc)})

    async def _send(self, reported: dict[str, Any]) -> bool:
        payload = encode(reported_update(reported))
        self._last_try = time.monotonic()
        if not await self.publish(self.fleet.topics.reported, payload, self.fleet.retained):
            return False
        self._last_sent = time.monotonic()
        self._last_steady = steady(reported)
        self.sent += 1
        metrics.REPORTS.inc()
        return True

    async def build(self) -> dict[str, Any]:
        """REPORTED as the site is now (before fitting it into a shadow)."""
        watch = self.watch
        return {
            "schema": REPORTED_SCHEMA,
            "site": self.site,
            "thing": self.fleet.thing,
            "edgesight": self.version,
            "state": "running",
            "reported_at": round(time.time(), 3),
            "interval_s": self.settings.report_interval_s,
            "console_url": self.settings.console_url,
            "models": await self._models(),
            "apps": {
                name: {"state": seen.state, "error": getattr(seen.message, "error", "")}
                for name, seen in sorted(watch.apps.items())
            },
            "cameras": {
                name: {"state": seen.state, "fps": round(getattr(seen.message, "fps", 0.0), 2)}
                for name, seen in sorted(watch.cameras.items())
            },
            "services": {
                key: {"state": seen.state, "uptime_s": round(seen.message.uptime_s + time.monotonic() - seen.arrived)}
                for key, seen in sorted(watch.services.items())
            },
            "spool": self._spool(),
            "events_last_hour": watch.events_last_hour(),
            "last_error": watch.last_error,
            "job": self.job(),
            "desired": self.desired(),
        }

    async def _models(self) -> dict[str, dict[str, str]]:
        """Installed models: the current version, its signer, and what inference says it loaded."""
        try:
            rows = await asyncio.to_thread(self.store.list)
        except (OSError, ValueError, EdgeSightError) as exc:  # a history.json that does not read
            if str(exc) != self._store_error:
                log.warning("model store not readable", extra={"path": str(self.store.root), "error": str(exc)})
            self._store_error = str(exc)
            return {}
        self._store_error = None
        loaded: dict[str, str] = {}
        for seen in self.watch.healths("inference"):
            for name, detail in seen.message.detail.items():
                loaded.setdefault(name, detail)
        models = {}
        for row in rows:
            current = row.get("current")
            if not isinstance(current, str):
                continue
            entry: dict[str, Any] = next((e for e in row.get("installed", []) if e.get("version") == current), {})
            models[row["name"]] = {
                "version": current,
                "signer": str(entry.get("signer", "")),
                "loaded": loaded.get(row["name"], ""),
            }
        return models

    def _spool(self) -> dict[str, float]:
        """The uplink's spool as its Health counts it (``spooled``, ``oldest_s``); zeros when unheard."""
        depth, oldest = 0.0, 0.0
        for seen in self.watch.healths("uplink"):
            depth += seen.message.counters.get("spooled", 0.0)
            oldest = max(oldest, seen.message.counters.get("oldest_s", 0.0))
        return {"depth": int(depth), "oldest_s": oldest}
