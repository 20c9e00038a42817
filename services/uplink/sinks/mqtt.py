"""The MQTT sink: events published with QoS 1, line counts retained, the site's availability and stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

from common.config.uplink import MqttSink
from services.uplink.sinks.base import BATCH, Receipt, Sink, upstream_json
from services.uplink.spool import Spool, Spooled

__all__ = ["MqttPublisher"]

log = logging.getLogger(__package__)

INFLIGHT = 100  # QoS 1 messages awaiting PUBACK at once (paho's default is 20)


class MqttPublisher(Sink):
    """Events to ``<prefix>/<site>/events`` (QoS 1: confirmed by PUBACK), counts retained at
    ``<prefix>/<site>/<camera>/<rule>/count``, availability at ``<prefix>/<site>/available``."""

    name = "mqtt"

    def __init__(self, config: MqttSink, site: str, spool: Spool, *, waits_for_s3: bool) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.spool = spool
        self.waits_for_s3 = waits_for_s3
        self.base = f"{config.topic_prefix}/{site}"
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def _connect(self) -> Any:
        import aiomqtt

        if self._client is not None:
            return self._client
        will = aiomqtt.Will(f"{self.base}/available", b"offline", qos=1, retain=True)
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
        # a whole batch (and the stats publish) awaits its PUBACKs at once by design: not worth a warning
        client.pending_calls_threshold = BATCH + 1
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(client)
        except Exception:
            await stack.aclose()
            raise
        self._client, self._stack = client, stack
        await client.publish(f"{self.base}/available", b"online", qos=1, retain=True)
        log.info("mqtt connected", extra={"host": self.config.host, "port": self.config.port})
        return client

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        """Publishes a batch with up to ``INFLIGHT`` messages awaiting their PUBACK at once; a seq is
        confirmed only when its own PUBACK (and its count's) came back."""
        try:
            client = await self._connect()
            ready = await self._ready(batch)
            results = await asyncio.gather(
                *(self._publish(client, item, receipt) for item in ready), return_exceptions=True
            )
            failure = next((result for result in results if isinstance(result, BaseException)), None)
            if failure is not None:
                raise failure
        except Exception:
            await self.close()
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
        event = item.event
        messages = [(f"{self.base}/events", upstream_json(item), False)]
        if event.counts and event.event_type == "line_cross":
            messages.append((f"{self.base}/{event.camera}/{event.rule}/count", json.dumps(event.counts), True))
        invalid = [topic for topic, _, _ in messages if not _valid_topic(topic)]
        if invalid:  # paho would refuse it on every retry: this event's fault, never an outage
            receipt.reject(item, f"not a valid MQTT topic name: {invalid[0][:200]!r}")
            return
        for topic, payload, retain in messages:
            try:
                await client.publish(topic, payload, qos=self.config.qos, retain=retain, timeout=10)
            except ValueError as exc:  # paho's own checks (payload too large, topic): this event only
                receipt.reject(item, str(exc))
                return
        receipt.confirm(item.seq)

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
        stack, self._client, self._stack = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


def _valid_topic(topic: str) -> bool:
    """An MQTT topic name one may publish to: no wildcards, no NUL, 1-65535 bytes of UTF-8."""
    return 0 < len(topic.encode()) <= 65535 and not any(c in topic for c in "+#\0")
