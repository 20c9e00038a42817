"""What an attacker on the broker can no longer do to a site's fleet service: starve a signed job with
a flood of junk (or the same document sent again and again), make the ledger, the audit trail and the
retained statuses grow with junk, run an operator's document under another job id, withdraw the signed
desired state with an empty message, hold the one-change-at-a-time lock with a trickling package
server, or write its own text as the operator of an audit record. Real Mosquitto and a real aiohttp
server; ``run_operation`` is test_fleet_service's stand-in."""

# ruff: noqa: F811  (the fixtures broker and operator_key are imported from test_fleet_service, then used)
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.fleet.shapes import encode
from common.fleet.signing import JobRefused, sign_document, verify_document
from common.trust.keys import key_id
from services.fleet import download as downloads
from services.fleet.jobs import SETTLE_S
from services.fleet.refusals import RefusalTally
from tests.integration.conftest import Mosquitto
from tests.support import scaled
from tests.unit.test_fleet_service import (  # noqa: F401  (broker, operator_key: the fixtures, shared)
    THING,
    TOPICS,
    Operator,
    Stub,
    audited,
    broker,
    eventually,
    mqtt_side,
    operator_key,
    retained,
    service_for,
    signed,
    site,
)

NOW = 1_800_000_000.0


def junk(operator: str = "0123456789abcdef") -> dict[str, Any]:
    """A tiny unsigned document anyone can send."""
    return {"edgesight_job": 1, "operation": "restart_service", "args": {"service": "rules"}, "operator": operator}


# -- finding 3 and 6: a flood of junk --------------------------------------------------------------------
def test_a_signed_job_runs_within_seconds_through_a_flood_of_junk_that_costs_nothing_lasting(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)
    service.jobs.settle_s = SETTLE_S  # the real settle wait, which each junk message used to start again
    ledger = service.ledger.path

    async def flood(operator: Operator, stop: asyncio.Event) -> int:
        sent = 0
        while not stop.is_set():  # the same document again and again, and a new one each time
            await operator.queue("junk", junk(), queued_at=0)
            await operator.queue(f"junk-{sent}", junk(), queued_at=0)
            sent += 1
            await asyncio.sleep(0.3)
        return sent

    async def scenario() -> tuple[Operator, float, dict[str, Any] | None]:
        async with Operator(broker) as operator, mqtt_side(service):
            await eventually(lambda: service.link.connected, what="connected")
            stop = asyncio.Event()
            flooding = asyncio.create_task(flood(operator, stop))
            await asyncio.sleep(1.0)
            queued = time.monotonic()
            await operator.queue("signed", signed(key), queued_at=int(time.time()))
            await eventually(lambda: operator.final("signed"), seconds=6, what="the signed job ran through the flood")
            took = time.monotonic() - queued
            await asyncio.sleep(1.0)
            stop.set()
            await flooding
            kept = await retained(broker, TOPICS.job_update("junk"))
        return operator, took, kept

    operator, took, kept = asyncio.run(scenario())
    final = operator.final("signed")
    assert final is not None and final["status"] == "SUCCEEDED"
    assert took < scaled(4), took
    assert kept is None  # junk's statuses are not retained...
    assert [s["status"] for s in operator.statuses("junk")] == ["REJECTED"]  # ...and said once a minute per id
    assert operator.statuses("junk")[0]["statusDetails"]["reason"] == "unsigned"
    assert service.ledger.finished("junk") is None and service.ledger.finished("junk-0") is None
    assert "junk" not in ledger.read_text()  # the ledger never wrote a word of it
    refusals = audited(config, "fleet.job_refused")
    assert len(refusals) == 1, refusals  # one record per reason a minute (the rest are counted at its end)
    assert refusals[0]["detail"]["count"] == 1 and refusals[0]["detail"]["reason"] == "unsigned"
    assert service.jobs.state.last == "signed" and service.jobs.state.rejected >= 10


def test_refusals_are_recorded_once_per_reason_per_window_with_a_count() -> None:
    records: list[tuple[str, str, dict[str, Any]]] = []

    async def record(action: str, target: str, **detail: Any) -> None:
        records.append((action, target, detail))

    async def scenario() -> None:
        tally = RefusalTally(record, window_s=0.3)
        closing = asyncio.create_task(tally.run())
        for number in range(5):
            await tally.add(f"j{number}", "unsigned", None)
            await tally.add(f"k{number}", f"unknown operator 'x{number}'", f"x{number}")
        assert [(r[1], r[2]["count"]) for r in records] == [("j0", 1), ("k0", 1)]  # the first of each, at once
        await asyncio.sleep(0.45)  # the window closed: what it counted, as one record each
        assert [(r[1], r[2]["count"], r[2]["reason"]) for r in records[2:]] == [
            ("j1", 4, "unsigned"),
            ("k1", 4, "unknown operator 'x1'"),
        ]
        await asyncio.sleep(0.4)  # a quiet window: nothing to say, and the next refusal is said at once
        await tally.add("j9", "unsigned", None)
        assert len(records) == 5 and records[-1][1] == "j9"
        closing.cancel()

    asyncio.run(scenario())
    assert all(action == "fleet.job_refused" for action, _, _ in records)


