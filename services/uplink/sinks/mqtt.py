"""The MQTT sink: events published with QoS 1, line counts and interval reports retained, the site's
availability and stats, and (``home_assistant: true``) Home Assistant's discovery configs and values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

from common._compat import wait_at_most
from common.config import SiteConfig
from common.config.uplink import MqttSink
from contracts import CameraStatus
from services.uplink.home_assistant import Availability
from services.uplink.home_assistant_feed import HomeAssistantFeed
from services.uplink.sinks.base import BATCH, Receipt, Sink, upstream_json
from services.uplink.spool import Spool, Spooled

__all__ = ["MqttPublisher"]

log = logging.getLogger(__package__)

INFLIGHT = 100  # QoS 1 messages awaiting PUBACK at once (paho's default is 20)
ONLINE, OFFLINE = b"online", b"offline"
HOME_ASSISTANT_RETRY_S = 5.0  # what a failed publish left for Home Assistant is tried again this often


class MqttPublisher(Sink):
    """Events to ``<prefix>/<site>/events`` (QoS 1: confirmed by PUBACK), retained: line counts at
    ``<prefix>/<site>/<camera>/<rule>/count``, each rule's latest ``count_report`` at
    ``<prefix>/<site>/reports/<camera>/<rule>``, availability at ``<prefix>/<site>/available``.
    With ``site_config`` (the uplink's), Home Assistant's discovery too (:mod:`services.uplink.home_assistant`)."""

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
        availability = Availability(self.available_topic, ONLINE.decode(), OFFLINE.decode())
        self.home_assistant = (
            HomeAssistantFeed.for_site(site_config, self.base, availability) if site_config is not None else None
        )

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._client is None:
                await self._open()
            return self._client

    async def _open(self) -> None:
        import aiomqtt

        will = aiomqtt.Will(self.available_topic, OFFLINE, qos=1, retain=True)
        client = aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id or f"edgesight-{self.site}",
            username=self.config.username,
            password=self.config.password,
            will=will,
            keepalive=self.config.keepalive_s,
            tls_context=self._tls(),
            clean_session=False,
            timeout=10,
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
        await client.publish(self.available_topic, ONLINE, qos=1, retain=True)
        log.info("mqtt connected", extra={"host": self.config.host, "port": self.config.port})
        if self.home_assistant is not None:
            self.home_assistant.reconnected()

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
        if event.counts and event.event_type == "line_cross":
            messages.append((f"{self.base}/{event.camera}/{event.rule}/count", json.dumps(event.counts), True))
        if event.event_type == "count_report":  # a late subscriber finds each rule's latest report
            messages.append((f"{self.base}/reports/{event.camera}/{event.rule}", payload, True))
        invalid = [topic for topic, _, _ in messages if not _valid_topic(topic)]
        if invalid:  # paho would refuse it on every retry: this event's fault, never an outage
            receipt.reject(item, f"not a valid MQTT topic name: {invalid[0][:200]!r}")
            return
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
        has yet), camera states as they change, and what a failed publish left."""
        feed = self.home_assistant
        if feed is None:
            return
        while True:
            await wait_at_most(feed.changed.wait(), HOME_ASSISTANT_RETRY_S)
            feed.changed.clear()
            if not feed.pending():
                continue
            try:
                await feed.publish(await self._connect(), self.config.qos)
            except Exception as exc:  # down: the sink's own loop says so, once
                log.debug("home assistant not told yet", extra={"error": str(exc)})
                await self._disconnect()
                await asyncio.sleep(HOME_ASSISTANT_RETRY_S)

    async def publish_stats(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Every ``stats_interval_s`` while connected: the site's health on ``<prefix>/<site>/stats``
        (not spooled: a missed one is replaced by the next)."""
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            if self._client is None:
                continue
            try:
                await self._client.publish(f"{self.base}/stats", json.dumps(stats()), qos=0, timeout=5)
            except Exception as exc:
                log.debug("stats not published", extra={"error": str(exc)})

    async def close(self) -> None:
        """Says ``offline`` first: the last will only speaks for a connection that breaks."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.publish(self.available_topic, OFFLINE, qos=1, retain=True, timeout=2)
        await self._disconnect()

    async def _disconnect(self) -> None:
        stack, self._client, self._stack = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


def _valid_topic(topic: str) -> bool:
    """An MQTT topic name one may publish to: no wildcards, no NUL, 1-65535 bytes of UTF-8."""
    return 0 < len(topic.encode()) <= 65535 and not any(c in topic for c in "+#\0")
