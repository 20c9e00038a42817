"""The fleet service: this site as one of a fleet, over MQTT in AWS IoT's shapes.

It hears the site's bus (``health``, ``cameras``, ``apps``, ``detections``, the ``events`` copy) into a
:class:`~services.fleet.watch.SiteWatch`; holds one MQTT connection (:class:`MqttLink`: TLS and mutual
TLS as the uplink's MQTT sink, connected again with backoff); and through it reports the site's state
(:mod:`services.fleet.reporter`), runs signed jobs (:mod:`services.fleet.jobs`) and keeps desired
models (:mod:`services.fleet.desired`). A job commands services with a bus ``Control`` (reload,
shutdown: the rights ``common.registry`` gives the fleet). What MQTT brings is data, never a command:
a message that is not of its topic's shape is dropped, counted and logged, never fatal.

No last will: a site is offline when its heartbeat stops (twice ``report_interval_s``), on every broker
alike, and a will's fixed payload would overwrite the retained reported state that tells what the
site last was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

import aiomqtt

from common._compat import TaskGroup
from common.backoff import RestartBackoff
from common.bus import Subscriber
from common.config import SiteConfig
from common.config.uplink import MqttSink
from common.errors import ConfigError, EdgeSightError
from common.fleet.ledger import Ledger
from common.fleet.shapes import MAX_PAYLOAD_BYTES, MalformedMessage
from common.fleet.topics import FleetTopics
from common.logging import DropTally
from common.mqtt import client_options, keep_connected
from common.service import Service, ServiceState
from common.trust.keys import load_trusted_keys
from contracts import Control, topic
from contracts.topics import Stream
from services.fleet import metrics
from services.fleet.context import JobContext, JobFailed
from services.fleet.desired import DesiredModels
from services.fleet.fleet_site import FleetSite
from services.fleet.jobs import JobRunner, Operate
from services.fleet.operations import run_operation
from services.fleet.reporter import Reporter
from services.fleet.watch import SiteWatch

__all__ = ["FleetService", "LinkPart", "MqttLink"]

log = logging.getLogger(__name__)

HEARD: tuple[Stream, ...] = ("health", "cameras", "apps", "detections", "events")
STABLE_S = 30.0  # a connection that lasted this long starts the next reconnect's backoff afresh
PUBLISH_TIMEOUT_S = 10.0
MAX_QUEUED = 1000  # messages received and not yet handled; past it the client drops (a flood is not ours)
MAX_PACKET_BYTES = 2 * MAX_PAYLOAD_BYTES  # the broker sends nothing larger: room for the topic and headers
DROPPED_LOG_S = 60.0  # dropped messages are said at most this often, with how many of each reason


class LinkPart(Protocol):
    """What shares the connection: its subscriptions, told of each (re)connection and loss, offered
    every message (``take`` answers whether it was its topic)."""

    def subscriptions(self) -> list[str]: ...

    async def connected(self) -> None: ...

    def disconnected(self) -> None: ...

    async def take(self, topic: str, payload: bytes) -> bool: ...


class MqttLink:
    """One MQTT connection at a time (aiomqtt), subscribed for its parts, made again after a loss
    (1 s doubling to 30 s; a connection that lasted ``STABLE_S`` starts afresh). ``farewell`` runs
    before a clean stop closes the connection (the last report)."""

    def __init__(
        self,
        settings: MqttSink,
        parts: Sequence[LinkPart] = (),
        *,
        farewell: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.parts = list(parts)
        self.farewell = farewell
        self.client: aiomqtt.Client | None = None
        self.connections = 0
        self._backoff = RestartBackoff(first_s=1.0, max_s=30.0, stable_after_s=STABLE_S)
        self._said: str | None = None  # the last connection trouble said: each kind once
        self._drops = DropTally(log, "fleet messages dropped", metrics.MESSAGE_REJECTIONS, DROPPED_LOG_S)

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def publish(self, topic: str, payload: bytes, retain: bool) -> bool:
        """QoS 1; True once the broker acknowledged it, False while disconnected or when it failed."""
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=PUBLISH_TIMEOUT_S)
        except (aiomqtt.MqttError, ValueError) as exc:
            log.debug("fleet publish failed", extra={"topic": topic, "error": str(exc)})
            return False
        return True

    async def run(self) -> None:
        """Forever: connected, or waiting to connect again."""
        await keep_connected(self._session, self._backoff, self._trouble)

    def _trouble(self, exc: BaseException | None, _: float) -> None:
        if exc is None:  # aiomqtt ends a lost connection with an MqttError: nothing to say
            return
        what = "connection lost; reconnecting" if self.connections else "cannot connect; retrying"
        if what != self._said:  # a broker away for hours is said once, not every 30 s
            log.warning(f"fleet mqtt: {what}", extra={"host": self.settings.host, "error": str(exc)})
        self._said = what

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            # subscribed afresh each time (clean): what is retained comes again, AWS is asked again. MQTT v5 with
            # a Maximum Packet Size: the broker drops a larger message for us instead of paho reading it whole
            **client_options(
                self.settings, self.settings.client_id, clean_session=True, max_packet_bytes=MAX_PACKET_BYTES
            ),
            max_queued_incoming_messages=MAX_QUEUED,
        )

    async def _session(self) -> None:
        async with self._client() as client:
            self.client, self._said = client, None
            self.connections += 1
            metrics.MQTT_CONNECTED.set(1)
            log.info("fleet mqtt connected", extra={"host": self.settings.host, "client_id": client.identifier})
            try:
                for part in self.parts:
                    for subscription in part.subscriptions():
                        await client.subscribe(subscription, qos=1)
                for part in self.parts:
                    await part.connected()
                async for message in client.messages:
                    await self.deliver(str(message.topic), message.payload)
            except asyncio.CancelledError:
                if self.farewell is not None:
                    await self.farewell()
                raise
            finally:
                self.client = None
                metrics.MQTT_CONNECTED.set(0)
                for part in self.parts:
                    part.disconnected()

    async def deliver(self, topic: str, payload: object) -> None:
        """Offers a message to each part until one takes it; a bad one is dropped, counted and said."""
        if not isinstance(payload, bytes | bytearray):
            self._drop("malformed", topic, f"a payload of type {type(payload).__name__}")
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._drop("too_large", topic, f"{len(payload)} bytes")
            return
        for part in self.parts:
            try:
                if await part.take(topic, bytes(payload)):
                    return
            except MalformedMessage as bad:
                self._drop("malformed", topic, str(bad))
                return
            except Exception as exc:  # a part's bug: this message is lost, never the service
                log.error("fleet message not handled", exc_info=True, extra={"topic": topic[:200]})
                self._drop("malformed", topic, f"{type(exc).__name__}: {exc}")
                return
        self._drop("topic", topic, "no part of the fleet service subscribed to it")

    def _drop(self, reason: str, topic: str, detail: str) -> None:
        metrics.MESSAGES_REJECTED.labels(reason).inc()
        self._drops.add(reason, last_reason=reason, last_topic=topic[:200], last_detail=detail[:300])
        self._drops.flush()


class FleetService(Service):
    """This site in a fleet: reported state, signed jobs and desired models over MQTT (AWS IoT's shapes)."""

    name = "fleet"

    def setup(self) -> None:
        fleet = self.config.fleet
        if fleet is None or fleet.mqtt is None or fleet.thing is None:
            raise ConfigError([f"{self.config.source}: fleet: missing; the fleet service runs where the site has it"])
        state_dir = Path(self.config.site.state_dir)
        self.site = FleetSite(
            site=self.config.site.name,
            topics=FleetTopics(fleet.topic_root, fleet.thing),
            mode=fleet.jobs_mode,
            trusted=load_trusted_keys(fleet.trusted_operators),
            allow_apps=fleet.allow_apps,
            job_timeout_s=fleet.job_timeout_s,
            packages=fleet.packages,
        )
        self.watch = SiteWatch()
        self.context = JobContext(
            config=self.config,
            audit=self.audit_trail,
            watch=self.watch,
            publish=self._send_control,
            site_file=Path(self.config.source),
            state_dir=state_dir,
        )
        self.ledger = Ledger(state_dir / "fleet" / "ledger.json")
        self.link = MqttLink(fleet.mqtt)
        self.build_parts(run_operation)

    def build_parts(self, operate: Operate) -> None:
        """The runner, desired models and the reporter, sharing the link (and ``operate``: tests give theirs)."""
        turns = asyncio.Lock()  # one change at a time: a job, or a desired model
        shared = (self.site, self.ledger, self.context, operate, self.link.publish, self.audit)
        self.jobs = JobRunner(*shared, one_at_a_time=turns)
        self.desired = DesiredModels(*shared, one_at_a_time=turns)
        self.reporter = Reporter(
            self.config,
            self.site,
            self.watch,
            self.link.publish,
            job=lambda: dict(self.jobs.state.reported()),
            desired=self.desired.reported,
        )
        self.jobs.on_change = self.desired.on_change = self.reporter.nudge
        self.link.parts = [self.jobs, self.desired, self.reporter]
        self.link.farewell = self.reporter.final

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        if config.fleet is None:
            return [f"{config.source}: fleet: missing; the fleet service runs where the site has it"]
        try:
            load_trusted_keys(config.fleet.trusted_operators)
        except EdgeSightError as exc:
            return [f"{config.where('fleet', 'trusted_operators')}: {exc}"]
        return []

    async def main(self) -> None:
        topics = [topic(stream) for stream in HEARD]
        async with Subscriber(self.config.bus.subscribe, self.name, topics, hwm=256) as bus:
            self.set_state(ServiceState.READY)
            log.info("fleet started", extra={"thing": self.site.thing, "mode": self.site.mode})
            async with TaskGroup() as group:
                group.create_task(self._hear(bus), name="bus")
                group.create_task(self.link.run(), name="mqtt")
                group.create_task(self.jobs.run(), name="jobs")
                group.create_task(self.desired.run(), name="desired")
                group.create_task(self.reporter.run(), name="reporter")

    async def _hear(self, bus: Subscriber) -> None:
        async for received in bus:
            self.watch.feed(received.message)

    async def _send_control(self, stream: str, key: str, message: Control) -> None:
        if self.publisher is None:
            raise JobFailed("the bus is not open yet")
        await self.publisher.publish(stream, key, message)

    def health_counters(self) -> dict[str, float]:
        state = self.jobs.state
        return {
            "connected": 1.0 if self.link.connected else 0.0,
            "jobs_succeeded": state.succeeded,
            "jobs_failed": state.failed,
            "jobs_refused": state.rejected,
            "reports": self.reporter.sent,
        }

    def health_detail(self) -> dict[str, str]:
        return {
            "mqtt": "connected" if self.link.connected else "disconnected",
            "thing": self.site.thing,
            "mode": self.site.mode,
            "job": self.jobs.state.current or "none",
        }