# -- finding 4: the job id is signed -----------------------------------------------------------------------
def test_a_document_signed_for_a_job_id_runs_only_under_it() -> None:
    key = Ed25519PrivateKey.generate()
    trusted = {key_id(key.public_key()): key.public_key()}
    bound = sign_document("restart_service", {"service": "rules"}, ["site-a"], key, now=NOW, job_id="job-7")
    assert bound["job_id"] == "job-7"
    assert verify_document(bound, trusted, "site-a", now=NOW).job_id == "job-7"
    moved = {**bound, "job_id": "job-8"}  # the binding is covered by the signature
    with pytest.raises(JobRefused, match="bad signature"):
        verify_document(moved, trusted, "site-a", now=NOW)
    with pytest.raises(JobRefused, match="malformed: job_id"):
        sign_document("restart_service", {"service": "rules"}, ["site-a"], key, job_id="job 7/../x")
    free = sign_document("restart_service", {"service": "rules"}, ["site-a"], key, now=NOW)
    assert "job_id" not in free and verify_document(free, trusted, "site-a", now=NOW).job_id is None


def test_a_copy_under_another_job_id_is_refused_and_the_operators_job_still_runs(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    service = service_for(config, stub)
    document = sign_document("restart_service", {"service": "rules"}, [THING], key, job_id="operators-job")

    async def scenario() -> tuple[Operator, dict[str, Any] | None]:
        async with Operator(broker) as operator, mqtt_side(service):
            now = int(time.time())
            await operator.queue("attackers-copy", document, queued_at=now - 60)  # older: it goes first
            await operator.queue("operators-job", document, queued_at=now)
            await eventually(lambda: operator.final("operators-job") and operator.final("attackers-copy"))
            kept = await retained(broker, TOPICS.job_update("attackers-copy"))
        return operator, kept

    operator, kept = asyncio.run(scenario())
    assert kept is None and service.ledger.finished("attackers-copy") is None  # a copy costs what junk costs
    copy, real = operator.final("attackers-copy"), operator.final("operators-job")
    assert copy is not None and copy["status"] == "REJECTED"
    assert copy["statusDetails"]["reason"] == "signed for another job id"
    assert real is not None and real["status"] == "SUCCEEDED"
    assert len(stub.jobs) == 1


# -- finding 12: who the audit says did it ---------------------------------------------------------------------
def test_audit_records_name_the_verified_operator_as_actor_and_a_claim_only_as_plain_text(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    claim = "\x1b[31mroot\n\u202e" + "x" * 200

    async def scenario() -> Operator:
        async with Operator(broker) as operator, mqtt_side(service_for(config, stub)):
            now = int(time.time())
            await operator.queue("good", signed(key), queued_at=now)
            await operator.queue("bad", signed(key, "apps"), queued_at=now + 1)
            await operator.queue("claimed", junk(claim), queued_at=now + 2)
            await eventually(lambda: all(operator.final(j) for j in ("good", "bad", "claimed")))
        return operator

    asyncio.run(scenario())
    actor = f"fleet:{key_id(key.public_key())}"
    for action in ("fleet.job_received", "fleet.job_succeeded", "fleet.job_failed"):
        assert {record["actor"] for record in audited(config, action)} == {actor}, action
    (refused,) = audited(config, "fleet.job_refused")
    assert refused["actor"] == "fleet:fleet-t" and "operator" not in refused["detail"]
    assert refused["detail"]["claimed_operator"] == ("[31mroot" + "x" * 200)[:64]


# -- finding 9: an empty retained message is no operator's word ----------------------------------------------------
def test_a_cleared_desired_state_message_withdraws_nothing_a_signed_empty_one_does(
    tmp_path: Path, broker: Mosquitto, operator_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, public = operator_key
    config, stub = site(tmp_path, broker, [public]), Stub()
    now = time.time()

    stranger = Ed25519PrivateKey.generate()

    def delta(models: dict[str, str], at: float, signer: Ed25519PrivateKey = key) -> bytes:
        document = sign_document("set_desired", {"models": models}, [THING], signer, now=at)
        return encode({"state": {"models": models}, "version": 1, "timestamp": int(at), "signed": document})

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        async with Operator(broker) as operator, mqtt_side(service_for(config, stub)) as service:
            publish = operator.client.publish
            await publish(TOPICS.desired_delta, delta({"people": "5"}, now - 60), qos=1, retain=True)
            await eventually(lambda: stub.jobs, what="the desired model installed")
            for _ in range(2):  # cleared (said once), twice
                await publish(TOPICS.desired_delta, b"", qos=1, retain=True)
                await publish(TOPICS.desired_delta, b"{}", qos=1)
            await asyncio.sleep(0.5)
            seen.append(service.desired.reported())
            await publish(TOPICS.desired_delta, delta({}, now), qos=1, retain=True)  # the operator's own "none"
            await eventually(lambda: service.desired.models == {}, what="the signed empty desired state taken")
            seen.append(service.desired.reported())
            assert audited(config, "fleet.desired_refused") == []
            unsigned = encode({"state": {"models": {"people": "6"}}, "version": 2})
            for _ in range(3):  # a stranger's and an unsigned one, by turns: one record per reason (the rest counted)
                await publish(TOPICS.desired_delta, delta({"people": "6"}, now + 1, stranger), qos=1, retain=True)
                await publish(TOPICS.desired_delta, unsigned, qos=1, retain=True)
            await eventually(lambda: len(audited(config, "fleet.desired_refused")) == 2, what="both refused")
            await asyncio.sleep(0.5)
            seen.append(service.desired.reported())
        return seen

    held, emptied, still = asyncio.run(scenario())
    assert held == {"models": {"people": "5"}}
    assert emptied == still == {"models": {}}
    refused, unsigned = audited(config, "fleet.desired_refused")
    assert unsigned["detail"]["reason"] == "unsigned" and unsigned["detail"]["count"] == 1
    assert refused["actor"] == "fleet:fleet-t" and refused["detail"]["count"] == 1
    assert refused["detail"]["claimed_operator"] == key_id(stranger.public_key())
    assert refused["detail"]["reason"] == f"unknown operator {key_id(stranger.public_key())}"


# -- finding 10: a trickling package server -----------------------------------------------------------------------
@contextlib.asynccontextmanager
async def trickle_server() -> AsyncIterator[str]:
    """``/slow``: a byte every 0.2 s for ever; ``/steady``: 30 kB as 2 kB every 0.05 s (over the floor);
    ``/drip``: one byte more each time, then the connection drops (each try gets a little further)."""

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"x")
            await asyncio.sleep(0.2)

    async def steady(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 30_000
        await response.prepare(request)
        for _ in range(15):
            await response.write(b"y" * 2000)
            await asyncio.sleep(0.05)
        return response

    async def drip(request: web.Request) -> web.StreamResponse:
        start = int(request.headers.get("Range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = 1000 - start
        if start:
            response.headers["Content-Range"] = f"bytes {start}-999/1000"
        await response.prepare(request)
        await response.write(b"z")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/drip", drip)
    app.router.add_get("/steady", steady)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    server = web.TCPSite(runner, "127.0.0.1", 0)
    await server.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def test_a_download_slower_than_the_floor_is_cut_off_and_a_steady_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(downloads, "RATE_WINDOW_S", 0.25)  # 60 s in production
    monkeypatch.setattr(downloads, "MIN_RATE_BPS", 1000.0)
    monkeypatch.setattr(downloads, "FIRST_RETRY_S", 0.01)

    async def scenario() -> tuple[str, float, str, int]:
        async with trickle_server() as base:
            started = time.monotonic()
            with pytest.raises(downloads.DownloadFailed) as slow:
                await downloads.download(f"{base}/slow", None, tmp_path / "d", 1 << 20)
            took = time.monotonic() - started
            with pytest.raises(downloads.DownloadFailed) as drip:  # a byte a try is no progress
                await downloads.download(f"{base}/drip", None, tmp_path / "d", 1 << 20)
            whole = await downloads.download(f"{base}/steady", None, tmp_path / "d", 1 << 20)  # over many windows
            return str(slow.value), took, str(drip.value), whole.stat().st_size

    slow, took, drip, size = asyncio.run(scenario())
    assert "too slow" in slow and "in 0.25 s, under 1000 bytes a second" in slow, slow
    assert took < scaled(2), took  # cut off at the first window, never tried again
    assert "too slow" in drip, drip
    assert size == 30_000
