"""The bus's sockets as async context managers.

* :class:`Publisher` / :class:`Subscriber`: broadcast streams (frames, detections, health, control).
  Newest wins: bounded queues; a consumer that falls behind skips to the newest message per key and
  counts what it skipped, and sequence gaps (drops at a high-water mark) are counted too.
* :class:`EventSender` / :class:`EventReceiver`: events that must not be lost (DEALER -> ROUTER).
  The receiver acknowledges once an event is durable; the sender keeps it until then and resends.

Every message is ``[topic][msgpack body]``; a body that fails to decode is dropped, counted in
``edgesight_bus_rejected_total{service,reason}`` and logged at a limited rate; nothing stops.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from common.bus.endpoint import Endpoint
from common.metrics import BUS_MESSAGES, BUS_REJECTED, BUS_SKIPPED, EVENTS_RESENT, EVENTS_UNACKED
from contracts import Ack, ContractError, Event, FrameRef, Message, decode, encode, parse_topic, topic
from contracts.topics import STREAMS

__all__ = ["Delivery", "EventReceiver", "EventSender", "Publisher", "Received", "Subscriber"]

log = logging.getLogger(__name__)


def _context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.instance()


def _endpoints(specs: str | Endpoint | Iterable[str | Endpoint]) -> list[Endpoint]:
    if isinstance(specs, (str, Endpoint)):
        specs = [specs]
    return [s if isinstance(s, Endpoint) else Endpoint.parse(s) for s in specs]


def _reject(service: str, reason: str, detail: str) -> None:
    BUS_REJECTED.labels(service=service, reason=reason).inc()
    log.warning("bus message rejected", extra={"reason": reason, "detail": detail[:200]})


@dataclass(frozen=True)
class Received:
    stream: str
    key: str
    message: Message


class Publisher:
    """Broadcasts messages; never blocks: past ``hwm`` queued messages per peer ZeroMQ drops them.

    >>> # async with Publisher("pub+connect:ipc:///run/edgesight/bus-in.sock", "ingest") as pub:
    >>> #     await pub.publish("frames", "dock-1", ref)
    """

    def __init__(self, endpoint: str | Endpoint, service: str, *, hwm: int = 8) -> None:
        self.endpoint = _endpoints(endpoint)[0]
        self.service = service
        self.hwm = hwm
        self._socket: zmq.asyncio.Socket | None = None
        # per (stream, key): the topic frame and the counter; built once, not per message (a hot path)
        self._routes: dict[tuple[str, str], tuple[bytes, Any]] = {}

    async def __aenter__(self) -> Publisher:
        self._socket = self.endpoint.open(_context(), sndhwm=self.hwm)
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
    """

    def __init__(
        self,
        endpoints: str | Endpoint | Iterable[str | Endpoint],
        service: str,
        topics: Sequence[bytes] = (b"",),
        *,
        hwm: int = 8,
    ) -> None:
        self.endpoints = _endpoints(endpoints)
        self.service = service
        self.topics = list(topics)
        self.hwm = hwm
        self._socket: zmq.asyncio.Socket | None = None
        self._last_seq: dict[tuple[str, str], int] = {}
        self._received: dict[str, Any] = {}  # stream -> its counter: looked up once, not per message

    async def __aenter__(self) -> Subscriber:
        first, *rest = self.endpoints
        sock = first.open(_context(), rcvhwm=self.hwm)
        for endpoint in rest:
            endpoint.attach(sock, _context())
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
            _reject(self.service, "malformed", f"expected [topic, body], got {len(frames)} frames")
            return None
        try:
            stream, key = parse_topic(frames[0])
            message = decode(frames[1])
        except ContractError as exc:
            _reject(self.service, exc.reason, str(exc))
            return None
        except ValueError as exc:
            _reject(self.service, "malformed", str(exc))
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


