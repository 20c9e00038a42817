"""Refusals on the acknowledged path (#31): the receiver answers an event it will never take, with the
reason; the sender drops it for good, logs and counts it, and ``flush`` still ends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import zmq
import zmq.asyncio
import zmq.auth

from common._compat import timeout
from common.bus import Delivery, EventReceiver, EventSender, security
from common.config.bus import CurveConfig
from common.metrics import BUS_REJECTED, EVENTS_REFUSED
from contracts import Ack, Event, Refusal, decode, encode, topic
from tests.conftest import free_port
from tests.support import curve_bus, scaled


def event(i: int, camera: str = "c") -> Event:
    return Event(id=f"evt-{i}", event_type="line_cross", site="s", camera=camera, rule="r", ts_ns=i)


def counter(metric: Any, **labels: str) -> float:
    return float(metric.labels(**labels)._value.get())


def body(**fields: Any) -> bytes:
    return msgpack.packb({"type": "event", "v": 1, **fields})


@asynccontextmanager
async def raw_sender(address: str, key: Path | None = None) -> AsyncIterator[zmq.asyncio.Socket]:
    """A DEALER as an integrator's client would be: frames by hand, no EventSender; with ``key`` (a
    ``NAME.key_secret`` beside ``server.key``), a Curve client with that key pair."""
    socket = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    if key is not None:
        socket.curve_serverkey, _ = zmq.auth.load_certificate(key.parent / "server.key")
        socket.curve_publickey, socket.curve_secretkey = zmq.auth.load_certificate(key)
    socket.connect(address)
    try:
        yield socket
    finally:
        socket.close(linger=0)


async def answers_until(socket: zmq.asyncio.Socket, event_id: str) -> list[list[bytes]]:
    """Every answer up to and including the Ack of ``event_id`` (answers come in order on one connection)."""
    answers = []
    while True:
        frames = await socket.recv_multipart()
        answers.append(frames)
        if event_id in decode(frames[-1], Ack).ids:
            return answers


async def take_valid(receiver: EventReceiver, event_id: str) -> Delivery:
    delivery = await receiver.receive()  # the bad bodies before it were answered (or dropped) on the way
    assert delivery.event.id == event_id
    await receiver.ack([delivery])
    return delivery


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([topic("events", "c"), body(id="bad-1", site="s", camera=7)], "invalid"),
        ([topic("events", "c"), body(id="bad-1", type="bogus")], "unknown_type"),
        ([topic("events", "c"), body(id="bad-1", v=99)], "unknown_version"),
        ([body(id="bad-1")], "malformed"),  # no topic frame
        ([topic("events", "c"), b"x", body(id="bad-1")], "malformed"),  # one frame too many
    ],
)
def test_an_undecodable_body_with_an_id_is_refused_with_the_reason(
    tmp_path: Path, frames: list[bytes], reason: str
) -> None:
    address = f"ipc://{tmp_path}/events.sock"
    told: list[Refusal] = []
    rejected_before = counter(BUS_REJECTED, service="uplink-refusing", reason=reason)

    async def scenario() -> tuple[list[list[bytes]], Delivery]:
        receiver = EventReceiver(f"router+bind:{address}", "uplink-refusing", on_refused=told.extend)
        async with receiver, raw_sender(address) as client, timeout(scaled(30)):
            await client.send_multipart(frames)
            await client.send_multipart([topic("events", "c"), encode(event(1))])
            delivery = await take_valid(receiver, "evt-1")
            return await answers_until(client, "evt-1"), delivery

    answers, delivery = asyncio.run(scenario())
    assert delivery.topic == b"events/c/"  # the topic frame as it came, for the uplink to check
    assert delivery.sender is None  # ipc: no Curve, nobody is told apart
    refusal_frames = answers[0]
    assert len(answers) == 2 and len(refusal_frames) == 2  # [topic, body], like an Ack
    assert refusal_frames[0] == b"acks/uplink-refusing/"
    ack = decode(refusal_frames[1], Ack)
    assert ack.ids == [] and ack.receiver == "uplink-refusing"
    assert [(r.id, r.reason) for r in ack.refused] == [("bad-1", reason)]
    assert ack.refused[0].detail  # what was wrong, for the sender's log
    assert [r.id for r in told] == ["bad-1"]  # the uplink counts it
    assert counter(BUS_REJECTED, service="uplink-refusing", reason=reason) == rejected_before + 1


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1garbage",
        msgpack.packb(["event", 1, "bad-1"]),  # an array: no id to name
        body(camera="c"),  # no id at all
        body(id=17),  # not a string
        body(id="../etc/passwd"),  # not an Id
        body(id="a" * 129),  # too long for an Id
        body(id="bad-1") + b"\x00",  # trailing bytes: nothing in it can be trusted
    ],
)
def test_an_undecodable_body_without_a_readable_id_gets_no_answer(tmp_path: Path, bad: bytes) -> None:
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> list[list[bytes]]:
        receiver = EventReceiver(f"router+bind:{address}", "uplink")
        async with receiver, raw_sender(address) as client, timeout(scaled(30)):
            await client.send_multipart([topic("events", "c"), bad])
            await client.send_multipart([topic("events", "c"), encode(event(2))])
            await take_valid(receiver, "evt-2")
            return await answers_until(client, "evt-2")

    answers = asyncio.run(scenario())
    assert len(answers) == 1  # only the valid event's Ack: nobody to name in a refusal


def test_a_refused_event_is_dropped_for_good_and_flush_completes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"ipc://{tmp_path}/events.sock"
    acked: list[str] = []
    refused: list[Refusal] = []
    before = counter(EVENTS_REFUSED, service="rules-refused", reason="unknown_rule")

    async def scenario() -> tuple[list[str], int]:
        endpoint = f"dealer+connect:{address}"
        sender = EventSender(
            endpoint, "rules-refused", ack_timeout_s=0.3, on_ack=acked.extend, on_refused=refused.extend
        )
        async with sender, EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
            for i in range(3):
                await sender.send(event(i))
            deliveries = [await receiver.receive() for _ in range(3)]
            await receiver.ack([deliveries[0], deliveries[2]])
            await receiver.refuse(deliveries[1].peer, [Refusal(id="evt-1", reason="unknown_rule", detail="rule 'r'")])
            await sender.flush()  # settled: two acknowledged, one refused
            seen_after: list[str] = []
            try:
                async with timeout(1.0):  # > 3 ack timeouts: a resend would be here by now
                    seen_after.append((await receiver.receive()).event.id)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            return seen_after, sender.unacked

    with caplog.at_level(logging.WARNING):
        seen_after, unacked = asyncio.run(scenario())
    assert seen_after == [] and unacked == 0
    assert sorted(acked) == ["evt-0", "evt-2"]
    assert refused == [Refusal(id="evt-1", reason="unknown_rule", detail="rule 'r'")]
    assert counter(EVENTS_REFUSED, service="rules-refused", reason="unknown_rule") == before + 1
    record = next(r for r in caplog.records if "refused by its receiver" in r.getMessage())
    assert (record.id, record.reason, record.detail) == ("evt-1", "unknown_rule", "rule 'r'")  # type: ignore[attr-defined]


def test_refusals_free_the_window(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> bool:
        sender = EventSender(f"dealer+connect:{address}", "rules-window", window=2, ack_timeout_s=10)
        async with sender, EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
            await sender.send(event(0))
            await sender.send(event(1))
            blocked = asyncio.create_task(sender.send(event(2)))
            first, _ = await receiver.receive(), await receiver.receive()
            await asyncio.sleep(0.1)
            waited = not blocked.done()
            await receiver.refuse(first.peer, [Refusal(id="evt-0", reason="wrong_site")])
            await blocked  # a refusal makes room like an ack
            await receiver.ack([await receiver.receive()])
            await receiver.refuse(first.peer, [Refusal(id="evt-1", reason="wrong_site")])
            await sender.flush()
            return waited

    assert asyncio.run(scenario())


def test_a_hostile_receivers_refusals_cannot_confuse_the_sender(tmp_path: Path) -> None:
    """Refusals of ids never sent change nothing; an unknown reason is counted as ``other`` (bounded labels);
    a detail too long for the contract is cut by the receiver, so the Ack still decodes."""
    address = f"ipc://{tmp_path}/events.sock"
    refused: list[Refusal] = []
    other_before = counter(EVENTS_REFUSED, service="rules-hostile", reason="other")

    async def scenario() -> int:
        sender = EventSender(f"dealer+connect:{address}", "rules-hostile", ack_timeout_s=10, on_refused=refused.extend)
        async with sender, EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
            await sender.send(event(0))
            await sender.send(event(1))
            peer = (await receiver.receive()).peer
            ghosts = [Refusal(id=f"ghost-{i}", reason=f"reason_{i}") for i in range(50)]
            await receiver.refuse(peer, ghosts)
            await receiver.refuse(peer, [Refusal(id="evt-0", reason="made_up_reason", detail="x" * 5000)])
            await receiver.ack([await receiver.receive()])
            await sender.flush()
            return sender.unacked

    assert asyncio.run(scenario()) == 0
    assert [(r.id, r.reason, len(r.detail)) for r in refused] == [("evt-0", "made_up_reason", 1024)]
    assert counter(EVENTS_REFUSED, service="rules-hostile", reason="other") == other_before + 1
    labels = {sample.labels["reason"] for metric in EVENTS_REFUSED.collect() for sample in metric.samples}
    assert not any(label.startswith("reason_") for label in labels)


def test_a_flood_of_refusals_is_answered_in_acks_the_contract_allows(tmp_path: Path) -> None:
    """More refusals than one Ack may carry (MAX_ACK_IDS) go out as several valid Acks, none lost."""
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> list[Ack]:
        receiver = EventReceiver(f"router+bind:{address}", "uplink")
        async with receiver, raw_sender(address) as client, timeout(scaled(30)):
            await client.send_multipart([topic("events", "c"), encode(event(0))])
            peer = (await receiver.receive()).peer
            await receiver.refuse(peer, [Refusal(id=f"flood-{i}", reason="invalid") for i in range(10_001)])
            return [decode((await client.recv_multipart())[-1], Ack) for _ in range(2)]

    acks = asyncio.run(scenario())
    assert [len(a.refused) for a in acks] == [10_000, 1]
    assert len({r.id for a in acks for r in a.refused}) == 10_001


def test_many_undecodable_bodies_are_each_answered_and_nothing_is_kept(tmp_path: Path) -> None:
    """A flood of bad bodies with ids: each gets its refusal and valid traffic still flows; the receiver
    holds no state per id (it has nothing to grow)."""
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> tuple[list[list[bytes]], dict[str, Any]]:
        receiver = EventReceiver(f"router+bind:{address}", "uplink")
        async with receiver, raw_sender(address) as client, timeout(scaled(60)):
            for i in range(500):
                await client.send_multipart([topic("events", "c"), body(id=f"bad-{i}", camera=[i])])
            await client.send_multipart([topic("events", "c"), encode(event(3))])
            await take_valid(receiver, "evt-3")
            return await answers_until(client, "evt-3"), dict(vars(receiver))

    answers, state = asyncio.run(scenario())
    refused = [r.id for frames in answers[:-1] for r in decode(frames[-1], Ack).refused]
    assert refused == [f"bad-{i}" for i in range(500)]
    assert set(state) == {"endpoint", "service", "hwm", "on_refused", "_socket", "_curve"}


def test_on_curve_each_delivery_names_the_key_it_came_with(tmp_path: Path) -> None:
    """The sender is the key its connection authenticated with (the ZAP handler's User-Id), never anything the
    message says; a body that does not decode is still refused by its id over Curve."""
    keys = tmp_path / "keys"
    security.generate_bus_keys(keys, ["uplink", "rules", "integrator"])
    port = free_port()
    curve = CurveConfig(**curve_bus(keys, (0, 0, port))["curve"])
    address = f"tcp://127.0.0.1:{port}"
    claims_rules = Event(**{**msgspec.structs.asdict(event(1)), "attributes": {"sender": "rules"}})

    async def scenario() -> tuple[dict[str, str | None], list[list[bytes]]]:
        async with AsyncExitStack() as stack:
            security.configure_curve(curve, "uplink")  # a socket takes the keys in force when it opens
            receiver = await stack.enter_async_context(EventReceiver(f"router+bind:{address}", "uplink"))
            security.configure_curve(curve, "rules")
            rules = await stack.enter_async_context(EventSender(f"dealer+connect:{address}", "rules"))
            integrator = await stack.enter_async_context(raw_sender(address, keys / "integrator.key_secret"))
            await stack.enter_async_context(timeout(scaled(60)))
            await rules.send(event(0))
            await integrator.send_multipart([topic("events", "c"), body(id="bad-1", camera=7)])
            await integrator.send_multipart([topic("events", "c"), encode(claims_rules)])
            names: dict[str, str | None] = {}
            while len(names) < 2:
                delivery = await receiver.receive()
                names[delivery.event.id] = delivery.sender
                await receiver.ack([delivery])
            await rules.flush()
            return names, await answers_until(integrator, "evt-1")

    try:
        names, answers = asyncio.run(scenario())
    finally:
        security.configure_curve(None, "test")
    assert names == {"evt-0": "rules", "evt-1": "integrator"}
    assert [(r.id, r.reason) for r in decode(answers[0][-1], Ack).refused] == [("bad-1", "invalid")]
