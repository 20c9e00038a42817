"""The sinks: each drains its own queue in the spool, with its own connection state and backoff."""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import json
import logging
import random
import ssl
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from common.config.uplink import CloudWatchSink, JsonlSink, MqttSink, S3Sink, WebhookSink
from contracts import Event
from services.uplink import metrics
from services.uplink.spool import Spool, Spooled

__all__ = ["CloudWatchOut", "JsonlOut", "MqttOut", "S3Out", "Sink", "WebhookOut", "event_document"]

log = logging.getLogger(__name__)

BATCH = 100
INFLIGHT = 100  # QoS 1 messages awaiting PUBACK at once (paho's default is 20)


def event_document(event: Event, s3_key: str | None = None) -> dict[str, Any]:
    """The event as JSON for a sink: never image bytes; the snapshot's S3 key once it is uploaded."""
    document: dict[str, Any] = msgspec.to_builtins(event)
    if event.snapshot is not None:
        snapshot = document["snapshot"]
        snapshot.pop("data", None)
        snapshot["s3_key"] = s3_key
        snapshot["dropped"] = not event.snapshot.data  # the spool overflowed and let the image go
    return document


class Sink(abc.ABC):
    name: str

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.connected = False
        metrics.CONNECTED.labels(self.name).set(0)

    def wants(self, event: Event) -> bool:
        return True

    @abc.abstractmethod
    async def deliver(self, batch: list[Spooled]) -> list[int]:
        """Sends what it can of ``batch``; returns the seqs the far side confirmed. Raises when down."""

    async def run(self, spool: Spool) -> None:
        backoff = 1.0
        while True:
            batch = spool.pending(self.name, BATCH)
            if not batch:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                confirmed = await self.deliver(batch)
            except Exception as exc:  # every sink fails in its own library's way: all mean "retry later"
                metrics.FAILED.labels(self.name).inc()
                if self.connected or backoff == 1.0:  # one line when it goes down, not one per retry
                    log.warning(
                        "sink unavailable; events stay in the spool", extra={"sink": self.name, "error": str(exc)}
                    )
                self.connected = False
                metrics.CONNECTED.labels(self.name).set(0)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 30.0)
                continue
            metrics.CONNECTED.labels(self.name).set(1)
            self.connected = True
            backoff = 1.0
            spool.done(self.name, confirmed)
            metrics.SENT.labels(self.name).inc(len(confirmed))
            if not confirmed:
                await asyncio.sleep(0.2)  # waiting on another sink (the S3 key): do not spin

    async def close(self) -> None:  # noqa: B027 - optional
        pass


