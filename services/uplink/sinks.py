"""The sinks: each drains its own queue in the spool, with its own connection state and backoff.

A sink tells two failures apart. An outage (no connection, a timeout, a 5xx) raises out of
``deliver``: what it confirmed before stays confirmed, the rest waits and is retried. A refusal of
one event for good (a topic or key the far side rejects, a 4xx) is ``receipt.reject``: that event
goes to the spool's dead letters, counted and logged once, and the others flow.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from common._compat import wait_at_most
from common.config.uplink import CloudWatchSink, JsonlSink, MqttSink, S3Sink, WebhookSink
from common.files import private_dir, private_open
from contracts import Event
from services.uplink import metrics
from services.uplink.spool import Spool, Spooled

__all__ = ["CloudWatchOut", "JsonlOut", "MqttOut", "Receipt", "S3Out", "Sink", "WebhookOut", "event_document"]

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


class Receipt:
    """What the far side made of a batch so far: confirmed seqs, and seqs refused for good (with why)."""

    def __init__(self) -> None:
        self.confirmed: list[int] = []
        self.rejected: dict[int, str] = {}

    def confirm(self, seq: int) -> None:
        self.confirmed.append(seq)

    def reject(self, item: Spooled, reason: str) -> None:
        self.rejected[item.seq] = reason
        log.error(
            "event refused for good: moved to dead letters",
            extra={"id": item.event.id, "camera": item.event.camera, "rule": item.event.rule, "error": reason},
        )

    def __len__(self) -> int:
        return len(self.confirmed) + len(self.rejected)


class Sink(abc.ABC):
    name: str

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.connected = False
        metrics.CONNECTED.labels(self.name).set(0)
        for counter in (metrics.SENT, metrics.FAILED, metrics.DEAD_LETTERS):
            counter.labels(self.name)  # at 0 from the start: a rate() or an alert finds the series

    def wants(self, event: Event) -> bool:
        return True

    @abc.abstractmethod
    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        """Sends what it can of ``batch``, noting each confirmation or refusal on ``receipt`` as it
        comes; raises when the sink is down (what the receipt holds by then still counts)."""

    async def run(self, spool: Spool) -> None:
        backoff = 1.0
        while True:
            batch = await asyncio.to_thread(spool.pending, self.name, BATCH)
            if not batch:
                self.wake.clear()
                await wait_at_most(self.wake.wait(), 1.0)
                continue
            receipt = Receipt()
            failure: Exception | None = None
            try:
                await self.deliver(batch, receipt)
            except Exception as exc:  # every sink fails in its own library's way: all mean "retry later"
                failure = exc
            if receipt:  # only what was not confirmed is sent again
                await asyncio.to_thread(spool.done, self.name, receipt.confirmed, receipt.rejected)
                metrics.SENT.labels(self.name).inc(len(receipt.confirmed))
                metrics.DEAD_LETTERS.labels(self.name).inc(len(receipt.rejected))
            if failure is not None:
                metrics.FAILED.labels(self.name).inc()
                if self.connected or backoff == 1.0:  # one line when it goes down, not one per retry
                    log.warning(
                        "sink unavailable; events stay in the spool", extra={"sink": self.name, "error": str(failure)}
                    )
                self.connected = False
                metrics.CONNECTED.labels(self.name).set(0)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 30.0)
                continue
            metrics.CONNECTED.labels(self.name).set(1)
            self.connected = True
            backoff = 1.0
            if not receipt:
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
            uploading = [
                item.seq
                for item in batch
                if self.waits_for_s3
                and item.event.snapshot is not None
                and item.event.snapshot.data
                and not item.s3_key
            ]
            pending_upload = await asyncio.to_thread(self.spool.waiting_among, "s3", uploading) if uploading else set()
            # an event that names its S3 key is published once the upload is done
            ready = [item for item in batch if item.seq not in pending_upload]
            results = await asyncio.gather(
                *(self._publish(client, item, receipt) for item in ready), return_exceptions=True
            )
            failure = next((result for result in results if isinstance(result, BaseException)), None)
            if failure is not None:
                raise failure
        except Exception:
            await self.close()
            raise

    async def _publish(self, client: Any, item: Spooled, receipt: Receipt) -> None:
        event = item.event
        messages = [(f"{self.base}/events", json.dumps(event_document(event, item.s3_key)), False)]
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
            try:
                await stack.aclose()
            except Exception:
                pass


def _has_image(item: Spooled) -> bool:
    return item.event.snapshot is not None and bool(item.event.snapshot.data)


def _valid_topic(topic: str) -> bool:
    """An MQTT topic name one may publish to: no wildcards, no NUL, 1-65535 bytes of UTF-8."""
    return 0 < len(topic.encode()) <= 65535 and not any(c in topic for c in "+#\0")


def _client_error(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else None


class _AwsClients:
    """One aioboto3 session and one client per service for the sink's life; dropped after an outage."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        self.kwargs = {"region_name": region, "endpoint_url": endpoint_url}
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: dict[str, Any] = {}

    async def get(self, service: str) -> Any:
        import aioboto3

        if service not in self._clients:
            if self._stack is None:
                self._stack = contextlib.AsyncExitStack()
                self._session = aioboto3.Session()
            self._clients[service] = await self._stack.enter_async_context(
                self._session.client(service, **self.kwargs)  # type: ignore[call-overload]
            )
        return self._clients[service]

    async def close(self) -> None:
        stack, self._stack, self._clients = self._stack, None, {}
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


