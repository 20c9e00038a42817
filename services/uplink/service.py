"""The uplink service: events from rules into the spool (then acknowledged), out to every sink.

Privacy guard: an event carries image bytes onward only if its camera's rule asked for a snapshot;
anything else is stripped before it is stored, and counted.

Each event is checked first (:mod:`services.uplink.agreement`): one that disagrees with its topic or
the site file is refused at once, with the reason (its sender drops it). An id the spool holds or
remembers is acknowledged again, once the batch has committed, and neither stored nor delivered again;
unless the body differs from the one stored with it: that is refused (``conflict``), never stored (the
id is the first event's; an event sent with an id it does not own is never delivered in its place).
An event of an external rule is stored as such: when the spool is full those go first, and never
push out the rules service's (:mod:`services.uplink.spool`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec

from common._compat import TaskGroup
from common.audit import audit_path
from common.bus import Delivery, EventReceiver, Subscriber
from common.service import Service, ServiceState
from contracts import CameraStatus, Event, Health, Refusal, topic
from services.uplink import metrics
from services.uplink.agreement import SiteNames
from services.uplink.audit import POLL_S as AUDIT_POLL_S
from services.uplink.audit import spool_new_records
from services.uplink.sinks import (
    CloudWatchReporter,
    JsonlWriter,
    MqttPublisher,
    S3Uploader,
    Sink,
    SiteFigure,
    WebhookPoster,
)
from services.uplink.spool import Outcome, Spool, digest

__all__ = ["UplinkService"]

log = logging.getLogger(__name__)

RECEIVE_BATCH = 200
# nothing of the event that holds the id: it may be another sender's
CONFLICT = "this id was already taken by a different event: not stored (a new event needs an id of its own)"


class UplinkService(Service):
    """Store and forward: nothing acknowledged is lost, nothing unasked-for leaves."""

    name = "uplink"

    def setup(self) -> None:
        uplink = self.config.uplink
        state = Path(self.config.site.state_dir)
        self.spool = Spool(state / "uplink-spool.sqlite", max_bytes=uplink.spool.max_mb << 20, fsync=uplink.spool.fsync)
        site = self.config.site.name
        self.names = SiteNames(self.config)
        self.depth: tuple[int, float] = (0, 0.0)
        self.health: dict[tuple[str, str], Health] = {}  # (service, instance) -> its latest Health
        self.cameras: dict[str, CameraStatus] = {}
        self.sinks: list[Sink] = []
        if uplink.s3 is not None:
            self.sinks.append(S3Uploader(uplink.s3, site, self.spool))
        if uplink.mqtt is not None:
            waits_for_s3 = uplink.s3 is not None
            self.sinks.append(
                MqttPublisher(uplink.mqtt, site, self.spool, waits_for_s3=waits_for_s3, site_config=self.config)
            )
        if uplink.cloudwatch is not None:
            self.sinks.append(CloudWatchReporter(uplink.cloudwatch, site))
        if uplink.jsonl is not None:
            self.sinks.append(JsonlWriter(uplink.jsonl, state))
        if uplink.webhook is not None:
            self.sinks.append(WebhookPoster(uplink.webhook))
        if not self.sinks:
            log.warning("no sinks configured: events are spooled and kept")

    def guard(self, event: Event) -> Event:
        """Strips a snapshot that no rule asked for: no image data leaves by accident."""
        if event.snapshot is None:
            return event
        camera = self.names.latest.cameras.get(event.camera)  # a rule added since start: as the file says now
        rule = camera.rules.get(event.rule) if camera is not None else None
        if rule is not None and rule.snapshot:
            return event
        metrics.DROPPED.labels("privacy", "snapshot").inc()
        log.warning(
            "snapshot removed: its rule does not ask for one", extra={"camera": event.camera, "rule": event.rule}
        )
        return msgspec.structs.replace(event, snapshot=None)

    async def main(self) -> None:
        try:
            receiver = EventReceiver(self.config.bus.events.receive, self.name, on_refused=_count_refused)
            async with receiver as inbox:
                self.set_state(ServiceState.READY)
                async with TaskGroup() as group:
                    group.create_task(self._receive(inbox), name="receive")
                    group.create_task(self._gauges(), name="gauges")
                    group.create_task(self._watch_site(), name="watch-site")
                    group.create_task(self._follow_audit(), name="audit")
                    for sink in self.sinks:
                        group.create_task(sink.run(self.spool), name=f"sink-{sink.name}")
                        if isinstance(sink, CloudWatchReporter):
                            group.create_task(sink.publish_metrics(self.site_figures), name="cloudwatch-metrics")
                        if isinstance(sink, MqttPublisher):
                            group.create_task(sink.publish_stats(self.stats), name="mqtt-stats")
                            group.create_task(sink.publish_home_assistant(), name="home-assistant")
                            group.create_task(sink.keep_connected(), name="mqtt-connection")
        finally:
            for sink in self.sinks:
                await sink.close()
            self.spool.close()

    async def _receive(self, inbox: EventReceiver) -> None:
        while True:
            batch = await inbox.receive_batch(RECEIVE_BATCH)  # what is already here: one transaction
            batch = await self._agreeing(inbox, batch)
            if not batch:
                continue
            digests = [digest(d.event) for d in batch]  # as it came: the guard may change with the site file
            events = [self.guard(d.event) for d in batch]
            external = [self.names.is_external(event) for event in events]  # dropped first when the spool is full
            # committed (and fsynced, off the event loop) before anyone hears "ack"
            outcomes = await asyncio.to_thread(self.spool.store, events, self.targets(events), None, digests, external)
            metrics.DUPLICATES.inc(outcomes.count("duplicate"))  # safe already: acknowledged again all the same
            await inbox.ack(d for d, outcome in zip(batch, outcomes, strict=True) if outcome != "conflict")
            await self._refuse_conflicts(inbox, batch, outcomes)
            self.wake_sinks()

    @staticmethod
    async def _refuse_conflicts(inbox: EventReceiver, batch: list[Delivery], outcomes: list[Outcome]) -> None:
        refused: dict[bytes, list[Refusal]] = {}
        for delivery, outcome in zip(batch, outcomes, strict=True):
            if outcome == "conflict":
                refused.setdefault(delivery.peer, []).append(
                    Refusal(id=delivery.event.id, reason="conflict", detail=CONFLICT)
                )
        for peer, refusals in refused.items():
            await inbox.refuse(peer, refusals)

    async def _agreeing(self, inbox: EventReceiver, batch: list[Delivery]) -> list[Delivery]:
        """The deliveries that agree with their topic and the site file; the others are refused now
        (nothing to wait for: they will never be stored)."""
        kept: list[Delivery] = []
        refused: dict[bytes, list[Refusal]] = {}
        for delivery in batch:
            refusal = await self.names.check(delivery)
            if refusal is None:
                kept.append(delivery)
            else:
                refused.setdefault(delivery.peer, []).append(refusal)
        for peer, refusals in refused.items():
            await inbox.refuse(peer, refusals)
        return kept

    def targets(self, events: list[Event]) -> dict[str, list[str]]:
        return {e.id: [s.name for s in self.sinks if s.wants(e)] for e in events}

    def wake_sinks(self) -> None:
        for sink in self.sinks:
            sink.wake.set()

    async def _follow_audit(self) -> None:
        """The site's audit trail (common.audit), spooled as ``audit`` events like any other."""
        path = audit_path(self.config.site.state_dir)
        while True:
            if await asyncio.to_thread(spool_new_records, path, self.spool, self.targets):
                self.wake_sinks()
            else:
                await asyncio.sleep(AUDIT_POLL_S)

    async def _watch_site(self) -> None:
        """Every service's Health and every camera's status: what stats and CloudWatch metrics report."""
        topics = [topic("health"), topic("cameras")]
        async with Subscriber(self.config.bus.subscribe, self.name, topics) as site:
            async for received in site:
                message = received.message
                if isinstance(message, Health):
                    self.health[message.service, message.instance] = message
                elif isinstance(message, CameraStatus):
                    self.cameras[message.camera] = message
                    for sink in self.sinks:
                        if isinstance(sink, MqttPublisher):
                            sink.camera_status(message)

    def stats(self) -> dict[str, object]:
        """The site at a glance, for ``<prefix>/<site>/stats``: services, cameras, the spool."""
        return {
            "services": {
                f"{service}/{instance}": {"state": h.state, "uptime_s": round(h.uptime_s), "counters": h.counters}
                for (service, instance), h in sorted(self.health.items())
            },
            "cameras": {name: {"state": c.state, "fps": round(c.fps, 2)} for name, c in sorted(self.cameras.items())},
            "spool": {"events": self.depth[0], "oldest_s": round(self.depth[1], 1)},
        }

    def site_figures(self) -> list[SiteFigure]:
        """(metric, dimensions, value, unit) for CloudWatch: camera fps and inference time per model."""
        figures = [("CameraFps", {"Camera": name}, status.fps, "Count/Second") for name, status in self.cameras.items()]
        for (service, _), health in self.health.items():
            if service == "inference":
                for key, value in health.counters.items():
                    if key.startswith("inference_ms."):
                        figures.append(("InferenceTime", {"Model": key.split(".", 1)[1]}, value, "Milliseconds"))
        return figures

    async def _gauges(self) -> None:
        while True:
            self.depth = await asyncio.to_thread(self.spool.depth)
            metrics.SPOOL_DEPTH.set(self.depth[0])
            metrics.SPOOL_OLDEST.set(self.depth[1])
            metrics.SPOOL_BYTES.set(await asyncio.to_thread(self.spool.size))
            await asyncio.sleep(1.0)

    def health_counters(self) -> dict[str, float]:
        depth, oldest = self.depth  # as of the last gauge update: the spool may be closed by now
        counters: dict[str, float] = {"spooled": depth, "oldest_s": round(oldest, 1)}
        for sink in self.sinks:
            counters[f"{sink.name}_up"] = 1.0 if sink.connected else 0.0
        return counters


def _count_refused(refused: list[Refusal]) -> None:
    for refusal in refused:
        metrics.REFUSED.labels(refusal.reason).inc()  # the receiver's own reasons: a bounded set
