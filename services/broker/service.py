"""Forwards every broadcast message from the frontend (publishers) to the backend (subscribers).

The forwarding runs in ZeroMQ's C proxy on a thread of its own; subscriptions flow back upstream,
so publishers only send what somebody wants. Restartable: peers reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import sys
import threading

import zmq
from prometheus_client import Gauge

from common.bus import Endpoint
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
        frontend = Endpoint.parse(endpoints.frontend).open(context)
        backend = Endpoint.parse(endpoints.backend).open(context)
        control_address = f"inproc://broker-control-{id(self)}"
        control = context.socket(zmq.PAIR)
        control.bind(control_address)
        proxy = threading.Thread(
            target=self._proxy, args=(context, frontend, backend, control_address), name="broker-proxy", daemon=True
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

    def health_counters(self) -> dict[str, float]:
        return dict(self._statistics)
