"""Events that must not be lost (DEALER -> ROUTER): :class:`EventSender` and :class:`EventReceiver`.

The receiver acknowledges an event once it is durable; the sender keeps it until then and resends
it (same id) after ``ack_timeout_s``; at ``window`` unacknowledged events ``send`` waits: backpressure
instead of loss. The receiver may instead *refuse* an event (``Ack.refused``: its id, a reason and a
detail): resending cannot help, so the sender drops it for good, logs and counts it and tells
``on_refused``. A body that fails to decode is refused when its id can be read from it; without one it
is dropped and counted (:mod:`common.bus.rejected`), as there is nobody to name in an answer.

>>> import asyncio
>>> from contracts import Event
>>> async def deliver() -> tuple[str, int]:
...     async with (
...         EventReceiver("router+bind:inproc://doc-events", "uplink") as inbox,
...         EventSender("dealer+connect:inproc://doc-events", "rules") as outbox,
...     ):
...         await outbox.send(Event(id="e1", event_type="line_cross", site="s", camera="c", rule="r", ts_ns=1))
...         delivery = await inbox.receive()
...         await inbox.ack([delivery])  # once it is stored: the sender may forget it
...         await outbox.flush()
...         return delivery.event.id, outbox.unacked
>>> asyncio.run(deliver())
('e1', 0)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from common.bus.endpoint import Endpoint, parse_endpoints
from common.bus.opening import bus_context, open_socket
from common.bus.rejected import SOCKETS_LOGGER, reject
from common.bus.security import key_name
from common.metrics import BUS_MESSAGES, EVENTS_REFUSED, EVENTS_RESENT, EVENTS_UNACKED
from contracts import REFUSAL_REASONS, Ack, ContractError, Event, Refusal, decode, encode, topic
from contracts.messages import MAX_ACK_IDS, Id

__all__ = ["Delivery", "EventReceiver", "EventSender"]

log = logging.getLogger(SOCKETS_LOGGER)

DETAIL_CHARS = 1024  # Refusal.detail is Text: a longer one would make the whole Ack invalid


class _IdOnly(msgspec.Struct):
    """What a refusal needs of a body that does not decode: its id (every other key is ignored)."""

    id: Id


_id_decoder = msgspec.msgpack.Decoder(_IdOnly)


def recover_id(body: bytes) -> str | None:
    """The valid ``id`` of a msgpack map, however wrong the rest of it is; None without one."""
    try:
        return _id_decoder.decode(body).id
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):  # ValidationError is a DecodeError
        return None


class EventSender:
    """Sends events and keeps each until the receiver acknowledges it; resends after ``ack_timeout_s``.

    ``send`` waits while ``window`` events are unacknowledged: backpressure instead of loss. An event the
    receiver refuses is settled too: dropped, logged, counted and handed to ``on_refused``.
    """

    def __init__(
        self,
        endpoint: str | Endpoint,
        service: str,
        *,
        window: int = 1000,
        ack_timeout_s: float = 5.0,
        on_ack: Callable[[list[str]], None] | None = None,
        on_refused: Callable[[list[Refusal]], None] | None = None,
    ) -> None:
        self.endpoint = parse_endpoints(endpoint)[0]
        self.service = service
        self.on_ack = on_ack  # told which ids were acknowledged, e.g. to delete them from an outbox
        self.on_refused = on_refused  # told which events were refused for good: delete them from an outbox too
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
        self._socket = open_socket(self.endpoint, bus_context(), sndhwm=self.window * 2, rcvhwm=self.window * 2)
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
                reject(self.service, exc.reason, str(exc))
                continue
            confirmed = [event_id for event_id in ack.ids if self._pending.pop(event_id, None) is not None]
            if self.on_ack is not None and confirmed:
                self.on_ack(confirmed)
            # only events still pending: a refusal of an id already settled (or never sent) changes nothing
            refused = [r for r in ack.refused if self._pending.pop(r.id, None) is not None]
            if refused:
                self._refused(refused)
            self._update_gauge()
            if len(self._pending) < self.window:
                self._space.set()
            if not self._pending:
                self._drained.set()

    def _refused(self, refused: list[Refusal]) -> None:
        for refusal in refused:
            # the label stays bounded whatever a receiver sends; the log line keeps its own word
            reason = refusal.reason if refusal.reason in REFUSAL_REASONS else "other"
            EVENTS_REFUSED.labels(service=self.service, reason=reason).inc()
            log.warning(
                "event refused by its receiver: dropped, it will not be resent",
                extra={"id": refusal.id, "reason": refusal.reason, "detail": refusal.detail[:200]},
            )
        if self.on_refused is not None:
            self.on_refused(refused)

    def _update_gauge(self) -> None:
        EVENTS_UNACKED.labels(service=self.service).set(len(self._pending))


@dataclass(frozen=True)
class Delivery:
    event: Event
    peer: bytes
    topic: bytes  # as it came: the receiver checks it against the body (``events/<camera>/``)
    # the name of the Curve key it came with (``security.key_name``); None without Curve (ipc, plain tcp)
    sender: str | None = None


class EventReceiver:
    """Receives events from any number of senders; ``ack`` them once they are durable (the module's example),
    or ``refuse`` them. ``on_refused`` is told of every refusal, those of bodies that did not decode too."""

    def __init__(
        self,
        endpoint: str | Endpoint,
        service: str,
        *,
        hwm: int = 10_000,
        on_refused: Callable[[list[Refusal]], None] | None = None,
    ) -> None:
        self.endpoint = parse_endpoints(endpoint)[0]
        self.service = service
        self.hwm = hwm
        self.on_refused = on_refused
        self._socket: zmq.asyncio.Socket | None = None
        self._curve = False

    async def __aenter__(self) -> EventReceiver:
        self._socket = open_socket(self.endpoint, bus_context(), rcvhwm=self.hwm, sndhwm=self.hwm)
        # only a Curve socket's messages carry a sender (User-Id): the others keep the cheaper copying receive
        self._curve = self._socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def receive(self) -> Delivery:
        assert self._socket is not None, "use `async with EventReceiver(...)`"
        while True:
            sender, frames = await self._receive_frames()
            try:
                if len(frames) != 3:
                    # the sender's own count: the first frame is the routing id ROUTER puts in front
                    raise ContractError("malformed", f"expected two frames [topic, body], got {len(frames) - 1}")
                event = decode(frames[2], Event)
            except ContractError as exc:
                reject(self.service, exc.reason, str(exc))
                await self._refuse_undecodable(frames, exc)
                continue
            BUS_MESSAGES.labels(service=self.service, stream="events", direction="in").inc()
            return Delivery(event, frames[0], frames[1], sender)

    async def _receive_frames(self) -> tuple[str | None, list[bytes]]:
        """(the sender's key name, or None without Curve; the frames as bytes)."""
        assert self._socket is not None
        if not self._curve:
            return None, await self._socket.recv_multipart()
        received: list[zmq.Frame] = await self._socket.recv_multipart(copy=False)
        # the last frame is one the sender sent (ROUTER makes the first), so it carries the connection's User-Id
        return key_name(received[-1]), [frame.bytes for frame in received]

    async def _refuse_undecodable(self, frames: list[bytes], exc: ContractError) -> None:
        """Answers a body that did not decode when its id can be read, so that its sender stops resending."""
        event_id = recover_id(frames[-1]) if len(frames) >= 2 else None
        if event_id is not None:
            await self.refuse(frames[0], [Refusal(id=event_id, reason=exc.reason, detail=exc.detail)])

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
        by_peer: dict[bytes, list[str]] = {}
        for delivery in deliveries:
            by_peer.setdefault(delivery.peer, []).append(delivery.event.id)
        for peer, ids in by_peer.items():
            await self._answer(peer, Ack(ids=ids, receiver=self.service), len(ids))

    async def refuse(self, peer: bytes, refused: Sequence[Refusal]) -> None:
        """Tells ``peer`` it will never take ``refused`` (``Ack(ids=[], refused=...)``): it drops them."""
        bounded = [msgspec.structs.replace(r, detail=r.detail[:DETAIL_CHARS]) for r in refused]
        for start in range(0, len(bounded), MAX_ACK_IDS):
            chunk = bounded[start : start + MAX_ACK_IDS]
            await self._answer(peer, Ack(ids=[], refused=chunk, receiver=self.service), len(chunk))
            for refusal in chunk:
                log.warning(
                    "event refused",
                    extra={"id": refusal.id, "reason": refusal.reason, "detail": refusal.detail[:200]},
                )
        if self.on_refused is not None and bounded:
            self.on_refused(bounded)

    async def _answer(self, peer: bytes, ack: Ack, count: int) -> None:
        assert self._socket is not None
        try:
            await self._socket.send_multipart([peer, topic("acks", self.service), encode(ack)], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("ack not sent: sender's queue is full; it will resend", extra={"count": count})
