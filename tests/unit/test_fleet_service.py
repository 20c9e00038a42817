"""The fleet service against a real Mosquitto: signed jobs run in the retained and the aws flows with
AWS-shaped statuses; refused ones (unsigned, replayed, unknown operator, expired, another thing's) are
REJECTED and audited; retained jobs queued while the service was away run when it comes, oldest first;
malformed messages are dropped and counted; desired models are installed from the packages template;
the reporter's rate limit and heartbeat; the whole service's wiring. ``run_operation`` is a stand-in
(the operations have their own tests: tests/unit/test_fleet_operations.py); MQTT is never mocked."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common._compat import TaskGroup, timeout
from common.audit import audit_path, read_audit_tail
from common.config import SiteConfig, load_config
from common.fleet.shapes import encode, job_execution, notify_next, parse_reported
from common.fleet.signing import SignedJob, sign_document
from common.fleet.topics import FleetTopics
from common.trust.keys import generate_key_pair, key_id, load_signing_key
from services.fleet import metrics
from services.fleet.context import JobContext, JobFailed
from services.fleet.jobs import Step
from services.fleet.reporter import Reporter
from services.fleet.service import FleetService
from tests.conftest import write_site
from tests.integration.conftest import Mosquitto
from tests.support import scaled

THING = "test"  # write_site's site name: the thing by default
APP_ARGS = {"url": "https://example.com/app.zip", "sha256": "0" * 64, "app": "counter", "cameras": {}}
TOPICS = FleetTopics("$aws", THING)


# -- the pieces ---------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def operator_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    private, public = generate_key_pair(tmp_path / "keys", "operator")
    return load_signing_key(private), public


def site(tmp_path: Path, broker: Mosquitto, trusted: list[Path], **fleet: Any) -> SiteConfig:
    section = {
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "trusted_operators": [str(path) for path in trusted],
        "jobs": "retained",
        "packages": "s3://bucket/models/{name}/{version}.espkg",
        **fleet,
    }
    config: SiteConfig = load_config(write_site(tmp_path, {"fleet": section}))
    return config


class Stub:
    """``run_operation``'s stand-in: records each job, says one step; restart_service of ``apps`` fails."""

    def __init__(self) -> None:
        self.jobs: list[SignedJob] = []

    async def __call__(self, job: SignedJob, context: JobContext, step: Step) -> dict[str, str]:
        self.jobs.append(job)
        await step("working")
        if job.args.get("service") == "apps":
            raise JobFailed("apps did not come back")
        return {"operation": job.operation, "version": "7"}


def service_for(config: SiteConfig, stub: Stub) -> FleetService:
    service = FleetService(config, instance="fleet-t", metrics_port=0)
    service.build_parts(stub)
    service.jobs.settle_s = 0.2
    return service


@contextlib.asynccontextmanager
async def mqtt_side(service: FleetService) -> AsyncIterator[FleetService]:
    """The service's MQTT side running (its bus side is the last test's)."""
    async with TaskGroup() as group:
        parts = (service.link.run(), service.jobs.run(), service.desired.run(), service.reporter.run())
        tasks = [group.create_task(part) for part in parts]
        try:
            yield service
        finally:
            for task in tasks:
                task.cancel()


async def eventually(condition: Callable[[], object], seconds: float = 20, what: str = "condition") -> None:
    """Polls ``condition`` (what a test waits for is another client's doing: no event to await)."""
    try:
        async with timeout(scaled(seconds)):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except (TimeoutError, asyncio.TimeoutError):
        raise AssertionError(f"{what}: not within {scaled(seconds):g} s") from None


