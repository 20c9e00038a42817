"""The console service: a web server on ``console.port`` and the bus streams it shows.

It listens to every camera's frames, detections, states and scenes (newest wins), every service's
health, the apps service's status and video of each Panorama app (newest wins; only apps and
cameras the site file lists), and the events rules publishes for local consumers, which it keeps in
its own history. It changes one thing: a camera's rules in the site file, after which it asks rules to ``reload``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

from aiohttp import web

from common._compat import wait_at_most
from common.bus import Subscriber
from common.config import SiteConfig
from common.config.site_file import SiteFile
from common.errors import ConfigError, StartupError
from common.service import Service, ServiceState
from common.shm import FrameReaders
from contracts import Control, Event, topic
from services.console import metrics
from services.console.analytics import Analytics
from services.console.apps import Apps, video_key
from services.console.auth import Auth
from services.console.context import ConsoleContext
from services.console.fleet import FleetFollower, fleet_broker, fleet_problems
from services.console.history import EventHistory
from services.console.live import Live
from services.console.mjpeg import Changes
from services.console.web import build_app

__all__ = ["ConsoleService"]

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 60.0
EVENT_BATCH = 200
APP_HWM = 64  # app pictures are up to 8 MiB each: a console that falls behind skips, it does not hoard


class ConsoleService(Service):
    """Serves the web console and its JSON API."""

    name = "console"

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        console = config.console
        if console is None:
            return [f"{config.where('console')}: no console: section; the console serves nothing without one"]
        if console.admin_password is None or not console.admin_password.get_secret_value():
            return [
                f"{config.where('console', 'admin_password')}: the console has no default password: set "
                "admin_password (e.g. ${file:/run/secrets/console_password}) and start it again"
            ]
        return fleet_problems(config)

    def setup(self) -> None:
        problems = self.check(self.config)
        if problems:
            raise ConfigError(problems)
        console = self.config.console
        assert console is not None and console.admin_password is not None
        self.settings = console
        self.auth = Auth(
            console.admin_password.get_secret_value(),
            [token.get_secret_value() for token in console.api_tokens],
            session_s=console.session_hours * 3600,
            trusted_proxies=console.trusted_proxies,
        )
        self.live = Live(FrameReaders(self.config.site.shm_dir))
        self.history = EventHistory(
            Path(self.config.site.state_dir) / "console",
            retention_days=console.retention_days,
            max_mb=console.max_mb,
        )
        self.apps = Apps()
        broker = fleet_broker(self.config) if console.fleet else None
        self.fleet = FleetFollower(broker) if broker is not None else None  # every site's reported state
        # live views wait on these: a camera's by its name, an app's video by apps.video_key
        self.changes = Changes()
        # what the HTTP handlers may use (see services/console/context.py): never the service itself
        self.context = ConsoleContext(
            config=self.config,
            auth=self.auth,
            site_file=SiteFile(Path(self.config.source)),
            live=self.live,
            history=self.history,
            apps=self.apps,
            analytics=Analytics(Path(self.config.site.state_dir) / (console.analytics_db or "rules.sqlite")),
            changes=self.changes,
            audit=self.audit,
            rules_saved=self.rules_saved,
            fleet=self.fleet,
        )

    async def main(self) -> None:
        runner = web.AppRunner(build_app(self.context), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(
                    f"console: cannot serve on {self.settings.host}:{self.settings.port} (console.port): "
                    f"{exc.strerror or exc}"
                ) from None
            bus = self.config.bus
            live_streams = [topic(stream) for stream in ("frames", "detections", "cameras", "scene", "health")]
            async with (
                Subscriber(bus.subscribe, self.name, live_streams, hwm=1000) as live,
                Subscriber(bus.subscribe, self.name, [topic("apps")], hwm=APP_HWM) as apps,
                Subscriber(bus.subscribe, self.name, [topic("events")], hwm=10_000) as events,
            ):
                self.set_state(ServiceState.READY)
                log.info("console serving", extra={"url": f"http://{self.settings.host}:{self.settings.port}/"})
                fleet = [self.fleet.run()] if self.fleet is not None else []
                await asyncio.gather(
                    self._follow(live), self._follow_apps(apps), self._keep_events(events), self._prune(), *fleet
                )
        finally:
            self.changes.close()
            await runner.cleanup()
            self.history.close()

    async def _follow(self, live: Subscriber) -> None:
        async for received in live:
            camera = self.live.on_message(received.message)
            if camera is not None:
                self.changes.notify(camera)

    async def _follow_apps(self, apps: Subscriber) -> None:
        async for received in apps:
            changed = self.apps.on_message(received.key, received.message, self.config.apps)
            if changed is not None:
                self.changes.notify(video_key(*changed))

    async def _keep_events(self, events: Subscriber) -> None:
        while True:
            batch = [await events.receive()]
            while len(batch) < EVENT_BATCH:
                more = asyncio.ensure_future(events.receive())
                if not await wait_at_most(more, 0.05):
                    break
                batch.append(more.result())
            kept = [received.message for received in batch if isinstance(received.message, Event)]
            if kept:
                added = await asyncio.to_thread(self.history.add, kept)
                metrics.EVENTS_STORED.inc(added)

    async def _prune(self) -> None:
        while True:
            removed = await asyncio.to_thread(self.history.prune)
            if removed:
                metrics.EVENTS_PRUNED.inc(removed)
                log.info("history pruned", extra={"events": removed})
            metrics.EVENTS_KEPT.set(await asyncio.to_thread(self.history.count))
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def rules_saved(self, config: SiteConfig, camera: str) -> None:
        """The site file has new rules for ``camera``: show them, and have rules apply them."""
        config.source = self.config.source
        self.config = self.context.config = config
        if self.publisher is not None:
            command = Control(id=str(uuid.uuid4()), command="reload", camera=camera, ts_ns=time.time_ns())
            await self.publisher.publish("control", "rules", command)
        log.info("rules saved", extra={"camera": camera})

    def health_counters(self) -> dict[str, float]:
        return {
            "sessions": len(self.auth.sessions),
            "cameras": len(self.live.cameras),
            "apps": len(self.apps.statuses),
            **({"fleet_sites": len(self.fleet.reported)} if self.fleet is not None else {}),
        }
