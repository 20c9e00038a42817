"""The operator's side of the fleet's wire, for ``edgesight fleet``: a broker that keeps job documents,
statuses and reported states retained (``jobs: retained``, :class:`MqttLink`), or AWS IoT itself (``jobs: aws``:
Jobs and the ``edgesight`` named shadow, through boto3: :class:`common.cli.fleet_aws.AwsLink`).

Both links answer the same questions — what does each site report, what is the desired state, what jobs are
there — and send and follow jobs; ``edgesight fleet`` never asks which one it holds (:func:`open_link`).
A retained job document stays on the broker until its site's own reported state confirms the job's final
status (:func:`common.cli.fleet_wire.reported_end`): a site that is offline now runs it when it comes back,
and a status someone else published cannot take the job away. A message that does not parse is ignored and
counted (:func:`open_link` says how many on leaving), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from common._compat import timeout
from common.cli.fleet_aws import AwsLink, aws_region
from common.cli.fleet_wire import (
    UNPARSABLE,
    JobRecord,
    JobStatus,
    LinkError,
    expiry,
    heard_status,
    operation_of,
    reported_end,
    said,
)
from common.config.uplink import MqttSink
from common.fleet import shapes
from common.fleet.fleet_file import FleetFile
from common.fleet.signing import CLOCK_SKEW_S
from common.fleet.topics import SHADOW_NAME, FleetTopics, job_id_of, thing_of
from common.mqtt import client_options

__all__ = ["AwsLink", "FleetLink", "JobRecord", "JobStatus", "LinkError", "MqttLink", "open_link"]

QUIET_S = 1.0  # retained messages come in one burst after a subscription: this long without one ends it
T = TypeVar("T")


class MqttLink:
    """The operator on an MQTT broker (retained mode). One connection, one reader task: every message
    heard is kept by topic (an empty payload forgets it), and waiters are woken on each."""

    def __init__(self, broker: MqttSink, root: str) -> None:
        self.broker = broker
        self.root = root
        self.heard: dict[str, bytes] = {}
        self.heard_at: dict[str, float] = {}  # topic -> when its message was read (epoch seconds)
        self._malformed: set[str] = set()  # topics whose message did not parse
        self._heard_count = 0  # messages so far: a waiter wakes when it moves (no message lost in between)
        self._changed = asyncio.Condition()
        self._subscribed: set[str] = set()
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lost: str | None = None

    async def __aenter__(self) -> MqttLink:
        import aiomqtt

        try:
            # never the sites' ids: a second connection with an id takes the first one over
            operator = f"edgesight-operator-{secrets.token_hex(4)}"
            # MQTT v5 with a Maximum Packet Size: the broker drops a larger message instead of sending it
            limit = 2 * shapes.MAX_PAYLOAD_BYTES
            client = aiomqtt.Client(**client_options(self.broker, operator, clean_session=True, max_packet_bytes=limit))
            await self._stack.enter_async_context(client)
        except (aiomqtt.MqttError, OSError) as exc:  # ssl.SSLError is an OSError: a CA file, a refused certificate
            raise LinkError(f"broker {self.broker.host}:{self.broker.port}: {exc}") from None
        self._client = client
        self._reader = asyncio.create_task(self._read(), name="fleet-mqtt-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(Exception):  # leaving: a broken connection has nothing more to say
            await self._stack.aclose()

    async def _read(self) -> None:
        try:
            async for message in self._client.messages:
                payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                topic = message.topic.value
                self._malformed.discard(topic)
                if payload:
                    self.heard[topic], self.heard_at[topic] = payload, time.time()
                else:
                    self.heard.pop(topic, None)
                await self._woken()
        except Exception as exc:  # the connection dropped: waiters are told instead of waiting on
            self._lost = str(exc) or type(exc).__name__
            await self._woken()

    async def _woken(self) -> None:
        async with self._changed:
            self._heard_count += 1
            self._changed.notify_all()

    async def _wait_after(self, count: int, seconds: float) -> bool:
        """Waits at most ``seconds`` for a message after the ``count``-th; True if one came."""
        async with self._changed:
            try:
                async with timeout(max(seconds, 0.0)):
                    await self._changed.wait_for(lambda: self._heard_count > count or self._lost is not None)
            except (TimeoutError, asyncio.TimeoutError):
                return False
        if self._lost is not None:
            raise LinkError(f"broker {self.broker.host}:{self.broker.port}: connection lost: {self._lost}")
        return True

    async def subscribe(self, *filters: str, seconds: float = 5.0) -> None:
        """Subscribes to ``filters`` and waits for the retained messages they bring: until none came for
        ``QUIET_S`` (or ``seconds`` passed)."""
        new = [topic for topic in filters if topic not in self._subscribed]
        if not new:
            return
        for topic in new:
            await self._sent(self._client.subscribe(topic, qos=1))
            self._subscribed.add(topic)
        end = time.monotonic() + seconds
        while time.monotonic() < end and await self._wait_after(
            self._heard_count, min(QUIET_S, end - time.monotonic())
        ):
            pass

    @property
    def malformed(self) -> int:
        """Messages heard that did not parse (the newest of each topic)."""
        return len(self._malformed)

    def _parsed(self, topic: str, parse: Callable[[bytes], T | None]) -> T | None:
        """The message on ``topic`` parsed; None when there is none or it does not parse (counted)."""
        payload = self.heard.get(topic)
        if payload is None:
            return None
        try:
            return parse(payload)
        except UNPARSABLE:
            self._malformed.add(topic)
            return None

    def matching(self, pattern: str) -> dict[str, bytes]:
        import aiomqtt

        return {topic: payload for topic, payload in self.heard.items() if aiomqtt.Topic(topic).matches(pattern)}

    async def publish(self, topic: str, message: dict[str, Any] | None) -> None:
        """Publishes ``message`` retained (QoS 1), or clears what is retained there (None)."""
        payload = b"" if message is None else shapes.encode(message)
        await self._sent(self._client.publish(topic, payload, qos=1, retain=True))

    async def _sent(self, request: Coroutine[Any, Any, object]) -> None:
        import aiomqtt

        try:
            await request
        except aiomqtt.MqttError as exc:
            raise LinkError(f"broker {self.broker.host}:{self.broker.port}: {exc}") from None

    @property
    def all_reported(self) -> str:
        return FleetTopics.all_reported(self.root)

    @property
    def all_desired(self) -> str:
        return f"{self.root}/things/+/shadow/name/{SHADOW_NAME}/update/delta"

    async def reported(self, things: Iterable[str], seconds: float) -> dict[str, dict[str, Any]]:
        await self.subscribe(self.all_reported, seconds=seconds)
        found: dict[str, dict[str, Any]] = {}
        for topic in self.matching(self.all_reported):
            thing = thing_of(topic, self.root)
            reported = self._reported(topic)
            if thing is not None and reported is not None:
                found[thing] = reported
        return found

    def _reported(self, topic: str) -> dict[str, Any] | None:
        # as of when it was read: a report stamped later is one from then
        return self._parsed(topic, functools.partial(shapes.parse_reported, read_at=self.heard_at.get(topic)))

    async def site_reported(self, thing: str, job_id: str) -> str | None:
        """The final status the site's own reported state gives ``job_id`` (:func:`reported_end`)."""
        return reported_end(self._reported(FleetTopics(self.root, thing).reported), thing, job_id)

    async def submit(self, thing: str, job_id: str, document: dict[str, Any]) -> None:
        # statuses and reports are retained: none is missed whether subscribed before or after
        await self.subscribe(FleetTopics.all_job_updates(self.root), self.all_reported, seconds=0)
        now = int(time.time())
        execution = shapes.job_execution(job_id, thing, document, queued_at=now)
        await self.publish(FleetTopics(self.root, thing).job_document(job_id), shapes.notify_next(execution))

    async def status(self, thing: str, job_id: str) -> JobStatus | None:
        update = self._parsed(FleetTopics(self.root, thing).job_update(job_id), shapes.parse_status_update)
        return None if update is None else heard_status(job_id, thing, update.status, update.details)

    async def finished(self, thing: str, job_id: str) -> None:
        """A job's site is done with it, as its own report confirms: its retained document goes (its status
        stays, for ``fleet jobs``)."""
        await self.publish(FleetTopics(self.root, thing).job_document(job_id), None)

    def mark(self) -> int:
        return self._heard_count

    async def wait_news(self, mark: int, seconds: float) -> None:
        await self._wait_after(mark, seconds)

    async def desired(self, thing: str, seconds: float) -> dict[str, str]:
        # every site's at once: a rollout to many sites waits for one burst of retained messages, not one each
        await self.subscribe(self.all_desired, seconds=seconds)
        desired = self._parsed(FleetTopics(self.root, thing).desired_delta, shapes.parse_desired)
        return dict(desired.models or {}) if desired is not None else {}

    async def set_desired(self, thing: str, models: dict[str, str], document: dict[str, Any]) -> None:
        now = int(time.time())
        message = shapes.desired_delta(models, document, version=now, timestamp=now)
        await self.publish(FleetTopics(self.root, thing).desired_delta, message)

    async def jobs(self, things: Iterable[str], seconds: float) -> list[JobRecord]:
        documents, updates = FleetTopics.all_job_documents(self.root), FleetTopics.all_job_updates(self.root)
        await self.subscribe(documents, updates, seconds=seconds)
        records: dict[tuple[str, str], JobRecord] = {}
        for topic in {**self.matching(updates), **self.matching(documents)}:
            thing, job_id = thing_of(topic, self.root), job_id_of(topic, self.root)
            if thing is None or job_id is None or (thing, job_id) in records:
                continue
            document = FleetTopics(self.root, thing).job_document(job_id)
            execution = self._parsed(document, shapes.parse_execution)
            records[(thing, job_id)] = JobRecord(
                job_id,
                thing,
                operation_of(execution.document if execution is not None else None, job_id),
                execution.queued_at if execution is not None else None,
                await self.status(thing, job_id),
                None if document not in self.heard else expiry(execution),
            )
        return sorted(records.values(), key=lambda record: (record.queued_at or 0, record.job_id))

    async def prune(self, records: Iterable[JobRecord]) -> tuple[int, int]:
        """Clears the retained document and status of each finished job: (how many, how many kept). A job
        whose document a site may still run is finished only when its site's report confirms the status: a
        status alone may be someone else's, and clearing the document would take the job from the site.
        One whose document expired (and the sites' clocks may be ``CLOCK_SKEW_S`` behind) runs nowhere."""
        await self.subscribe(self.all_reported)
        pruned = kept = 0
        for record in records:
            if record.status is None or not record.status.final:
                continue
            topics = FleetTopics(self.root, record.thing)
            runnable = record.expires_at is not None and record.expires_at + CLOCK_SKEW_S > time.time()
            if runnable and await self.site_reported(record.thing, record.job_id) != record.status.status:
                kept += 1
                continue
            await self.publish(topics.job_document(record.job_id), None)
            await self.publish(topics.job_update(record.job_id), None)
            pruned += 1
        return pruned, kept


FleetLink = MqttLink | AwsLink


@contextlib.asynccontextmanager
async def open_link(fleet: FleetFile) -> AsyncIterator[FleetLink]:
    """The link ``fleet.yaml`` asks for: AWS IoT in aws mode (its data plane at the broker's host, the
    account's own endpoint), else its broker. On leaving, one line on stderr says how many messages heard
    did not parse and were ignored (reports, documents or statuses someone else published, or a site's bug)."""
    link: FleetLink
    if fleet.jobs_mode == "aws":
        host = fleet.broker.host
        link = AwsLink(aws_region(host), f"https://{host}" if aws_region(host) else None)
    else:
        link = MqttLink(fleet.broker, fleet.topic_root)
    async with link:
        try:
            yield link
        finally:
            if link.malformed:
                print(f"edgesight fleet: {said(link.malformed)}", file=sys.stderr)