class Operator:
    """The operator's end, as ``edgesight fleet`` is: queues retained jobs, hears statuses and reports."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = aiomqtt.Client("127.0.0.1", broker.port, identifier=f"operator-{uuid.uuid4().hex[:8]}")
        self.heard: list[tuple[str, dict[str, Any] | None]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Operator:
        await self.client.__aenter__()
        for subscription in (TOPICS.job_updates, TOPICS.reported):
            await self.client.subscribe(subscription, qos=1)
        self._task = asyncio.create_task(self._hear())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.__aexit__(None, None, None)

    async def _hear(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.heard.append((str(message.topic), json.loads(payload) if payload else None))

    async def queue(self, job_id: str, document: dict[str, Any], queued_at: int) -> None:
        execution = job_execution(job_id, THING, document, queued_at=queued_at)
        await self.client.publish(TOPICS.job_document(job_id), encode(notify_next(execution)), qos=1, retain=True)

    def statuses(self, job_id: str) -> list[dict[str, Any]]:
        return [payload for topic, payload in self.heard if topic == TOPICS.job_update(job_id) and payload]

    def final(self, job_id: str) -> dict[str, Any] | None:
        ends = [s for s in self.statuses(job_id) if s["status"] != "IN_PROGRESS"]
        return ends[-1] if ends else None

    def reports(self) -> list[dict[str, Any]]:
        return [payload["state"]["reported"] for topic, payload in self.heard if topic == TOPICS.reported and payload]


async def retained(broker: Mosquitto, topic: str) -> dict[str, Any] | None:
    """What the broker retains at ``topic``, as a client subscribing now is given it."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"reader-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(topic, qos=1)
        try:
            async with timeout(scaled(2)):
                async for message in client.messages:
                    assert message.retain
                    assert isinstance(message.payload, bytes)
                    return json.loads(message.payload)  # type: ignore[no-any-return]
        except (TimeoutError, asyncio.TimeoutError):
            return None
    return None


def audited(config: SiteConfig, action: str) -> list[dict[str, Any]]:
    chunk = read_audit_tail(audit_path(config.site.state_dir), 1 << 20)
    records = [line.record for line in chunk.lines() if line.record]
    return [record for record in records if record["action"] == action]


def signed(key: Ed25519PrivateKey, service: str = "rules", **options: Any) -> dict[str, Any]:
    targets = options.pop("targets", [THING])
    return sign_document("restart_service", {"service": service}, targets, key, **options)


# -- retained mode -------------------------------------------------------------------------------------
def test_a_signed_retained_job_runs_with_aws_shaped_statuses(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)

    async def scenario() -> tuple[Operator, dict[str, Any] | None]:
        async with Operator(broker) as operator, mqtt_side(service):
            await operator.queue("job-1", signed(key), queued_at=int(time.time()))
            await operator.queue("job-2", signed(key, "apps"), queued_at=int(time.time()) + 1)
            await eventually(lambda: operator.final("job-1") and operator.final("job-2"), what="both jobs ended")
            kept = await retained(broker, TOPICS.job_update("job-1"))
        return operator, kept

    operator, kept = asyncio.run(scenario())
    statuses = operator.statuses("job-1")
    assert [s["status"] for s in statuses] == ["IN_PROGRESS", "IN_PROGRESS", "SUCCEEDED"]
    assert [s["statusDetails"].get("step") for s in statuses[:2]] == ["started", "working"]
    assert [s["expectedVersion"] for s in statuses] == [1, 2, 3]
    assert all(isinstance(s["clientToken"], str) and s["clientToken"] for s in statuses)
    assert statuses[-1]["statusDetails"] == {"operation": "restart_service", "site": "test", "version": "7"}
    assert kept == statuses[-1]  # retained: `edgesight fleet jobs` reads it later
    failed = operator.final("job-2")
    assert failed is not None and failed["status"] == "FAILED"
    assert failed["statusDetails"]["reason"] == "apps did not come back"
    assert [job.args["service"] for job in stub.jobs] == ["rules", "apps"]
    assert [r["target"] for r in audited(config, "fleet.job_received")] == ["job-1", "job-2"]
    assert [r["target"] for r in audited(config, "fleet.job_succeeded")] == ["job-1"]
    assert audited(config, "fleet.job_failed")[0]["detail"]["reason"] == "apps did not come back"
    assert service.ledger.finished("job-1") == "SUCCEEDED" and service.ledger.finished("job-2") == "FAILED"
    assert (service.jobs.state.last, service.jobs.state.last_status) == ("job-2", "FAILED")


