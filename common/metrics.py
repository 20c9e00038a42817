"""Metrics every service shares, and the HTTP endpoint serving them with health and readiness.

Names follow ``edgesight_<noun>_<unit>``; labels are bounded (service, stream, reason, camera).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

__all__ = [
    "BUS_DENIED",
    "BUS_MESSAGES",
    "BUS_REJECTED",
    "BUS_SKIPPED",
    "EVENTS_REFUSED",
    "EVENTS_RESENT",
    "EVENTS_UNACKED",
    "MODEL_BACKEND_FALLBACKS",
    "SERVICE_UP",
    "SHM_STALE_READS",
    "SUPERVISOR_RESTARTS",
    "HttpEndpoint",
]

# `_created` series double every counter's exposition for a value nobody here charts.
disable_created_metrics()  # type: ignore[no-untyped-call]

BUS_MESSAGES = Counter(
    "edgesight_bus_messages_total", "Messages sent or received on the bus.", ["service", "stream", "direction"]
)
BUS_DENIED = Counter(
    "edgesight_bus_denied_total",
    "Refused on the bus: 'key' a client key not authorized, 'no_key' a tcp client without Curve, 'handshake' "
    "another failed handshake, 'control' a Control message its sender's key may not send (the broker).",
    ["service", "reason"],
)
BUS_REJECTED = Counter(
    "edgesight_bus_rejected_total", "Malformed or unknown bus messages dropped.", ["service", "reason"]
)
BUS_SKIPPED = Counter(
    "edgesight_bus_skipped_total",
    "Broadcast messages a consumer never handled: 'behind' when it skipped to the newest, "
    "'gap' for sequence numbers that never arrived (dropped at a high-water mark).",
    ["service", "stream", "reason"],
)
EVENTS_UNACKED = Gauge("edgesight_events_unacked", "Events sent and not yet acknowledged.", ["service"])
EVENTS_RESENT = Counter("edgesight_events_resent_total", "Events sent again after no acknowledgement.", ["service"])
EVENTS_REFUSED = Counter(
    "edgesight_events_refused_total",
    "Events their receiver refused for good (Ack.refused), dropped without resending; the sender's log says "
    "why. reason: one of contracts.REFUSAL_REASONS, or 'other'.",
    ["service", "reason"],
)
SHM_STALE_READS = Counter(
    "edgesight_shm_stale_reads_total", "Frame reads dropped because the writer overwrote the slot.", ["camera"]
)
MODEL_BACKEND_FALLBACKS = Counter(
    "edgesight_model_backend_fallbacks_total",
    "Models loaded on another backend than their config names, because it could not run them here "
    "(TensorRT: no GPU visible, the model refused by its parser or builder); the log line says why.",
    ["model", "wanted", "running"],
)
SERVICE_UP = Gauge("edgesight_service_ready", "1 while the service is connected and serving.", ["service"])
SUPERVISOR_RESTARTS = Counter(
    "edgesight_supervisor_restarts_total", "Service processes restarted by `edgesight run`.", ["service"]
)
LOOP_LAG = Histogram(
    "edgesight_event_loop_lag_seconds",
    "How late the event loop's heartbeat ran.",
    ["service"],
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2.0),
)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpEndpoint:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a thread.

    ``/healthz`` is 200 while the event loop has beaten within ``stall_after_s`` (so a blocked
    loop turns it red even though this thread still answers); ``/readyz`` is 200 while
    ``ready()`` says so.
    """

    def __init__(
        self,
        host: str,
        port: int,
        ready: Callable[[], bool],
        stall_after_s: float = 10.0,
        routes: Callable[[dict[str, Any], StartResponse], Iterable[bytes] | None] | None = None,
    ) -> None:
        self._ready = ready
        self._routes = routes  # a service's own pages; None from it: not one of them
        self._stall_after_ns = int(stall_after_s * 1e9)
        self._last_beat_ns = time.monotonic_ns()
        self._metrics_app = make_wsgi_app()
        self._server = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-endpoint", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def beat(self) -> None:
        """Called from the event loop: proof of progress for ``/healthz``."""
        self._last_beat_ns = time.monotonic_ns()

    async def beat_forever(self, service: str, interval_s: float = 0.5) -> None:
        """The event loop's heartbeat, as a task until cancelled: beats, and records how late each beat ran
        in ``edgesight_event_loop_lag_seconds{service}``."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval_s)
            LOOP_LAG.labels(service=service).observe(max(0.0, time.monotonic() - before - interval_s))
            self.beat()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            lag = (time.monotonic_ns() - self._last_beat_ns) / 1e9
            ok = lag * 1e9 < self._stall_after_ns
            return _text(start_response, ok, "ok\n" if ok else f"event loop stalled for {lag:.1f}s\n")
        if path == "/readyz":
            ok = self._ready()
            return _text(start_response, ok, "ready\n" if ok else "not ready\n")
        if self._routes is not None and path != "/metrics":
            answer = self._routes(environ, start_response)
            if answer is not None:
                return answer
        return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]

    def __enter__(self) -> HttpEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _text(start_response: StartResponse, ok: bool, body: str) -> list[bytes]:
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
    return [body.encode()]
