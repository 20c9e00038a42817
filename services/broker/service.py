"""Forwards every broadcast message from the frontend (publishers) to the backend (subscribers).

The forwarding runs on a thread of its own; subscriptions flow back upstream, so publishers only
send what somebody wants. Restartable: peers reconnect by themselves. Without ``bus.curve`` it is
ZeroMQ's C proxy; with it, a loop of our own that drops the Control messages whose sender's key may
not send them (``security.ControlGuard``): only here is the sender's key known.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading

import zmq
from prometheus_client import Gauge

from common.bus import Endpoint, open_socket, security
from common.service import Service, ServiceState

__all__ = ["BrokerService"]

FORWARDED = Gauge("edgesight_broker_messages", "Message parts the broker has forwarded since start.", ["direction"])


class BrokerService(Service):
    """Runs the bus broker (XSUB frontend, XPUB backend)."""

    name = "broker"

    def setup(self) -> None:
        self._statistics: dict[str, float] = {"messages_in": 0, "messages_out": 0}

    async def main(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        endpoints = self.config.bus.broker
        frontend = open_socket(Endpoint.parse(endpoints.frontend), context)
        backend = open_socket(Endpoint.parse(endpoints.backend), context)
        control_address = f"inproc://broker-control-{id(self)}"
        control = context.socket(zmq.PAIR)
        control.bind(control_address)
        guard = security.control_guard()
        proxy = threading.Thread(
            target=self._proxy if guard is None else functools.partial(self._guarded_proxy, guard=guard),
            args=(context, frontend, backend, control_address),
            name="broker-proxy",
            daemon=True,
        )
        proxy.start()
        self.set_state(ServiceState.READY)
        try:
            while proxy.is_alive():
                await asyncio.sleep(1.0)
                control.send(b"STATISTICS")
                if control.poll(1000):
                    # frontend in/out msgs+bytes, then backend in/out msgs+bytes (libzmq's order)
                    stats = [int.from_bytes(part, sys.byteorder) for part in control.recv_multipart()]
                    self._statistics = {"messages_in": stats[0], "messages_out": stats[6]}
                    FORWARDED.labels(direction="in").set(stats[0])
                    FORWARDED.labels(direction="out").set(stats[6])
        finally:
            control.send(b"TERMINATE")
            await asyncio.to_thread(proxy.join, 5)
            control.close(linger=0)

    @staticmethod
    def _proxy(
        context: zmq.Context[zmq.Socket[bytes]],
        frontend: zmq.Socket[bytes],
        backend: zmq.Socket[bytes],
        control_address: str,
    ) -> None:
        steer = context.socket(zmq.PAIR)
        steer.connect(control_address)
        try:
            zmq.proxy_steerable(frontend, backend, None, steer)
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (steer, frontend, backend):
                sock.close(linger=0)

    @staticmethod
    def _guarded_proxy(
        context: zmq.Context[zmq.Socket[bytes]],
        frontend: zmq.Socket[bytes],
        backend: zmq.Socket[bytes],
        control_address: str,
        *,
        guard: security.ControlGuard,
    ) -> None:
        """The C proxy's work and its steering (STATISTICS, TERMINATE), with each message from the
        frontend shown to ``guard`` first."""
        steer = context.socket(zmq.PAIR)
        steer.connect(control_address)
        poller = zmq.Poller()
        for sock in (frontend, backend, steer):
            poller.register(sock, zmq.POLLIN)
        parts = [0] * 8  # libzmq's statistics: frontend in/out msgs+bytes, then backend's
        try:
            while True:
                for sock, _ in poller.poll():
                    if sock is frontend:
                        message = frontend.recv_multipart(copy=False)
                        parts[0] += len(message)
                        if guard.allows(message):
                            backend.send_multipart(message, copy=False)
                            parts[6] += len(message)
                    elif sock is backend:  # subscriptions, upstream
                        frontend.send_multipart(backend.recv_multipart(copy=False), copy=False)
                    else:
                        if steer.recv() == b"TERMINATE":
                            return
                        steer.send_multipart([count.to_bytes(8, sys.byteorder) for count in parts])  # STATISTICS
        except zmq.ContextTerminated:
            pass
        finally:
            for sock in (steer, frontend, backend):
                sock.close(linger=0)

    def health_counters(self) -> dict[str, float]:
        return dict(self._statistics)