class MqttOut(Sink):
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
        self._stack: Any = None

    def _tls(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if tls is None:
            return None
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def _connect(self) -> Any:
        import contextlib

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

    async def deliver(self, batch: list[Spooled]) -> list[int]:
        """Publishes a batch with up to ``INFLIGHT`` messages awaiting their PUBACK at once; a seq is
        confirmed only when its own PUBACK (and its count's) came back."""
        try:
            client = await self._connect()
            ready = []
            for item in batch:
                snapshot = item.event.snapshot
                uploading = self.waits_for_s3 and snapshot is not None and bool(snapshot.data) and not item.s3_key
                if uploading and self.spool.waiting_for("s3", item.seq):
                    continue  # the event names the S3 key: publish it once the upload is done
                ready.append(item)
            await asyncio.gather(*(self._publish(client, item) for item in ready))
            return [item.seq for item in ready]
        except Exception:
            await self.close()
            raise

    async def _publish(self, client: Any, item: Spooled) -> None:
        event = item.event
        document = event_document(event, item.s3_key)
        await client.publish(f"{self.base}/events", json.dumps(document), qos=self.config.qos, timeout=10)
        if event.counts and event.event_type == "line_cross":
            topic = f"{self.base}/{event.camera}/{event.rule}/count"
            await client.publish(topic, json.dumps(event.counts), qos=self.config.qos, retain=True, timeout=10)

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
            try:
                await stack.aclose()
            except Exception:
                pass


class S3Out(Sink):
    """Snapshots to ``<prefix>/<site>/<camera>/<YYYY-MM-DD>/<event-id>.jpg``."""

    name = "s3"

    def __init__(self, config: S3Sink, site: str, spool: Spool) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.spool = spool

    def wants(self, event: Event) -> bool:
        return event.snapshot is not None and bool(event.snapshot.data)

    def key(self, event: Event) -> str:
        day = dt.datetime.fromtimestamp(event.ts_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
        return f"{self.config.prefix}/{self.site}/{event.camera}/{day}/{event.id}.jpg"

    async def deliver(self, batch: list[Spooled]) -> list[int]:
        import aioboto3

        extra: dict[str, str] = {}
        if self.config.server_side_encryption != "none":
            extra["ServerSideEncryption"] = self.config.server_side_encryption
            if self.config.kms_key_id:
                extra["SSEKMSKeyId"] = self.config.kms_key_id
        confirmed = []
        session = aioboto3.Session()
        async with session.client("s3", region_name=self.config.region, endpoint_url=self.config.endpoint_url) as s3:
            for item in batch:
                snapshot = item.event.snapshot
                if snapshot is None or not snapshot.data:  # dropped on overflow meanwhile
                    confirmed.append(item.seq)
                    continue
                key = self.key(item.event)
                await s3.put_object(
                    Bucket=self.config.bucket, Key=key, Body=snapshot.data, ContentType=snapshot.content_type, **extra
                )
                self.spool.set_s3_key(item.seq, key)
                confirmed.append(item.seq)
        return confirmed


class CloudWatchOut(Sink):
    """Events to CloudWatch Logs (``PutLogEvents``) and counts per camera, rule and type to CloudWatch
    metrics (``PutMetricData``, batched every ``metrics_interval_s``)."""

    name = "cloudwatch"

    def __init__(self, config: CloudWatchSink, site: str) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.counts: dict[tuple[str, str, str], int] = {}
        self._stream_ready = False

    async def deliver(self, batch: list[Spooled]) -> list[int]:
        import aioboto3

        session = aioboto3.Session()
        kwargs = {"region_name": self.config.region, "endpoint_url": self.config.endpoint_url}
        if self.config.log_group:
            async with session.client("logs", **kwargs) as logs:
                if not self._stream_ready:
                    for call, args in (
                        (logs.create_log_group, {"logGroupName": self.config.log_group}),
                        (logs.create_log_stream, {"logGroupName": self.config.log_group, "logStreamName": self.site}),
                    ):
                        try:
                            await call(**args)
                        except logs.exceptions.ResourceAlreadyExistsException:
                            pass
                    self._stream_ready = True
                records = [
                    {
                        "timestamp": item.event.ts_ns // 1_000_000,
                        "message": json.dumps(event_document(item.event, item.s3_key)),
                    }
                    for item in batch
                ]
                records.sort(key=lambda record: int(str(record["timestamp"])))
                await logs.put_log_events(
                    logGroupName=self.config.log_group, logStreamName=self.site, logEvents=records
                )
        for item in batch:
            key = (item.event.camera, item.event.rule, item.event.event_type)
            self.counts[key] = self.counts.get(key, 0) + 1
        return [item.seq for item in batch]

    async def publish_metrics(self, site_figures: Callable[[], list[tuple[str, dict[str, str], float, str]]]) -> None:
        """Every ``metrics_interval_s``: event counts since the last call per camera/rule/type, and the
        site's figures now (camera fps, inference time per model)."""
        import aioboto3

        site = {"Name": "Site", "Value": self.site}
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            counts, self.counts = self.counts, {}
            data: list[dict[str, Any]] = [
                {
                    "MetricName": "Events",
                    "Dimensions": [
                        site,
                        {"Name": "Camera", "Value": camera},
                        {"Name": "Rule", "Value": rule},
                        {"Name": "Type", "Value": kind},
                    ],
                    "Value": value,
                    "Unit": "Count",
                }
                for (camera, rule, kind), value in counts.items()
            ]
            data += [
                {
                    "MetricName": name,
                    "Dimensions": [site, *({"Name": k, "Value": v} for k, v in dimensions.items())],
                    "Value": value,
                    "Unit": unit,
                }
                for name, dimensions, value, unit in site_figures()
            ]
            if not data:
                continue
            session = aioboto3.Session()
            try:
                async with session.client(
                    "cloudwatch", region_name=self.config.region, endpoint_url=self.config.endpoint_url
                ) as cloudwatch:
                    for start in range(0, len(data), 1000):
                        chunk = data[start : start + 1000]
                        await cloudwatch.put_metric_data(Namespace=self.config.namespace, MetricData=chunk)
            except Exception as exc:
                for key, value in counts.items():  # keep the counts for the next try
                    self.counts[key] = self.counts.get(key, 0) + value
                log.warning("cloudwatch metrics not sent", extra={"error": str(exc)})


class JsonlOut(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSink, state_dir: Path) -> None:
        super().__init__()
        path = Path(config.path)
        self.path = path if path.is_absolute() else state_dir / path
        self.path.parent.mkdir(parents=True, exist_ok=True)

    async def deliver(self, batch: list[Spooled]) -> list[int]:
        lines = "".join(json.dumps(event_document(i.event, i.s3_key)) + "\n" for i in batch)
        with self.path.open("a") as out:
            out.write(lines)
            out.flush()
        return [item.seq for item in batch]


class WebhookOut(Sink):
    name = "webhook"

    def __init__(self, config: WebhookSink) -> None:
        super().__init__()
        self.config = config

    async def deliver(self, batch: list[Spooled]) -> list[int]:
        confirmed = []
        for item in batch:
            body = json.dumps(event_document(item.event, item.s3_key)).encode()
            request = urllib.request.Request(
                self.config.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=self.config.timeout_s)
            confirmed.append(item.seq)
        return confirmed
