"""The actor base of every service: one asyncio program, one TaskGroup of named tasks.

A service subclasses :class:`Service`, sets ``name`` and writes ``main()``; the base adds what
every service has: SIGTERM/SIGINT handling, a periodic ``Health`` on the bus, ``Control``
commands, and ``/metrics``, ``/healthz``, ``/readyz`` over HTTP. ``run_service`` is the
``python -m services.<name> --config FILE`` entry point that compose and k3s run.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import enum
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, ClassVar

from common import files
from common import logging as eslogging
from common._compat import TaskGroup
from common.audit import AuditTrail
from common.bus import Publisher, Subscriber, security
from common.config import SiteConfig, load_config
from common.errors import ConfigError, EdgeSightError, StartupError
from common.metrics import SERVICE_UP, HttpEndpoint
from contracts import Control, Health, topic

__all__ = ["Service", "ServiceState", "control_reply", "run_service"]

log = logging.getLogger(__name__)


MAX_REPLY_CHARS = 240  # a Health detail value saying how a command ended: the id and a reason's first line


def control_reply(command: Control, outcome: str, reason: str | None = None) -> str:
    """How a service answers who sent ``command``: ``"<id> <outcome>"`` or ``"<id> <outcome>: <the reason's
    first line>"``, cut to MAX_REPLY_CHARS, for its Health detail (the bus has no replies: a sender
    waits for the next Health that names its id, which :meth:`Service.send_health` makes come at once).

    >>> command = Control(id="fleet-7", command="reload")
    >>> control_reply(command, "refused", "site.yaml:3: cameras: bad\\nmore")
    'fleet-7 refused: site.yaml:3: cameras: bad'
    >>> len(control_reply(command, "refused", "x" * 5000)) == MAX_REPLY_CHARS
    True
    """
    text = f"{command.id} {outcome}"
    if reason:
        text += f": {(reason.strip().splitlines() or [''])[0]}"
    return text if len(text) <= MAX_REPLY_CHARS else text[: MAX_REPLY_CHARS - 1] + "…"


class ServiceState(str, enum.Enum):
    """Where a service is in its life, by name; its value is what its Health says on the wire
    (``contracts.ServiceState``, the source of truth: a test keeps every value here one of those)."""

    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class Service(abc.ABC):
    """Base of the EdgeSight services. Subclasses implement :meth:`main` and may override hooks."""

    name: ClassVar[str]

    def __init__(self, config: SiteConfig, *, instance: str | None = None, metrics_port: int | None = None) -> None:
        self.config = config
        self.instance = instance or os.environ.get("EDGESIGHT_INSTANCE") or socket.gethostname()
        self.metrics_port = config.metrics.port(self.name) if metrics_port is None else metrics_port
        self.state = ServiceState.STARTING
        self.was_ready = False
        self.paused = False
        self.publisher: Publisher | None = None
        self.http: HttpEndpoint | None = None
        self._started = time.monotonic()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        security.configure_curve(config.bus.curve, self.name)
        self.audit_trail = AuditTrail(config.site.state_dir, config.site.name, f"{self.name}:{self.instance}")
        self.setup()

    def setup(self) -> None:  # noqa: B027 - optional
        """The service's own state, built once the base's is there (instead of overriding ``__init__``)."""

    # -- what a service provides -------------------------------------------------------------
    @abc.abstractmethod
    async def main(self) -> None:
        """The service's own work; runs until cancelled. Call ``self.set_state(READY)`` once serving."""

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """What can be known wrong before running (``--check``, ``edgesight config check``): one
        ``file:line: key: message`` per problem (see :meth:`SiteConfig.where`)."""
        return []

    def http_route(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes] | None:
        """A WSGI answer for a page of this service's own on its metrics port, or None (runs on an HTTP
        thread: read state, never the event loop's objects that change under it)."""
        return None

    def health_counters(self) -> dict[str, float]:
        """Numbers worth seeing in Health messages (bounded keys)."""
        return {}

    def health_detail(self) -> dict[str, str]:
        """Short strings for Health messages, e.g. per-camera state."""
        return {}

    async def on_control(self, command: Control) -> None:
        """Pause, resume and reload hooks; shutdown is handled by the base."""
        if command.command == "pause":
            self.paused = True
        elif command.command == "resume":
            self.paused = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def audit(self, action: str, target: str, **detail: Any) -> None:
        """Appends to the site's audit trail (see common.audit) off the event loop; a trail that cannot
        be written is logged, never fatal."""
        try:
            await asyncio.to_thread(self.audit_trail.record, action, target, **detail)
        except OSError as exc:
            log.error("cannot append to the audit trail", extra={"path": str(self.audit_trail.path), "error": str(exc)})

    def set_state(self, state: ServiceState) -> None:
        if state != self.state:
            log.info("state changed", extra={"from_state": self.state.value, "to_state": state.value})
        self.state = state
        self.was_ready = self.was_ready or state == ServiceState.READY
        SERVICE_UP.labels(service=self.name).set(1 if state == ServiceState.READY else 0)

    def stop(self) -> None:
        """Ask the service to stop; safe from signal handlers and other tasks."""
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        ready = lambda: self.state == ServiceState.READY  # noqa: E731
        bus = self.config.bus
        log.info("starting", extra={"instance": self.instance, "metrics_port": self.metrics_port})
        try:
            endpoint = HttpEndpoint(self.config.metrics.host, self.metrics_port, ready, routes=self.http_route)
        except OSError as exc:
            raise StartupError(
                f"{self.name}: cannot serve metrics on {self.config.metrics.host}:{self.metrics_port} "
                f"(metrics.ports.{self.name}): {exc.strerror or exc}"
            ) from None
        with endpoint as http:
            self.http = http
            async with (
                Publisher(bus.publish_endpoint(self.name), self.name, hwm=100) as publisher,
                Subscriber(bus.subscribe, self.name, [topic("control", self.name), topic("control", "*")]) as control,
            ):
                self.publisher = publisher
                async with TaskGroup() as group:
                    self._tasks = [
                        group.create_task(self._guard(self.main()), name="main"),
                        group.create_task(self._health_loop(), name="health"),
                        group.create_task(self._control_loop(control), name="control"),
                        group.create_task(http.beat_forever(self.name), name="heartbeat"),
                    ]
                    group.create_task(self._stop_when_asked(), name="stop")
                self.set_state(ServiceState.STOPPING)
                await self._publish_health()
        log.info("stopped")

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        """The main task ending (or failing) stops the whole service; the supervisor restarts it."""
        try:
            await work
        finally:
            self.stop()

    async def _stop_when_asked(self) -> None:
        await self._stop.wait()
        self.set_state(ServiceState.STOPPING)
        for task in self._tasks:
            task.cancel()

    async def _health_loop(self) -> None:
        while True:
            await self._publish_health()
            await asyncio.sleep(self.config.bus.health_interval_s)

    async def send_health(self) -> None:
        """A Health now, besides the periodic ones: after a command whose outcome its detail says."""
        await self._publish_health()

    async def _publish_health(self) -> None:
        if self.publisher is None:
            return
        health = Health(
            service=self.name,
            instance=self.instance,
            state=self.state.value,
            ts_ns=time.time_ns(),
            uptime_s=time.monotonic() - self._started,
            counters=self.health_counters(),
            detail=self.health_detail(),
        )
        await self.publisher.publish("health", self.name, health)

    async def _control_loop(self, control: Subscriber) -> None:
        async for received in control:
            command = received.message
            if not isinstance(command, Control) or command.instance not in (None, self.instance):
                continue
            log.info("control command", extra={"command": command.command, "id": command.id})
            if command.command == "shutdown":
                self.stop()
            else:
                await self.on_control(command)