def test_refused_jobs_are_rejected_with_their_reason_and_audited(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)
    stranger = Ed25519PrivateKey.generate()
    first = signed(key)
    unsigned = {k: v for k, v in signed(key).items() if k != "signature"}
    refused = {
        "unsigned": unsigned,
        "replayed": first,  # job-0's very document, under another id
        "stranger": signed(stranger),
        "expired": signed(key, ttl_s=60, now=time.time() - 3600),
        "elsewhere": signed(key, targets=["site-b"]),
        "apps": sign_document("install_app", APP_ARGS, [THING], key),
    }
    reasons = {
        "unsigned": "unsigned",
        "replayed": "replayed",
        "stranger": f"unknown operator {key_id(stranger.public_key())}",
        "expired": "expired",
        "elsewhere": "not for this site",
        "apps": "not allowed: install_app (fleet.allow_apps is false on this site)",
    }

    async def scenario() -> tuple[Operator, dict[str, dict[str, Any] | None]]:
        async with Operator(broker) as operator, mqtt_side(service):
            now = int(time.time())
            await operator.queue("job-0", first, queued_at=now - 10)
            await eventually(lambda: operator.final("job-0"), what="the first job ended")
            for number, document in enumerate(refused.values()):
                await operator.queue(f"bad-{number}", document, queued_at=now + number)
            await eventually(lambda: all(operator.final(f"bad-{n}") for n in range(len(refused))), what="all refused")
            kept = {name: await retained(broker, TOPICS.job_update(f"bad-{n}")) for n, name in enumerate(refused)}
        return operator, kept

    operator, kept = asyncio.run(scenario())
    assert len(stub.jobs) == 1  # job-0 only
    for number, name in enumerate(refused):
        final = operator.final(f"bad-{number}")
        assert final is not None and final["status"] == "REJECTED", name
        assert final["statusDetails"]["reason"] == reasons[name], name
        assert [s["status"] for s in operator.statuses(f"bad-{number}")] == ["REJECTED"], name
    records = {r["target"]: r for r in audited(config, "fleet.job_refused")}
    assert {records[f"bad-{n}"]["detail"]["reason"] for n in range(len(refused))} == set(reasons.values())
    assert metrics.JOBS.labels("rejected")._value.get() >= len(refused)
    # a trusted operator's document (refused as replayed, expired, not allowed): remembered, retained, their act
    for number, name in enumerate(refused):
        trusted = name in ("replayed", "expired", "apps")
        assert (kept[name] is not None) == trusted, name
        assert (service.ledger.finished(f"bad-{number}") == "REJECTED") == trusted, name
        record = records[f"bad-{number}"]
        assert record["actor"] == (f"fleet:{key_id(key.public_key())}" if trusted else "fleet:fleet-t"), name
        assert ("claimed_operator" in record["detail"]) == (not trusted), name
    # no trusted operator's: the claim is only a claim
    assert records["bad-2"]["detail"]["claimed_operator"] == key_id(stranger.public_key())
    assert "operator" not in records["bad-2"]["detail"] and records["bad-2"]["detail"]["count"] == 1
    assert service.jobs.state.last == "bad-5"  # the last trusted one; junk is not the site's last job


def test_retained_jobs_queued_while_it_was_away_run_oldest_first_when_it_comes(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)
    service.ledger.finish("done-before", "SUCCEEDED")
    service.ledger.finish("cut-short", "IN_PROGRESS")  # the service stopped while it ran

    async def scenario() -> Operator:
        async with Operator(broker) as operator:
            now = int(time.time())
            for job_id, service_name, queued_at in [
                ("newer", "uplink", now),
                ("older", "rules", now - 60),
                ("done-before", "ingest", now - 120),
                ("cut-short", "console", now - 90),
            ]:
                await operator.queue(job_id, signed(key, service_name), queued_at)
            async with mqtt_side(service):
                await eventually(lambda: operator.final("newer") and operator.final("cut-short"), what="jobs ran")
                await asyncio.sleep(0.5)
        return operator

    operator = asyncio.run(scenario())
    assert [job.args["service"] for job in stub.jobs] == ["rules", "uplink"]  # queuedAt order; done-before skipped
    assert operator.statuses("done-before") == []  # silently
    cut = operator.final("cut-short")
    assert cut is not None and cut["status"] == "FAILED" and cut["statusDetails"]["reason"].startswith("interrupted")