class EventSender:
    """Sends events and keeps each until the receiver acknowledges it; resends after ``ack_timeout_s``.

    ``send`` waits while ``window`` events are unacknowledged: backpressure instead of loss.
    """

    def __init__(
        self,
        endpoint: str | Endpoint,
        service: str,
        *,
        window: int = 1000,
        ack_timeout_s: float = 5.0,
        on_ack: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.endpoint = _endpoints(endpoint)[0]
        self.service = service
        self.on_ack = on_ack  # told which ids were acknowledged, e.g. to delete them from an outbox
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self._socket: zmq.asyncio.Socket | None = None
        self._pending: collections.OrderedDict[str, tuple[bytes, bytes, float]] = collections.OrderedDict()
        self._space = asyncio.Event()
        self._space.set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def unacked(self) -> int:
        return len(self._pending)

    async def __aenter__(self) -> EventSender:
        self._socket = self.endpoint.open(_context(), sndhwm=self.window * 2, rcvhwm=self.window * 2)
        self._tasks = [
            asyncio.create_task(self._receive_acks(), name="event-acks"),
            asyncio.create_task(self._resend_loop(), name="event-resend"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def send(self, event: Event) -> None:
        """Queue ``event`` for delivery; returns once it is sent (not yet acknowledged)."""
        while len(self._pending) >= self.window:
            self._space.clear()
            await self._space.wait()
        frames = (topic("events", event.camera), encode(event))
        self._pending[event.id] = (*frames, 0.0)
        self._drained.clear()
        self._update_gauge()
        self._transmit(event.id)

    async def flush(self) -> None:
        """Wait until every sent event is acknowledged (wrap in a timeout)."""
        await self._drained.wait()

    def _transmit(self, event_id: str) -> bool:
        assert self._socket is not None
        topic_frame, body, _ = self._pending[event_id]
        try:
            sent: Any = self._socket.send_multipart([topic_frame, body], flags=zmq.NOBLOCK)
            # zmq.asyncio answers a NOBLOCK send with a future that already holds the outcome: read it, or
            # asyncio logs "Future exception was never retrieved" with a traceback for every event unsent
            failure = sent.exception() if isinstance(sent, asyncio.Future) and sent.done() else None
        except zmq.Again:
            failure = zmq.Again()
        if isinstance(failure, zmq.Again):
            return False  # no receiver connected yet, or its queue is full: the resend loop retries
        if failure is not None:
            raise failure
        self._pending[event_id] = (topic_frame, body, time.monotonic())
        BUS_MESSAGES.labels(service=self.service, stream="events", direction="out").inc()
        return True

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.ack_timeout_s / 4, 0.5))
            deadline = time.monotonic() - self.ack_timeout_s
            for event_id in [k for k, (_, _, sent) in self._pending.items() if sent < deadline]:
                was_sent = self._pending[event_id][2] > 0
                if not self._transmit(event_id):
                    break
                if was_sent:
                    EVENTS_RESENT.labels(service=self.service).inc()

    async def _receive_acks(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart()
            try:
                if len(frames) != 2:
                    raise ContractError("malformed", f"expected [topic, body], got {len(frames)} frames")
                ack = decode(frames[1], Ack)
            except ContractError as exc:
                _reject(self.service, exc.reason, str(exc))
                continue
            confirmed = [event_id for event_id in ack.ids if self._pending.pop(event_id, None) is not None]
            if self.on_ack is not None and confirmed:
                self.on_ack(confirmed)
            self._update_gauge()
            if len(self._pending) < self.window:
                self._space.set()
            if not self._pending:
                self._drained.set()

    def _update_gauge(self) -> None:
        EVENTS_UNACKED.labels(service=self.service).set(len(self._pending))


@dataclass(frozen=True)
class Delivery:
    event: Event
    peer: bytes


class EventReceiver:
    """Receives events from any number of senders; ``ack`` them once they are durable.

    >>> # async with EventReceiver("router+bind:ipc:///run/edgesight/events.sock", "uplink") as inbox:
    >>> #     async for delivery in inbox:
    >>> #         spool.put(delivery.event)
    >>> #         await inbox.ack([delivery])
    """

    def __init__(self, endpoint: str | Endpoint, service: str, *, hwm: int = 10_000) -> None:
        self.endpoint = _endpoints(endpoint)[0]
        self.service = service
        self.hwm = hwm
        self._socket: zmq.asyncio.Socket | None = None

    async def __aenter__(self) -> EventReceiver:
        self._socket = self.endpoint.open(_context(), rcvhwm=self.hwm, sndhwm=self.hwm)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def receive(self) -> Delivery:
        assert self._socket is not None, "use `async with EventReceiver(...)`"
        while True:
            frames = await self._socket.recv_multipart()
            try:
                if len(frames) != 3:
                    raise ContractError("malformed", f"expected [peer, topic, body], got {len(frames)} frames")
                event = decode(frames[2], Event)
            except ContractError as exc:
                _reject(self.service, exc.reason, str(exc))
                continue
            BUS_MESSAGES.labels(service=self.service, stream="events", direction="in").inc()
            return Delivery(event, frames[0])

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            yield await self.receive()

    async def receive_batch(self, limit: int) -> list[Delivery]:
        """Waits for one event, then takes whatever else has already arrived (up to ``limit``)."""
        batch = [await self.receive()]
        assert self._socket is not None
        while len(batch) < limit and int(self._socket.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            batch.append(await self.receive())
        return batch

    async def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Acknowledge events to their senders (one Ack per sender)."""
        assert self._socket is not None
        by_peer: dict[bytes, list[str]] = {}
        for delivery in deliveries:
            by_peer.setdefault(delivery.peer, []).append(delivery.event.id)
        for peer, ids in by_peer.items():
            body = encode(Ack(ids=ids, receiver=self.service))
            try:
                await self._socket.send_multipart([peer, topic("acks", self.service), body], flags=zmq.NOBLOCK)
            except zmq.Again:
                log.warning("ack not sent: sender's queue is full; it will resend", extra={"count": len(ids)})
