"""Broadcast streams (frames, detections, health, control): :class:`Publisher` and :class:`Subscriber`.

Newest wins: queues are bounded; a consumer that falls behind skips to the newest message per key
(:meth:`Subscriber.receive_newest`) and counts what it skipped, and sequence gaps (drops at a
high-water mark) are counted too. Every message is ``[topic][msgpack body]``; one that fails to
decode is dropped and counted (:mod:`common.bus.rejected`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from common.bus.endpoint import Endpoint, parse_endpoints
from common.bus.opening import attach, bus_context, open_socket
from common.bus.rejected import reject
from common.metrics import BUS_MESSAGES, BUS_SKIPPED
from contracts import ContractError, Event, FrameRef, Message, decode, encode, parse_topic, topic
from contracts.topics import STREAMS

__all__ = ["Publisher", "Received", "Subscriber"]


@dataclass(frozen=True)
class Received:
    stream: str
    key: str
    message: Message


# streams keyed by camera: the topic's key is the body's camera (contracts/README.md, section 1)
CAMERA_STREAMS = frozenset({"frames", "detections", "cameras", "scene", "events"})


def _camera_of(message: Message) -> str | None:
    """The camera a message is about (a Detections' is its frame's); None for one about no camera."""
    frame = getattr(message, "frame", None)
    camera = getattr(message, "camera", None) or (frame.camera if isinstance(frame, FrameRef) else None)
    return camera if isinstance(camera, str) else None


class Publisher:
    """Broadcasts messages; never blocks: past ``hwm`` queued messages per peer ZeroMQ drops them.

    >>> import asyncio
    >>> from contracts import Health
    >>> health = Health(service="ingest", instance="doc", state="ready", ts_ns=0, uptime_s=0)
    >>> async def announce() -> None:  # nobody listens: the message is dropped, nothing waits
    ...     async with Publisher("pub+bind:inproc://doc-publisher", "ingest") as publisher:
    ...         await publisher.publish("health", "ingest", health)
    >>> asyncio.run(announce())
    """

    def __init__(self, endpoint: str | Endpoint, service: str, *, hwm: int = 8) -> None:
        self.endpoint = parse_endpoints(endpoint)[0]
        self.service = service
        self.hwm = hwm
        self._socket: zmq.asyncio.Socket | None = None
        # per (stream, key): the topic frame and the counter; built once, not per message (a hot path)
        self._routes: dict[tuple[str, str], tuple[bytes, Any]] = {}

    async def __aenter__(self) -> Publisher:
        self._socket = open_socket(self.endpoint, bus_context(), sndhwm=self.hwm)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def publish(self, stream: str, key: str, message: Message) -> None:
        route = self._routes.get((stream, key))
        if route is None:
            counter = BUS_MESSAGES.labels(service=self.service, stream=stream, direction="out")
            route = self._routes[stream, key] = (topic(stream, key), counter)  # type: ignore[arg-type]
            if len(self._routes) > 4096:  # keys are cameras and services: bounded; this is a guard
                self._routes.clear()
        await self.publish_raw(route[0], encode(message))
        route[1].inc()

    async def publish_raw(self, topic_frame: bytes, body: bytes) -> None:
        """Send pre-encoded frames (tests and tools that speak the wire directly)."""
        assert self._socket is not None, "use `async with Publisher(...)`"
        await self._socket.send_multipart([topic_frame, body], copy=len(body) < 64 * 1024)


class Subscriber:
    """Receives decoded messages of the subscribed topics from one or more endpoints.

    ``topics`` are prefixes such as ``b"frames/dock-1/"`` or ``b"health/"`` (see ``contracts.topic``).
    A consumer slower than the stream takes :meth:`receive_newest` instead of :meth:`receive`:

    >>> import asyncio
    >>> from contracts import Health, topic
    >>> def health(number: int) -> Health:
    ...     return Health(service="ingest", instance="doc", state="ready", ts_ns=number, uptime_s=0)
    >>> async def newest() -> list[int]:
    ...     async with (
    ...         Publisher("pub+bind:inproc://doc-subscriber", "ingest") as publisher,
    ...         Subscriber("sub+connect:inproc://doc-subscriber", "console", [topic("health")]) as subscriber,
    ...     ):
    ...         receiving = asyncio.ensure_future(subscriber.receive())
    ...         while not receiving.done():  # a subscription takes a moment to reach the publisher
    ...             await publisher.publish("health", "ingest", health(0))
    ...             await asyncio.wait({receiving}, timeout=0.05)
    ...         for number in (1, 2, 3):  # meanwhile the consumer was busy
    ...             await publisher.publish("health", "ingest", health(number))
    ...         return [received.message.ts_ns for received in await subscriber.receive_newest()]
    >>> asyncio.run(newest())
    [3]
    """

    def __init__(
        self,
        endpoints: str | Endpoint | Iterable[str | Endpoint],
        service: str,
        topics: Sequence[bytes] = (b"",),
        *,
        hwm: int = 8,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.service = service
        self.topics = list(topics)
        self.hwm = hwm
        self._socket: zmq.asyncio.Socket | None = None
        self._last_seq: dict[tuple[str, str], int] = {}
        self._received: dict[str, Any] = {}  # stream -> its counter: looked up once, not per message

    async def __aenter__(self) -> Subscriber:
        first, *rest = self.endpoints
        sock = open_socket(first, bus_context(), rcvhwm=self.hwm)
        for endpoint in rest:
            attach(sock, endpoint, bus_context())
        for prefix in self.topics:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
            stream = prefix.split(b"/", 1)[0].decode(errors="replace")
            if stream in STREAMS:  # at 0 from the start, so that a rate() finds the series
                for reason in ("behind", "gap"):
                    BUS_SKIPPED.labels(service=self.service, stream=stream, reason=reason)
        self._socket = sock
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def subscribe(self, prefix: bytes) -> None:
        assert self._socket is not None
        self._socket.setsockopt(zmq.SUBSCRIBE, prefix)
        self.topics.append(prefix)

    async def receive(self) -> Received:
        """The next valid message; malformed ones are counted and skipped."""
        assert self._socket is not None, "use `async with Subscriber(...)`"
        while True:
            frames = await self._socket.recv_multipart(copy=True)
            received = self._decode(frames)
            if received is not None:
                return received

    async def receive_newest(self) -> list[Received]:
        """Wait for at least one message, then drain the queue keeping only the newest per key.

        The skipped ones are counted as ``edgesight_bus_skipped_total{reason="behind"}``.
        """
        assert self._socket is not None
        newest: dict[tuple[str, str], Received] = {}
        first = await self.receive()
        newest[(first.stream, first.key)] = first
        while True:
            try:
                # With NOBLOCK, zmq.asyncio answers with an already-settled future.
                frames: list[bytes] = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=True).result()  # type: ignore[attr-defined]
            except zmq.Again:
                break
            received = self._decode(frames)
            if received is None:
                continue
            slot = (received.stream, received.key)
            if slot in newest:
                BUS_SKIPPED.labels(service=self.service, stream=received.stream, reason="behind").inc()
            newest[slot] = received
        return list(newest.values())

    def __aiter__(self) -> AsyncIterator[Received]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Received]:
        while True:
            yield await self.receive()

    def _decode(self, frames: list[bytes]) -> Received | None:
        if len(frames) != 2:
            reject(self.service, "malformed", f"expected [topic, body], got {len(frames)} frames")
            return None
        try:
            stream, key = parse_topic(frames[0])
            message = decode(frames[1])
        except ContractError as exc:
            reject(self.service, exc.reason, str(exc))
            return None
        except ValueError as exc:
            reject(self.service, "malformed", str(exc))
            return None
        camera = _camera_of(message)
        if camera is not None and stream in CAMERA_STREAMS and key != camera:
            # a subscriber picks cameras by topic: a body of another camera would reach the wrong reader
            reject(self.service, "invalid", f"topic {stream}/{key}/ carries a message of camera {camera!r}")
            return None
        counter = self._received.get(stream)
        if counter is None:
            counter = self._received[stream] = BUS_MESSAGES.labels(service=self.service, stream=stream, direction="in")
        counter.inc()
        seq = _sequence(message)
        if seq is not None:
            self._count_gap(stream, key, seq)
        return Received(stream, key, message)

    def _count_gap(self, stream: str, key: str, seq: int) -> None:
        last = self._last_seq.get((stream, key))
        self._last_seq[(stream, key)] = seq
        if last is not None and seq > last + 1:
            BUS_SKIPPED.labels(service=self.service, stream=stream, reason="gap").inc(seq - last - 1)


def _sequence(message: Message) -> int | None:
    if isinstance(message, FrameRef):
        return message.seq
    frame = getattr(message, "frame", None)
    return frame.seq if isinstance(frame, FrameRef) and not isinstance(message, Event) else None