class S3Out(Sink):
    """Snapshots to ``<prefix>/<site>/<camera>/<YYYY-MM-DD>/<event-id>.jpg``."""

    name = "s3"

    def __init__(self, config: S3Sink, site: str, spool: Spool) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.spool = spool
        self.aws = _AwsClients(config.region, config.endpoint_url)

    def wants(self, event: Event) -> bool:
        return event.snapshot is not None and bool(event.snapshot.data)

    def key(self, event: Event) -> str:
        day = dt.datetime.fromtimestamp(event.ts_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
        return f"{self.config.prefix}/{self.site}/{event.camera}/{day}/{event.id}.jpg"

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        extra: dict[str, str] = {}
        if self.config.server_side_encryption != "none":
            extra["ServerSideEncryption"] = self.config.server_side_encryption
            if self.config.kms_key_id:
                extra["SSEKMSKeyId"] = self.config.kms_key_id
        try:
            s3 = await self.aws.get("s3")
            for item in batch:
                snapshot = item.event.snapshot
                if snapshot is None or not snapshot.data:  # dropped on overflow meanwhile
                    receipt.confirm(item.seq)
                    continue
                key = self.key(item.event)
                try:
                    await s3.put_object(
                        Bucket=self.config.bucket,
                        Key=key,
                        Body=snapshot.data,
                        ContentType=snapshot.content_type,
                        **extra,
                    )
                except Exception as exc:
                    if _client_error(exc) in (400, 413):  # this object is refused (a bad key, too large)
                        receipt.reject(item, str(exc))
                        continue
                    raise
                await asyncio.to_thread(self.spool.set_s3_key, item.seq, key)
                receipt.confirm(item.seq)
        except Exception:
            await self.aws.close()
            raise

    async def close(self) -> None:
        await self.aws.close()


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
        self.aws = _AwsClients(config.region, config.endpoint_url)
        self.metrics_aws = _AwsClients(config.region, config.endpoint_url)

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        try:
            await self._deliver(batch, receipt)
        except Exception:
            await self.aws.close()
            raise

    async def close(self) -> None:
        await self.aws.close()
        await self.metrics_aws.close()

    async def _deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        refused: dict[int, str] = {}
        if self.config.log_group:
            logs = await self.aws.get("logs")
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
            ordered = sorted(batch, key=lambda item: item.event.ts_ns)  # CloudWatch wants them in time order
            records = [
                {
                    "timestamp": item.event.ts_ns // 1_000_000,
                    "message": json.dumps(event_document(item.event, item.s3_key)),
                }
                for item in ordered
            ]
            response = await logs.put_log_events(
                logGroupName=self.config.log_group, logStreamName=self.site, logEvents=records
            )
            refused = _refused_log_events(response.get("rejectedLogEventsInfo") or {}, ordered)
        for item in batch:
            if item.seq in refused:
                receipt.reject(item, refused[item.seq])
                continue
            key = (item.event.camera, item.event.rule, item.event.event_type)
            self.counts[key] = self.counts.get(key, 0) + 1
            receipt.confirm(item.seq)

    async def publish_metrics(self, site_figures: Callable[[], list[tuple[str, dict[str, str], float, str]]]) -> None:
        """Every ``metrics_interval_s``: event counts since the last call per camera/rule/type, and the
        site's figures now (camera fps, inference time per model)."""
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
            try:
                cloudwatch = await self.metrics_aws.get("cloudwatch")
                for start in range(0, len(data), 1000):
                    chunk = data[start : start + 1000]
                    await cloudwatch.put_metric_data(Namespace=self.config.namespace, MetricData=chunk)
            except Exception as exc:
                await self.metrics_aws.close()
                for key, value in counts.items():  # keep the counts for the next try
                    self.counts[key] = self.counts.get(key, 0) + value
                log.warning("cloudwatch metrics not sent", extra={"error": str(exc)})


def _refused_log_events(info: dict[str, int], ordered: list[Spooled]) -> dict[int, str]:
    """seq -> why, for the records PutLogEvents accepted the call for but refused (too old or new)."""
    refused: dict[int, str] = {}
    if "tooNewLogEventStartIndex" in info:
        for item in ordered[info["tooNewLogEventStartIndex"] :]:
            refused[item.seq] = "CloudWatch Logs: timestamp too far in the future"
    for key, why in (("tooOldLogEventEndIndex", "too old"), ("expiredLogEventEndIndex", "past the retention")):
        if key in info:
            for item in ordered[: info[key]]:
                refused[item.seq] = f"CloudWatch Logs: timestamp {why}"
    return refused


class JsonlOut(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSink, state_dir: Path) -> None:
        super().__init__()
        path = Path(config.path)
        self.path = path if path.is_absolute() else state_dir / path
        private_dir(self.path.parent, tighten=not path.is_absolute())  # a folder the operator named: left as it is

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        lines = "".join(json.dumps(event_document(i.event, i.s3_key)) + "\n" for i in batch)
        with private_open(self.path, "a") as out:
            out.write(lines)
            out.flush()
        for item in batch:
            receipt.confirm(item.seq)


class WebhookOut(Sink):
    name = "webhook"

    def __init__(self, config: WebhookSink) -> None:
        super().__init__()
        self.config = config

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        for item in batch:
            body = json.dumps(event_document(item.event, item.s3_key)).encode()
            request = urllib.request.Request(
                self.config.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                await asyncio.to_thread(_post, request, self.config.timeout_s)
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):  # the receiver refuses this event
                    receipt.reject(item, f"HTTP {exc.code} {exc.reason}")
                    continue
                raise
            receipt.confirm(item.seq)


def _post(request: urllib.request.Request, timeout_s: float) -> None:
    with urllib.request.urlopen(request, timeout=timeout_s):
        pass
