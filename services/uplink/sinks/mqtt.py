"""The MQTT sink: events published with QoS 1, line counts and interval reports retained, the site's
availability and stats, and (``home_assistant: true``) Home Assistant's discovery configs and values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from common._compat import wait_at_most
from common.config import SiteConfig
from common.config.uplink import MqttSink
from common.mqtt import client_options
from contracts import CameraStatus
from services.uplink import metrics
from services.uplink.home_assistant import Availability
from services.uplink.home_assistant_feed import HomeAssistantFeed, Retained, retained_topic
from services.uplink.sinks.base import BATCH, Receipt, Sink, upstream_json
from services.uplink.spool import Spool, Spooled

__all__ = ["MqttPublisher"]

log = logging.getLogger(__package__)

INFLIGHT = 100  # QoS 1 messages awaiting PUBACK at once (paho's default is 20)
ONLINE, OFFLINE = b"online", b"offline"
HOME_ASSISTANT_RETRY_S = 5.0  # what a failed publish left for Home Assistant is tried again this often
LOST_LOG_INTERVAL_S = 60.0  # "connection lost" at most once a minute (a client-id takeover fight), with a count
STABLE_S = 30.0  # a connection that lasted this long starts the next reconnect's backoff afresh


class MqttPublisher(Sink):
    """Events to ``<prefix>/<site>/events`` (QoS 1: confirmed by PUBACK), retained: line counts at
    ``<prefix>/<site>/<camera>/<rule>/count``, each rule's latest ``count_report`` at
    ``<prefix>/<site>/reports/<camera>/<rule>``, availability at ``<prefix>/<site>/available``.
    With ``site_config`` (the uplink's), the retained topics of a rule gone from the site file are cleared,
    and Home Assistant's discovery is kept (:mod:`services.uplink.home_assistant_feed`)."""

    name = "mqtt"

    def __init__(
        self, config: MqttSink, site: str, spool: Spool, *, waits_for_s3: bool, site_config: SiteConfig | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.spool = spool
        self.waits_for_s3 = waits_for_s3
        self.base = f"{config.topic_prefix}/{site}"
        self.available_topic = f"{self.base}/available"
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._connecting = asyncio.Lock()  # the sink's loop and Home Assistant's share one connection
        self._watch: asyncio.Task[None] | None = None  # notices the connection dropping, even when idle
        self._lost = asyncio.Event()  # set when a connection was lost: :meth:`keep_connected` reconnects
        self._connected_at = 0.0
        self._backoff = 1.0
        self._logged: dict[str, tuple[float, int]] = {}  # message -> (when last logged, suppressed since)
        availability = Availability(self.available_topic, ONLINE.decode(), OFFLINE.decode())
        self.home_assistant = (
            HomeAssistantFeed.for_site(site_config, self.base, availability) if site_config is not None else None
        )

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._client is None:
                await self._open()
            return self._client

    async def _open(self) -> None:
        import aiomqtt

        will = aiomqtt.Will(self.available_topic, OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(
            **client_options(self.config, self.config.client_id or f"edgesight-{self.site}"),
            will=will,
            clean_session=False,
            max_inflight_messages=INFLIGHT,
        )
        # a whole batch (each event with its retained messages, Home Assistant's configs after a reconnect, the
        # stats) awaits its PUBACKs at once by design: not worth a warning
        client.pending_calls_threshold = 10 * BATCH
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except Exception:
            await stack.aclose()
            raise
        self._client, self._stack = client, stack
        self._connected_at = time.monotonic()
        self._watch = asyncio.create_task(self._watch_connection(client), name="mqtt-watch")
        await client.publish(self.available_topic, ONLINE, qos=1, retain=True)
        log.info("mqtt connected", extra={"host": self.config.host, "port": self.config.port})
        self.connected = True
        metrics.CONNECTED.labels(self.name).set(1)
        if self.home_assistant is not None:
            self.home_assistant.reconnected()

    async def _watch_connection(self, client: Any) -> None:
        """Waits for ``client``'s connection to drop (aiomqtt ends its message iterator with an MqttError
        then; nothing is subscribed, so no message comes): a broker gone, or another client taking over
        the client id, which the broker answers by closing this connection without the last will."""
        try:
            async for _ in client.messages:
                pass
            reason = "disconnected"
        except Exception as exc:
            reason = str(exc.__cause__ or exc)
        await self._connection_lost(client, reason)

    async def _connection_lost(self, client: Any, reason: str) -> None:
        """``client`` is broken (seen by the watcher, the stats or Home Assistant): the sink is down until
        :meth:`keep_connected` (or the next batch) connects again, with ``online`` and the retained state."""
        if client is None or self._client is not client:
            return  # dropped already: said once
        if time.monotonic() - self._connected_at >= STABLE_S:
            self._backoff = 1.0
        self.connected = False
        metrics.CONNECTED.labels(self.name).set(0)
        metrics.FAILED.labels(self.name).inc()
        # the client id said: a connection dropped again and again is often another client using the same id
        self._warn("mqtt: connection lost; reconnecting", client_id=client.identifier, error=reason)
        await self._disconnect()
        self._lost.set()

    def _warn(self, message: str, **extra: Any) -> None:
        """``message`` at most once every ``LOST_LOG_INTERVAL_S``, then with how many were left out."""
        now = time.monotonic()
        last, suppressed = self._logged.get(message, (-1e18, 0))
        if now - last < LOST_LOG_INTERVAL_S:
            self._logged[message] = (last, suppressed + 1)
            return
        self._logged[message] = (now, 0)
        if suppressed:
            extra["suppressed"] = suppressed
        log.warning(message, extra={"host": self.config.host, "port": self.config.port, **extra})

    async def keep_connected(self) -> None:
        """After a lost connection, connects again with the sink's backoff (1 s doubling to 30 s; a
        connection that did not last ``STABLE_S`` keeps the backoff growing, so a client fighting for the
        same client id takes turns with this one, slowly)."""
        while True:
            await self._lost.wait()
            self._lost.clear()
            failed = False
            while self._client is None:
                await asyncio.sleep(self._backoff * random.uniform(0.8, 1.2))
                self._backoff = min(self._backoff * 2, 30.0)
                try:
                    await self._connect()
                except Exception as exc:
                    if not failed:  # the warning was "connection lost"; why reconnecting fails, once
                        log.info("mqtt: reconnect failed; retrying", extra={"error": str(exc)})
                    failed = True
                    metrics.CONNECTED.labels(self.name).set(0)
                    self.connected = False
                    await self._disconnect()
                    continue
            self.wake.set()  # what the spool holds goes now, not at the sink loop's next retry

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        """Publishes a batch with up to ``INFLIGHT`` messages awaiting their PUBACK at once; a seq is
        confirmed only when its own PUBACK (and its count's) came back."""
        try:
            client = await self._connect()
            ready = await self._ready(batch)
            results = await asyncio.gather(
                *(self._publish(client, item, receipt) for item in ready), return_exceptions=True
            )
            if self.home_assistant is not None:  # the values of what was delivered, then Home Assistant told
                confirmed = set(receipt.confirmed)
                await self.home_assistant.take(item.event for item in ready if item.seq in confirmed)
                await self.home_assistant.publish(client, self.config.qos)
            failure = next((result for result in results if isinstance(result, BaseException)), None)
            if failure is not None:
                raise failure
        except Exception:
            await self._disconnect()
            raise

    async def _ready(self, batch: list[Spooled]) -> list[Spooled]:
        """The events of ``batch`` that may go now: an event that names its S3 key is published once
        the upload is done."""
        uploading = [
            item.seq
            for item in batch
            if self.waits_for_s3 and item.event.snapshot is not None and item.event.snapshot.data and not item.s3_key
        ]
        pending_upload = await asyncio.to_thread(self.spool.waiting_among, "s3", uploading) if uploading else set()
        return [item for item in batch if item.seq not in pending_upload]

    async def _publish(self, client: Any, item: Spooled, receipt: Receipt) -> None:
        """The event's messages, handed to paho together and in order (a retained message of a later
        event never goes before an earlier one's); confirmed once every PUBACK came back."""
        event = item.event
        payload = upstream_json(item)
        messages = [(f"{self.base}/events", payload, False)]
        retained: list[Retained] = []
        if event.counts and event.event_type == "line_cross":
            retained.append("count")
            messages.append(
                (retained_topic(self.base, "count", event.camera, event.rule), json.dumps(event.counts), True)
            )
        if event.event_type == "count_report":  # a late subscriber finds each rule's latest report
            retained.append("report")
            messages.append((retained_topic(self.base, "report", event.camera, event.rule), payload, True))
        invalid = [topic for topic, _, _ in messages if not _valid_topic(topic)]
        if invalid:  # paho would refuse it on every retry: this event's fault, never an outage
            receipt.reject(item, f"not a valid MQTT topic name: {invalid[0][:200]!r}")
            return
        if self.home_assistant is not None:  # remembered first: cleared once the rule is gone, even after a crash
            for what in retained:
                self.home_assistant.track(what, event.camera, event.rule)
        results = await asyncio.gather(
            *(client.publish(t, p, qos=self.config.qos, retain=r, timeout=10) for t, p, r in messages),
            return_exceptions=True,
        )
        refused = next((result for result in results if isinstance(result, ValueError)), None)
        if refused is not None:  # paho's own checks (payload too large, topic): this event only
            receipt.reject(item, str(refused))
            return
        failure = next((result for result in results if isinstance(result, BaseException)), None)
        if failure is not None:
            raise failure
        receipt.confirm(item.seq)

    def camera_status(self, status: CameraStatus) -> None:
        """A camera's state, heard on the bus: Home Assistant's camera sensor (not spooled: the newest wins)."""
        if self.home_assistant is not None:
            self.home_assistant.camera(status)

    async def publish_home_assistant(self) -> None:
        """Keeps Home Assistant told between batches: the configs from the start (connecting if no event
        has yet), camera states as they change, the retained topics of rules gone, and what a failed
        publish left."""
        feed = self.home_assistant
        if feed is None:
            return
        while True:
            await wait_at_most(feed.changed.wait(), HOME_ASSISTANT_RETRY_S)
            feed.changed.clear()
            if not feed.pending():
                continue
            try:
                client = await self._connect()
            except Exception as exc:  # down: the sink's own loop says so, once
                log.debug("home assistant not told yet", extra={"error": str(exc)})
                await self._disconnect()
                await asyncio.sleep(HOME_ASSISTANT_RETRY_S)
                continue
            try:
                await feed.publish(client, self.config.qos)
            except Exception as exc:  # a connection that was up: lost (said once), and connected again
                await self._connection_lost(client, str(exc))
                await asyncio.sleep(HOME_ASSISTANT_RETRY_S)

    async def publish_stats(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Every ``stats_interval_s`` while connected: the site's health on ``<prefix>/<site>/stats``
        (not spooled: a missed one is replaced by the next)."""
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            client = self._client
            if client is None:
                continue
            try:
                await client.publish(f"{self.base}/stats", json.dumps(stats()), qos=0, timeout=5)
            except Exception as exc:  # a connection that was up: lost (said once), and connected again
                await self._connection_lost(client, str(exc))

    async def close(self) -> None:
        """Says ``offline`` first: the last will only speaks for a connection that breaks."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.publish(self.available_topic, OFFLINE, qos=1, retain=True, timeout=2)
        await self._disconnect()

    async def _disconnect(self) -> None:
        stack, self._client, self._stack = self._stack, None, None
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


def _valid_topic(topic: str) -> bool:
    """An MQTT topic name one may publish to: no wildcards, no NUL, 1-65535 bytes of UTF-8."""
    return 0 < len(topic.encode()) <= 65535 and not any(c in topic for c in "+#\0")
