"""The bus: endpoints, newest-wins broadcast, rejected garbage, acknowledged events."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.asyncio

from common._compat import timeout
from common.bus import Endpoint, EventReceiver, EventSender, Publisher, Subscriber, open_socket
from common.errors import BusError
from common.metrics import BUS_REJECTED, BUS_SKIPPED, EVENTS_RESENT
from contracts import Event, FrameRef, Health, encode, topic
from tests.support import bus_handshake, frame_ref, scaled


def frame(camera: str, seq: int) -> FrameRef:
    return frame_ref(camera, seq, capture_ns=seq, monotonic_ns=seq)


def event(i: int) -> Event:
    return Event(id=f"evt-{i}", event_type="line_cross", site="s", camera="c", rule="r", ts_ns=i)


def counter(metric, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return float(metric.labels(**labels)._value.get())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("pub+bind:ipc:///run/edgesight/frames.sock", Endpoint("pub", True, "ipc:///run/edgesight/frames.sock")),
        ("sub:tcp://broker:5551", Endpoint("sub", False, "tcp://broker:5551")),
        ("router:tcp://0.0.0.0:5560", Endpoint("router", True, "tcp://0.0.0.0:5560")),
        ("xpub+connect:inproc://x", Endpoint("xpub", False, "inproc://x")),
    ],
)
def test_endpoint_strings(spec: str, expected: Endpoint) -> None:
    assert Endpoint.parse(spec) == expected
    assert Endpoint.parse(str(expected)) == expected


@pytest.mark.parametrize("spec", ["pub", "pub+bind:", "gossip:tcp://x:1", "pub+listen:tcp://x:1", "pub:udp://x:1"])
def test_bad_endpoint_strings(spec: str) -> None:
    with pytest.raises(BusError, match="bad endpoint"):
        Endpoint.parse(spec)


def test_binding_an_endpoint_in_use_is_a_bus_error(tmp_path: Path) -> None:
    context = zmq.Context.instance()
    first = open_socket(Endpoint.parse("pull+bind:tcp://127.0.0.1:0"), context)
    try:
        taken = first.getsockopt(zmq.LAST_ENDPOINT).decode()
        with pytest.raises(BusError, match="cannot bind"):
            open_socket(Endpoint.parse(f"pull+bind:{taken}"), context)
    finally:
        first.close()


def test_an_ipc_path_served_by_a_live_process_is_never_taken(tmp_path: Path) -> None:
    """ZeroMQ would unlink the live socket and bind anew: the first server's peers would hear nothing."""
    import socket

    context = zmq.Context.instance()
    path = tmp_path / "events.sock"
    first = open_socket(Endpoint.parse(f"router+bind:ipc://{path}"), context)
    try:
        with pytest.raises(BusError, match="another live process serves"):
            open_socket(Endpoint.parse(f"router+bind:ipc://{path}"), context)
        assert path.is_socket()  # still the first one's
        client = open_socket(Endpoint.parse(f"dealer:ipc://{path}"), context)
        client.send_multipart([b"events/c/", b"hello"])
        assert first.poll(2000) and first.recv_multipart()[1:] == [b"events/c/", b"hello"]
        client.close()
    finally:
        first.close()
    # A file left by a process that died without unlinking it is not "served": bind takes it over.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    open_socket(Endpoint.parse(f"pull+bind:ipc://{tmp_path / 'stale.sock'}"), context).close()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(BusError, match="not a socket"):
        open_socket(Endpoint.parse(f"pull+bind:ipc://{tmp_path / 'plain'}"), context)


async def _publish_forever(publisher: Publisher, camera: str, interval: float = 0.01) -> None:
    seq = 0
    while True:
        await publisher.publish("frames", camera, frame(camera, seq))
        seq += 1
        await asyncio.sleep(interval)