def test_malformed_messages_are_dropped_and_counted_never_fatal(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    before = metrics.MESSAGES_REJECTED.labels("malformed")._value.get()

    async def scenario() -> Operator:
        async with Operator(broker) as operator, mqtt_side(service_for(config, stub)):
            await eventually(lambda: operator.reports(), what="a first report")
            client = operator.client
            await client.publish(TOPICS.job_document("junk"), b"\xff not json", qos=1)
            await client.publish(TOPICS.job_document("list"), b"[1, 2]", qos=1)
            other = encode(notify_next(job_execution("other", THING, signed(key), queued_at=1)))
            await client.publish(TOPICS.job_document("mismatch"), other, qos=1)  # jobId not the topic's
            await client.publish(TOPICS.desired_delta, b'{"state": {"models": ["people"]}}', qos=1)
            await operator.queue("good", signed(key), int(time.time()))
            await eventually(lambda: operator.final("good"), what="the good job ran")
        return operator

    operator = asyncio.run(scenario())
    assert metrics.MESSAGES_REJECTED.labels("malformed")._value.get() - before == 4
    assert operator.statuses("junk") == operator.statuses("mismatch") == operator.statuses("other") == []
    assert [job.args["service"] for job in stub.jobs] == ["rules"]


def test_after_the_broker_comes_back_it_reconnects_and_runs_what_was_queued_meanwhile(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)

    async def scenario() -> Operator:
        async with mqtt_side(service):
            await eventually(lambda: service.link.connected, what="connected")
            await asyncio.to_thread(broker.stop)
            await eventually(lambda: not service.link.connected, what="the loss noticed")
            await asyncio.to_thread(broker.start)
            async with Operator(broker) as operator:  # queued before the site is back, retained
                await operator.queue("while-away", signed(key), int(time.time()))
                await eventually(lambda: operator.final("while-away"), what="the job run after reconnecting")
        return operator

    operator = asyncio.run(scenario())
    final = operator.final("while-away")
    assert final is not None and final["status"] == "SUCCEEDED"
    assert service.link.connections == 2


# -- aws mode: the Jobs MQTT API as AWS IoT answers it -----------------------------------------------------
class FakeAwsJobs:
    """AWS IoT Jobs as a device sees it: ``start-next`` answered with the next queued execution, made
    IN_PROGRESS (its version one up); each update accepted when its expectedVersion is the execution's.
    And the named shadow's ``get``: answered with ``desired`` (404 when there is none)."""

    def __init__(self, broker: Mosquitto, queued: list[dict[str, Any]], desired: dict[str, Any] | None = None) -> None:
        self.desired = desired
        self.client = aiomqtt.Client("127.0.0.1", broker.port, identifier="aws-iot-jobs")
        self.queued = queued
        self.versions: dict[str, int] = {}
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self.asked = 0
        self.ready = asyncio.Event()

    async def serve(self) -> None:
        async with self.client:
            await self.client.subscribe(TOPICS.start_next, qos=1)
            await self.client.subscribe(f"{TOPICS.jobs}/+/update", qos=1)
            await self.client.subscribe(TOPICS.shadow_get, qos=1)
            self.ready.set()
            async for message in self.client.messages:
                assert isinstance(message.payload, bytes)
                request = json.loads(message.payload)
                if str(message.topic) == TOPICS.start_next:
                    await self._start_next(request)
                elif str(message.topic) == TOPICS.shadow_get:
                    await self._get(request)
                else:
                    await self._update(TOPICS.job_id_of(str(message.topic)) or "", request)

    async def _start_next(self, request: dict[str, Any]) -> None:
        self.asked += 1
        answer: dict[str, Any] = {"timestamp": int(time.time()), "clientToken": request["clientToken"]}
        if self.queued:
            execution = {**self.queued.pop(0), "status": "IN_PROGRESS"}
            execution["versionNumber"] += 1
            self.versions[execution["jobId"]] = execution["versionNumber"]
            answer["execution"] = execution
        await self.client.publish(TOPICS.start_next_accepted, encode(answer), qos=1)

    async def _update(self, job_id: str, request: dict[str, Any]) -> None:
        self.updates.append((job_id, request))
        current = self.versions.get(job_id)
        if request.get("expectedVersion") != current:
            answer = {"code": "VersionMismatch", "clientToken": request["clientToken"]}
            await self.client.publish(f"{TOPICS.jobs}/{job_id}/update/rejected", encode(answer), qos=1)
            return
        self.versions[job_id] = (current or 0) + 1
        answer = {"executionState": {"status": request["status"], "versionNumber": self.versions[job_id]}}
        await self.client.publish(f"{TOPICS.jobs}/{job_id}/update/accepted", encode(answer), qos=1)

    async def _get(self, request: dict[str, Any]) -> None:
        if self.desired is None:
            answer = {
                "code": 404,
                "message": "No shadow exists with name: 'edgesight'",
                "clientToken": request["clientToken"],
            }
            await self.client.publish(TOPICS.shadow_get_rejected, encode(answer), qos=1)
            return
        state = {"desired": self.desired, "delta": self.desired}
        answer = {"state": state, "version": 3, "timestamp": int(time.time()), "clientToken": request["clientToken"]}
        await self.client.publish(TOPICS.shadow_get_accepted, encode(answer), qos=1)

    async def notify(self, execution: dict[str, Any]) -> None:
        self.queued.append(execution)
        await self.client.publish(TOPICS.notify_next, encode(notify_next(execution)), qos=1)


def test_aws_jobs_start_next_on_connect_after_each_job_and_on_notify_next(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public], jobs="aws"), Stub()
    now = int(time.time())
    queued = [job_execution(f"aws-{n}", THING, signed(key), queued_at=now + n, version=1) for n in range(2)]
    models = {"people": "3"}
    desired = {"models": models, "signed": sign_document("set_desired", {"models": models}, [THING], key)}

    async def scenario() -> tuple[FakeAwsJobs, dict[str, Any] | None]:
        aws = FakeAwsJobs(broker, queued, desired)  # aiomqtt's client is made in its loop
        serving = asyncio.create_task(aws.serve())
        await aws.ready.wait()
        async with mqtt_side(service_for(config, stub)):
            await eventually(
                lambda: len(stub.jobs) == 3 and aws.asked >= 3, what="two jobs and a model, start-next again"
            )
            await aws.notify(job_execution("aws-late", THING, signed(key, "uplink"), queued_at=now + 5))
            await eventually(lambda: any(j == "aws-late" and u["status"] == "SUCCEEDED" for j, u in aws.updates))
        kept = await retained(broker, TOPICS.job_update("aws-0"))
        serving.cancel()
        return aws, kept

    aws, kept = asyncio.run(scenario())
    restarted = [job.args["service"] for job in stub.jobs if job.operation == "restart_service"]
    assert restarted == ["rules", "rules", "uplink"]
    installed = [job.args for job in stub.jobs if job.operation == "install_model"]  # desired, from the shadow
    assert installed == [{"url": "s3://bucket/models/people/3.espkg", "sha256": None, "name": "people", "version": "3"}]
    for job_id in ("aws-0", "aws-1", "aws-late"):
        statuses = [update for j, update in aws.updates if j == job_id]
        assert [u["status"] for u in statuses] == ["IN_PROGRESS", "IN_PROGRESS", "SUCCEEDED"]
        assert [u["expectedVersion"] for u in statuses] == [2, 3, 4]  # every one accepted by AWS
    assert kept is None  # AWS IoT keeps statuses itself: nothing retained