def run_service(cls: type[Service], argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m services.<name> --config site.yaml [--instance ID] [--metrics-port N]``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{cls.name}", description=cls.__doc__)
    parser.add_argument("--config", required=True, help="the site file")
    parser.add_argument("--instance", help="this replica's name (default: $EDGESIGHT_INSTANCE or the host name)")
    parser.add_argument("--metrics-port", type=int, help="override metrics.ports.<service>; 0 picks a free port")
    parser.add_argument("--check", action="store_true", help="check this service's part of the site file and exit")
    args = parser.parse_args(argv)
    files.restrict_umask()  # before anything is written: SQLite's side files, an app's storage, the model store
    try:
        config = load_config(args.config)
    except EdgeSightError as exc:
        print(f"{cls.name}: invalid config:\n{exc}", file=sys.stderr)
        return 2
    if args.check:
        problems = cls.check(config)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 2 if problems else 0
    eslogging.configure(cls.name, config.logging.level, config.logging.format)
    service: Service | None = None
    try:
        service = cls(config, instance=args.instance, metrics_port=args.metrics_port)
        asyncio.run(service.run())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the one place every failure becomes one line and an exit code
        started = service is not None and service.was_ready
        return _report_failure(exc, started=started, debug=config.logging.level == "debug")
    return 0


def failures(exc: BaseException) -> list[BaseException]:
    """The leaves of ``exc``: errors raised inside a TaskGroup arrive wrapped in (nested) ExceptionGroups."""
    nested = getattr(exc, "exceptions", None)
    if isinstance(nested, (list, tuple)) and nested:
        return [leaf for inner in nested for leaf in failures(inner)]
    return [exc]


def _report_failure(exc: BaseException, *, started: bool, debug: bool) -> int:
    """One log line per cause (what and where; a traceback only at ``logging.level: debug``); 2 for a
    config error, else 1."""
    leaves = [leaf for leaf in failures(exc) if not isinstance(leaf, asyncio.CancelledError)] or [exc]
    for leaf in leaves:
        known = isinstance(leaf, EdgeSightError)
        text = str(leaf) if known else f"{type(leaf).__name__}: {leaf}"
        message = ("stopped on error" if started else "cannot start") if known else "crashed"
        log.error(message, extra={"error": " | ".join(text.splitlines())})
        if debug:
            log.debug("traceback", exc_info=leaf)
    return 2 if any(isinstance(leaf, ConfigError) for leaf in leaves) else 1