def test_restarted_subscriber_receives_again(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/frames.sock"

    async def scenario() -> tuple[list[int], list[int]]:
        async with Publisher(f"pub+bind:{address}", "test") as publisher:
            producing = asyncio.create_task(_publish_forever(publisher, "cam1"))
            runs: list[list[int]] = []
            for _ in range(2):  # the same consumer, stopped and started again mid-stream
                async with (
                    Subscriber(f"sub+connect:{address}", "test", [topic("frames", "cam1")]) as subscriber,
                    timeout(scaled(30)),
                ):
                    runs.append([(await subscriber.receive()).message.seq for _ in range(10)])  # type: ignore[attr-defined]
                await asyncio.sleep(0.1)
            producing.cancel()
        return runs[0], runs[1]

    first, second = asyncio.run(scenario())
    assert first == sorted(first) and second == sorted(second)
    assert second[0] > first[-1]


def test_garbage_is_rejected_and_counted_while_valid_traffic_flows(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/bus.sock"
    before = {
        reason: counter(BUS_REJECTED, service="victim", reason=reason)
        for reason in ("malformed", "unknown_version", "invalid")
    }

    async def scenario() -> list[int]:
        context = zmq.asyncio.Context.instance()
        rogue = context.socket(zmq.PUB)
        rogue.bind(address)
        async with Subscriber(f"sub+connect:{address}", "victim", [b""], hwm=1000) as subscriber:
            await bus_handshake(publisher=rogue, subscriber=subscriber)  # the subscription reaches the rogue peer
            good = encode(frame("cam1", 0))
            for seq in range(20):
                await rogue.send_multipart([topic("frames", "cam1"), b"\xc1\xc1garbage"])
                await rogue.send_multipart([b"frames/cam1/", good.replace(b"\xa1v\x01", b"\xa1v\x07")])
                await rogue.send_multipart([b"not a topic", good])
                await rogue.send_multipart([topic("frames", "cam1"), b"x", b"three frames"])
                await rogue.send_multipart([topic("frames", "cam1"), msgpack.packb({"type": "frame_ref", "v": 1})])
                await rogue.send_multipart([topic("frames", "cam1"), encode(frame("cam2", 100 + seq))])  # wrong key
                await rogue.send_multipart([topic("frames", "cam1"), encode(frame("cam1", seq))])
            seqs = []
            async with timeout(scaled(30)):
                while len(seqs) < 20:
                    seqs.append((await subscriber.receive()).message.seq)  # type: ignore[attr-defined]
            rogue.close()
            return seqs

    assert asyncio.run(scenario()) == list(range(20))
    assert counter(BUS_REJECTED, service="victim", reason="malformed") - before["malformed"] == 60
    assert counter(BUS_REJECTED, service="victim", reason="unknown_version") - before["unknown_version"] == 20
    assert counter(BUS_REJECTED, service="victim", reason="invalid") - before["invalid"] == 40


def test_newest_wins_and_skips_are_counted(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/frames.sock"
    behind = counter(BUS_SKIPPED, service="slow", stream="frames", reason="behind")
    gaps = counter(BUS_SKIPPED, service="slow", stream="frames", reason="gap")

    async def scenario() -> dict[str, int]:
        async with (
            Publisher(f"pub+bind:{address}", "test", hwm=1000) as publisher,
            Subscriber(f"sub+connect:{address}", "slow", [topic("frames")], hwm=1000) as subscriber,
            Subscriber(f"sub+connect:{address}", "witness", [topic("frames")], hwm=1000) as witness,
        ):
            await bus_handshake(publisher=publisher, subscriber=subscriber)
            await bus_handshake(publisher=publisher, subscriber=witness)
            for seq in range(30):
                for camera in ("a", "b"):
                    await publisher.publish("frames", camera, frame(camera, seq))
            await publisher.publish("frames", "a", frame("a", 40))  # seq 30..39 never sent: a gap of 10
            # the consumer was busy; everything is queued now: the witness beside it has had it all
            assert len(await bus_handshake(publisher=publisher, subscriber=witness)) == 61
            async with timeout(scaled(30)):
                newest = await subscriber.receive_newest()
            return {r.key: r.message.seq for r in newest}  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == {"a": 40, "b": 29}
    assert counter(BUS_SKIPPED, service="slow", stream="frames", reason="behind") - behind == 59
    assert counter(BUS_SKIPPED, service="slow", stream="frames", reason="gap") - gaps == 10


def test_events_wait_for_a_receiver_and_are_acknowledged(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> tuple[set[str], int]:
        async with EventSender(f"dealer+connect:{address}", "rules", ack_timeout_s=0.5) as sender:
            for i in range(50):  # nobody listens yet: kept, not lost
                await sender.send(event(i))
            assert sender.unacked == 50
            received: set[str] = set()
            async with EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
                while len(received) < 50:
                    delivery = await receiver.receive()
                    received.add(delivery.event.id)
                    await receiver.ack([delivery])
                await sender.flush()
            return received, sender.unacked

    received, unacked = asyncio.run(scenario())
    assert received == {f"evt-{i}" for i in range(50)}
    assert unacked == 0


def test_unacknowledged_events_are_resent_with_the_same_id(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/events.sock"
    resent_before = counter(EVENTS_RESENT, service="rules-resend")

    async def scenario() -> list[str]:
        async with EventSender(f"dealer+connect:{address}", "rules-resend", ack_timeout_s=0.3) as sender:
            async with EventReceiver(f"router+bind:{address}", "uplink") as crashing, timeout(scaled(30)):
                for i in range(5):
                    await sender.send(event(i))
                for _ in range(5):
                    await crashing.receive()  # ... and dies before acknowledging
            seen: list[str] = []
            async with EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
                while len(set(seen)) < 5:
                    delivery = await receiver.receive()
                    seen.append(delivery.event.id)
                    await receiver.ack([delivery])
                await sender.flush()
            return seen

    seen = asyncio.run(scenario())
    assert set(seen) == {f"evt-{i}" for i in range(5)}
    assert counter(EVENTS_RESENT, service="rules-resend") - resent_before >= 5


def test_window_applies_backpressure(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/events.sock"

    async def scenario() -> bool:
        async with EventSender(f"dealer+connect:{address}", "rules", window=3, ack_timeout_s=10) as sender:
            for i in range(3):
                await sender.send(event(i))
            blocked = asyncio.create_task(sender.send(event(3)))
            await asyncio.sleep(0.2)
            waited = not blocked.done()
            async with EventReceiver(f"router+bind:{address}", "uplink") as receiver, timeout(scaled(30)):
                for _ in range(4):
                    await receiver.ack([await receiver.receive()])
                await blocked
                await sender.flush()
            return waited

    assert asyncio.run(scenario())


def test_subscriber_keeps_unknown_streams_out(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/bus.sock"

    async def scenario() -> str:
        async with (
            Publisher(f"pub+bind:{address}", "t") as publisher,
            Subscriber(f"sub+connect:{address}", "t", [topic("health")]) as subscriber,
        ):
            await bus_handshake(publisher=publisher, subscriber=subscriber)
            await publisher.publish("frames", "c", frame("c", 0))
            await publisher.publish(
                "health", "ingest", Health(service="ingest", instance="i", state="ready", ts_ns=0, uptime_s=0)
            )
            async with timeout(scaled(30)):
                return (await subscriber.receive()).stream

    assert asyncio.run(scenario()) == "health"


def test_unsendable_events_wait_quietly_for_a_receiver(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With no receiver the DEALER's queue fills; a send refused then is retried later, and must not leave an
    unread failed future behind (asyncio logged each one with a traceback)."""
    import gc

    async def scenario() -> int:
        async with EventSender(f"dealer+connect:ipc://{tmp_path}/nobody.sock", "t", window=2, ack_timeout_s=0.02) as s:
            for number in range(2):
                await s.send(Event(id=f"e{number}", event_type="x", site="s", camera="c", rule="r", ts_ns=1))
            await asyncio.sleep(0.5)  # ~25 resends each: far past the queue's 4 places
            return s.unacked

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        assert asyncio.run(scenario()) == 2
        gc.collect()
    assert "never retrieved" not in caplog.text