# -- desired models ------------------------------------------------------------------------------------
def test_signed_desired_models_are_installed_from_the_packages_template(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    now = time.time()
    newer = sign_document("set_desired", {"models": {"people": "5"}}, [THING], key, now=now)
    older = sign_document("set_desired", {"models": {"people": "4"}}, [THING], key, now=now - 600)

    def delta(document: dict[str, Any] | None, models: dict[str, str]) -> bytes:
        message: dict[str, Any] = {"state": {"models": models}, "version": 1, "timestamp": int(now)}
        return encode(message if document is None else {**message, "signed": document})

    async def scenario() -> Operator:
        async with Operator(broker) as operator, mqtt_side(service_for(config, stub)) as service:
            publish = operator.client.publish
            await publish(TOPICS.desired_delta, delta(newer, {"people": "5"}), qos=1, retain=True)
            await eventually(lambda: stub.jobs, what="the desired model installed")
            await publish(TOPICS.desired_delta, delta(older, {"people": "4"}), qos=1, retain=True)  # ignored
            await publish(TOPICS.desired_delta, delta(None, {"people": "6"}), qos=1, retain=True)  # refused
            await eventually(lambda: audited(config, "fleet.desired_refused"), what="the unsigned one refused")
            service.reporter.nudge()
            await eventually(lambda: any(r.get("desired") for r in operator.reports()), what="desired reported")
        return operator

    operator = asyncio.run(scenario())
    assert len(stub.jobs) == 1
    job = stub.jobs[0]
    assert (job.operation, job.operator) == ("install_model", newer["operator"])
    assert job.args == {"url": "s3://bucket/models/people/5.espkg", "sha256": None, "name": "people", "version": "5"}
    assert audited(config, "fleet.desired_applied")[0]["target"] == "people"
    assert audited(config, "fleet.desired_refused")[0]["detail"]["reason"] == "unsigned"
    assert [r["desired"] for r in operator.reports() if r.get("desired")][-1] == {"models": {"people": "5"}}


# -- the reporter ----------------------------------------------------------------------------------------
def test_the_reporter_reports_changes_at_most_every_min_interval_and_beats_when_nothing_changes(
    tmp_path: Path, broker: Mosquitto
) -> None:
    config = site(tmp_path, broker, [])
    assert config.fleet is not None
    quick = config.fleet.model_copy(update={"min_report_interval_s": 0.4, "report_interval_s": 1.5})
    config = config.model_copy(update={"fleet": quick})
    service = service_for(config, Stub())
    sent: list[tuple[float, dict[str, Any]]] = []

    async def publish(topic: str, payload: bytes, retain: bool) -> bool:
        assert (topic, retain) == (TOPICS.reported, True)
        reported = parse_reported(payload)
        assert reported is not None
        sent.append((time.monotonic(), reported))
        return True

    reporter = Reporter(config, service.site, service.watch, publish)

    async def scenario() -> None:
        task = asyncio.create_task(reporter.run())
        await eventually(lambda: sent, what="a first report")
        await asyncio.sleep(3.9)  # nothing changes: heartbeats only (at 1.5 s and 3 s)
        quiet = len(sent)
        for number in range(20):  # a change every 0.1 s for 2 s
            service.watch.last_error = f"trouble {number}"
            reporter.nudge()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        busy = sent[quiet:]
        task.cancel()
        assert 3 <= quiet <= 4, [round(t - sent[0][0], 2) for t, _ in sent]
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(sent)]
        assert all(gap >= 0.38 for gap in gaps), gaps  # never above the rate limit
        assert all(gap >= 1.4 for gap in gaps[: quiet - 1]), gaps  # quiet: the heartbeat's pace
        assert 3 <= len(busy) <= 7, len(busy)  # changing: about every 0.4 s
        assert busy[-1][1]["last_error"] == "trouble 19"  # the newest state went out

    asyncio.run(scenario())
    report = sent[0][1]
    assert report["schema"] == 1 and report["site"] == "test" and report["thing"] == THING
    assert report["interval_s"] == 1.5 and isinstance(report["edgesight"], str)
    assert report["job"] == {"current": None, "last": None, "last_status": None, "last_reason": None}


