"""The operator's side of the fleet's wire, for ``edgesight fleet``: a broker that keeps job documents,
statuses and reported states retained (``jobs: retained``), or AWS IoT itself (``jobs: aws``: Jobs and the
``edgesight`` named shadow, through boto3).

Both links answer the same questions — what does each site report, what is the desired state, what jobs are
there — and send and follow jobs; ``edgesight fleet`` never asks which one it holds (:func:`open_link`).
A retained job document stays on the broker until its site answers with a final status: a site that is
offline now runs it when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from common._compat import timeout
from common.config.uplink import MqttSink
from common.errors import EdgeSightError
from common.fleet import shapes
from common.fleet.fleet_file import FleetFile
from common.fleet.signing import OPERATIONS
from common.fleet.topics import SHADOW_NAME, FleetTopics, job_id_of, thing_of
from common.mqtt import client_options

__all__ = ["AwsLink", "FleetLink", "JobRecord", "JobStatus", "LinkError", "MqttLink", "open_link"]

QUIET_S = 1.0  # retained messages come in one burst after a subscription: this long without one ends it
POLL_S = 2.0  # how often AWS IoT is asked about a job execution (DescribeJobExecution allows 10/s per account)
MAX_AWS_JOBS = 100  # `fleet jobs` lists at most the newest this many jobs in aws mode


class LinkError(EdgeSightError):
    """The broker or AWS IoT cannot be reached or refused a request; says which and why."""


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """A job's latest status as its site (or AWS IoT) says it; ``details`` are its statusDetails."""

    job_id: str
    thing: str
    status: str
    details: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in shapes.TERMINAL_STATUSES


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job the wire still holds, for ``fleet jobs``: its document (None once cleared) and status."""

    job_id: str
    thing: str
    operation: str | None
    queued_at: float | None
    status: JobStatus | None


def _decoded(payload: bytes, parse: Callable[[bytes], Any]) -> Any:
    """A payload parsed, or None when it is not the shape it should be (someone else's message)."""
    try:
        return parse(payload)
    except shapes.MalformedMessage:
        return None


class MqttLink:
    """The operator on an MQTT broker (retained mode). One connection, one reader task: every message
    heard is kept by topic (an empty payload forgets it), and waiters are woken on each."""

    def __init__(self, broker: MqttSink, root: str) -> None:
        self.broker = broker
        self.root = root
        self.heard: dict[str, bytes] = {}
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
            client = aiomqtt.Client(**client_options(self.broker, operator), clean_session=True)
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
                if payload:
                    self.heard[message.topic.value] = payload
                else:
                    self.heard.pop(message.topic.value, None)
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
        for topic, payload in self.matching(self.all_reported).items():
            thing = thing_of(topic, self.root)
            reported = _decoded(payload, shapes.parse_reported)
            if thing is not None and reported is not None:
                found[thing] = reported
        return found

    async def submit(self, thing: str, job_id: str, document: dict[str, Any]) -> None:
        # statuses are retained: none is missed whether subscribed before or after
        await self.subscribe(FleetTopics.all_job_updates(self.root), seconds=0)
        now = int(time.time())
        execution = shapes.job_execution(job_id, thing, document, queued_at=now)
        await self.publish(FleetTopics(self.root, thing).job_document(job_id), shapes.notify_next(execution))

    async def status(self, thing: str, job_id: str) -> JobStatus | None:
        payload = self.heard.get(FleetTopics(self.root, thing).job_update(job_id))
        update = None if payload is None else _decoded(payload, shapes.parse_status_update)
        return None if update is None else JobStatus(job_id, thing, update.status, update.details)

    async def finished(self, thing: str, job_id: str) -> None:
        """A job's site is done with it: its retained document goes (its status stays, for ``fleet jobs``)."""
        await self.publish(FleetTopics(self.root, thing).job_document(job_id), None)

    def mark(self) -> int:
        return self._heard_count

    async def wait_news(self, mark: int, seconds: float) -> None:
        await self._wait_after(mark, seconds)

    async def desired(self, thing: str, seconds: float) -> dict[str, str]:
        # every site's at once: a rollout to many sites waits for one burst of retained messages, not one each
        await self.subscribe(self.all_desired, seconds=seconds)
        topic = FleetTopics(self.root, thing).desired_delta
        payload = self.heard.get(topic)
        desired = None if payload is None else _decoded(payload, shapes.parse_desired)
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
            document = self.heard.get(FleetTopics(self.root, thing).job_document(job_id))
            execution = None if document is None else _decoded(document, shapes.parse_execution)
            records[(thing, job_id)] = JobRecord(
                job_id,
                thing,
                _operation(execution.document if execution is not None else None, job_id),
                execution.queued_at if execution is not None else None,
                await self.status(thing, job_id),
            )
        return sorted(records.values(), key=lambda record: (record.queued_at or 0, record.job_id))

    async def prune(self, records: Iterable[JobRecord]) -> int:
        """Clears the retained document and status of each finished job; how many."""
        pruned = 0
        for record in records:
            if record.status is not None and record.status.final:
                topics = FleetTopics(self.root, record.thing)
                await self.publish(topics.job_document(record.job_id), None)
                await self.publish(topics.job_update(record.job_id), None)
                pruned += 1
        return pruned


def _operation(document: object, job_id: str) -> str | None:
    """The document's operation; without one, the operation its id begins with (ids of `edgesight fleet`)."""
    operation = document.get("operation") if isinstance(document, dict) else None
    if isinstance(operation, str):
        return operation
    return next((name for name in OPERATIONS if job_id.startswith(f"{name}-")), None)


class AwsLink:
    """The operator on AWS IoT (aws mode): jobs through AWS IoT Jobs (CreateJob, DescribeJobExecution), reported
    and desired state through the ``edgesight`` named shadow (the IoT data plane). boto3 finds credentials
    as everywhere (environment, profile, role); ``AWS_ENDPOINT_URL`` points both clients elsewhere (moto)."""

    def __init__(self, region: str | None, data_endpoint_url: str | None) -> None:
        self.region = region
        self.data_endpoint_url = data_endpoint_url
        self._arns: dict[str, str] = {}
        self.iot: Any = None
        self.data: Any = None

    async def __aenter__(self) -> AwsLink:
        import boto3  # type: ignore[import-untyped]

        self.iot = boto3.client("iot", region_name=self.region)
        self.data = boto3.client("iot-data", region_name=self.region, endpoint_url=self.data_endpoint_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in (self.iot, self.data):
            client.close()

    async def _call(self, what: str, method: Callable[..., Any], **arguments: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            return await asyncio.to_thread(method, **arguments)
        except (BotoCoreError, ClientError) as exc:
            if (
                isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"
            ):
                return None  # no such thing, shadow or job: the caller says what that means
            raise LinkError(f"AWS IoT {what}: {exc}") from None

    async def _shadow(self, thing: str) -> bytes | None:
        answer = await self._call(
            f"GetThingShadow {thing}", self.data.get_thing_shadow, thingName=thing, shadowName=SHADOW_NAME
        )
        return None if answer is None else bytes(answer["payload"].read())

    async def reported(self, things: Iterable[str], seconds: float) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for thing in things:
            payload = await self._shadow(thing)
            reported = None if payload is None else _decoded(payload, shapes.parse_reported)
            if reported is not None:
                found[thing] = reported
        return found

    async def submit(self, thing: str, job_id: str, document: dict[str, Any]) -> None:
        if thing not in self._arns:
            described = await self._call(f"DescribeThing {thing}", self.iot.describe_thing, thingName=thing)
            if described is None:
                raise LinkError(f"AWS IoT has no thing {thing!r} (fleet.yaml sites: thing)")
            self._arns[thing] = described["thingArn"]
        await self._call(
            f"CreateJob {job_id}",
            self.iot.create_job,
            jobId=job_id,
            targets=[self._arns[thing]],
            document=json.dumps(document, separators=(",", ":")),
            description=f"edgesight {_operation(document, job_id)} for {thing}",
        )

    async def status(self, thing: str, job_id: str) -> JobStatus | None:
        answer = await self._call(
            f"DescribeJobExecution {job_id}", self.iot.describe_job_execution, jobId=job_id, thingName=thing
        )
        if answer is None:
            return None
        execution = answer["execution"]
        details = (execution.get("statusDetails") or {}).get("detailsMap") or {}
        return JobStatus(job_id, thing, str(execution["status"]), {str(k): str(v) for k, v in details.items()})

    async def finished(self, thing: str, job_id: str) -> None:
        """Nothing to do: AWS IoT keeps a job's execution until the job is deleted (``fleet jobs --prune``)."""

    def mark(self) -> int:
        return 0

    async def wait_news(self, mark: int, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(POLL_S, seconds)))  # AWS IoT tells nothing: it is asked again

    async def desired(self, thing: str, seconds: float) -> dict[str, str]:
        payload = await self._shadow(thing)
        desired = None if payload is None else _decoded(payload, shapes.parse_desired)
        return dict(desired.models or {}) if desired is not None else {}

    async def set_desired(self, thing: str, models: dict[str, str], document: dict[str, Any]) -> None:
        # a shadow update is merged into the desired state: a model no longer desired is deleted with a null,
        # in the models and in the signed document's args (else the site would read a document never signed)
        gone: dict[str, Any] = {name: None for name in await self.desired(thing, 0) if name not in models}
        update = shapes.desired_update(models, document)
        if gone:
            desired = update["state"]["desired"]
            desired["models"] = {**models, **gone}
            desired["signed"] = {**document, "args": {**document["args"], "models": {**models, **gone}}}
        payload = shapes.encode(update)
        await self._call(
            f"UpdateThingShadow {thing}",
            self.data.update_thing_shadow,
            thingName=thing,
            shadowName=SHADOW_NAME,
            payload=payload,
        )

    async def jobs(self, things: Iterable[str], seconds: float) -> list[JobRecord]:
        listed = await self._call("ListJobs", self.iot.list_jobs, maxResults=MAX_AWS_JOBS)
        records: list[JobRecord] = []
        for job in (listed or {}).get("jobs", []):
            job_id = job["jobId"]
            operation = _operation(None, job_id)
            executions = await self._call(
                f"ListJobExecutionsForJob {job_id}", self.iot.list_job_executions_for_job, jobId=job_id
            )
            for summary in (executions or {}).get("executionSummaries", []):
                thing = str(summary.get("thingArn", "")).rsplit("/", 1)[-1]
                execution = summary.get("jobExecutionSummary", {})
                status = JobStatus(job_id, thing, str(execution.get("status", "QUEUED")))
                queued = execution.get("queuedAt")
                queued_at = float(queued.timestamp()) if hasattr(queued, "timestamp") else None  # boto3: a datetime
                records.append(JobRecord(job_id, thing, operation, queued_at, status))
        return sorted(records, key=lambda record: (record.queued_at or 0, record.job_id))

    async def prune(self, records: Iterable[JobRecord]) -> int:
        """Deletes each finished job; how many."""
        finished = {record.job_id for record in records if record.status is not None and record.status.final}
        for job_id in finished:  # one thing a job (job_id_for): its execution's end is the job's
            await self._call(f"DeleteJob {job_id}", self.iot.delete_job, jobId=job_id)
        return len(finished)


FleetLink = MqttLink | AwsLink


def aws_region(host: str) -> str | None:
    """The region of an AWS IoT endpoint (``abc-ats.iot.eu-west-1.amazonaws.com``); None for any other host.

    >>> aws_region("a1b2c3-ats.iot.eu-west-1.amazonaws.com"), aws_region("mosquitto.local")
    ('eu-west-1', None)
    """
    match = re.fullmatch(r"[^.]+\.iot\.([a-z0-9-]+)\.amazonaws\.com", host)
    return match[1] if match else None


def open_link(fleet: FleetFile) -> contextlib.AbstractAsyncContextManager[FleetLink]:
    """The link ``fleet.yaml`` asks for: AWS IoT in aws mode (its data plane at the broker's host, the
    account's own endpoint), else its broker."""
    if fleet.jobs_mode == "aws":
        host = fleet.broker.host
        data_endpoint = f"https://{host}" if aws_region(host) else None
        return AwsLink(aws_region(host), data_endpoint)
    return MqttLink(fleet.broker, fleet.topic_root)