# -- the whole service -------------------------------------------------------------------------------------
def test_the_service_serves_metrics_reports_and_says_a_last_report_on_a_clean_stop(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    _, public = operator_key
    config = site(tmp_path, broker, [public], console_url="https://site.example/console")
    service = service_for(config, Stub())

    async def scenario() -> tuple[str, list[dict[str, Any]], dict[str, Any] | None]:
        async with Operator(broker) as operator:
            running = asyncio.create_task(service.run())
            await eventually(lambda: service.link.connected and operator.reports(), what="connected and reported")
            assert service.http is not None
            url = f"http://127.0.0.1:{service.http.port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            assert service.health_detail()["mqtt"] == "connected"
            count = len(operator.reports())
            service.stop()
            await running
            await eventually(lambda: len(operator.reports()) > count, what="the last report")
            return text, operator.reports(), await retained(broker, TOPICS.reported)

    text, reports, kept = asyncio.run(scenario())
    assert "edgesight_fleet_mqtt_connected 1.0" in text
    assert 'edgesight_fleet_jobs_total{result="rejected"}' in text
    assert reports[0]["console_url"] == "https://site.example/console"
    assert kept is not None and kept["state"]["reported"]["reported_at"] == reports[-1]["reported_at"]
    assert kept["state"]["reported"]["state"] == "stopped" and reports[0]["state"] == "running"
    assert not service.link.connected
