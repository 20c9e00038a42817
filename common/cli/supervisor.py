"""``edgesight run``: the embedded supervisor of the service processes.

Starts each service as ``python -m services.<name> --config FILE``, restarts one that exits
(exponential backoff, reset once it has run for a minute: ``common/backoff.py``; counted) or whose
``/healthz`` has failed for ``run.liveness_timeout_s`` (a stalled event loop), forwards SIGTERM/SIGINT
as a clean stop (SIGKILL after ``stop_grace_s``), and with ``--for`` stops by itself (exit 1 if a
service never became ready). Children get SIGTERM from the kernel when the supervisor dies, however it dies, so no
orphan holds a port against the next ``run``. Compose and k3s are the other supervisors; nothing in
a service knows which one runs it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common._compat import TaskGroup, wait_at_most
from common.backoff import RestartBackoff
from common.bus import Subscriber, security
from common.config import DEFAULT_INGEST_GROUP, INFERENCE_SHARD_VARIABLE, INGEST_GROUP_VARIABLE, SiteConfig
from common.config.metrics import DEFAULT_PORTS
from common.errors import StartupError
from common.metrics import SUPERVISOR_RESTARTS, HttpEndpoint
from common.process import die_with_parent, stop
from common.registry import BY_NAME, SERVICE_NAMES
from contracts import Health, topic

__all__ = ["KNOWN_SERVICES", "Supervisor", "installed_services"]

log = logging.getLogger(__name__)
KNOWN_SERVICES: tuple[str, ...] = SERVICE_NAMES  # in the order `run` starts them (common/registry.py)


def installed_services() -> list[str]:
    """Services of this installation that can run (``services/<name>/__main__.py`` exists)."""
    return [
        name
        for name in KNOWN_SERVICES
        if importlib.util.find_spec(BY_NAME[name].module) is not None
        and importlib.util.find_spec(f"{BY_NAME[name].module}.__main__") is not None
    ]


def ingest_groups(config: SiteConfig) -> list[str]:
    """Ingest serves one camera group per process; ``run`` starts one per group, ``default`` first (and always)."""
    groups = {camera.ingest_group for camera in config.cameras.values() if camera.enabled}
    return [DEFAULT_INGEST_GROUP, *sorted(groups - {DEFAULT_INGEST_GROUP})]


@dataclass
class _Child:
    name: str  # "ingest", or "ingest@east" for another camera group, "inference@1" for a second replica
    service: str = ""
    group: str | None = None
    shard: tuple[int, int] | None = None  # inference replicas: (index, count)
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    last_health: Health | None = field(default=None, repr=False)
    metrics_port: int = 0
    was_ready: bool = False  # any of its processes ever ready (run --for's verdict)
    ready: bool = False  # this process has been ready (by /readyz or Health)
    unresponsive: bool = False  # this process's /healthz answered, and now does not
    last_error: str = ""  # the child's last error log line (or its last words when it crashed)


class Supervisor:
    def __init__(
        self, config: SiteConfig, config_path: Path, services: list[str], *, status_interval_s: float = 5.0
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.children: dict[str, _Child] = {}
        for service in services:
            if service == "ingest":
                for group in ingest_groups(config):
                    name = service if group == DEFAULT_INGEST_GROUP else f"{service}@{group}"
                    self.children[name] = _Child(name, service, group)
            elif service == "inference" and config.run.inference_processes > 1:
                count = config.run.inference_processes
                for index in range(count):
                    name = service if index == 0 else f"{service}@{index}"
                    self.children[name] = _Child(name, service, shard=(index, count))
            else:
                self.children[service] = _Child(service, service)
        taken = _configured_ports(config)  # a port picked for one child is never another's, nor a configured one
        for child in self.children.values():  # known in advance: the liveness probe needs it
            child.metrics_port = config.metrics.port(child.name) or _free_port(taken)
            taken.add(child.metrics_port)
        self.status_interval_s = status_interval_s
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, duration_s: float | None = None) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        if duration_s is not None:
            loop.call_later(duration_s, self.stop)
        host, port = self.config.metrics.host, self.config.metrics.port("run")
        try:
            endpoint = HttpEndpoint(host, port, lambda: not self._stopping.is_set())
        except OSError as exc:  # most often a second `edgesight run` of the same site
            raise StartupError(
                f"run: cannot serve metrics on {host}:{port} (metrics.ports.run): {exc.strerror or exc}; "
                "is another `edgesight run` of this site running?"
            ) from None
        with endpoint as http:
            async with TaskGroup() as group:
                # /healthz is red unless this loop beats, as in every service
                heartbeat = group.create_task(http.beat_forever("run"), name="heartbeat")
                watchers = [
                    group.create_task(self._keep_running(child), name=child.name) for child in self.children.values()
                ]
                probes = [
                    group.create_task(self._check_liveness(child), name=f"{child.name}-liveness")
                    for child in self.children.values()
                ]
                status = group.create_task(self._status_loop(), name="status")
                await self._stopping.wait()
                status.cancel()
                for probe in probes:  # before the children go: a probe of a closing port is no error
                    probe.cancel()
                await asyncio.gather(*(self._terminate(child) for child in self.children.values()))
                for watcher in [*watchers, heartbeat]:
                    watcher.cancel()
        self._print_status(final=True)
        never = [child.name for child in self.children.values() if not child.was_ready]
        if duration_s is not None and never:
            log.error("services never became ready", extra={"services": ",".join(never)})
            return 1
        return 0

    async def _keep_running(self, child: _Child) -> None:
        backoff = RestartBackoff(self.config.run.restart_backoff_s, self.config.run.max_restart_backoff_s)
        SUPERVISOR_RESTARTS.labels(service=child.name)  # at 0 from the start: increase() and alerts find it
        while not self._stopping.is_set():
            arguments = ["--config", str(self.config_path), "--instance", self._instance(child)]
            arguments += ["--metrics-port", str(child.metrics_port)]
            environment = child_environment()
            if child.group is not None:
                environment[INGEST_GROUP_VARIABLE] = child.group
            if child.shard is not None:
                environment[INFERENCE_SHARD_VARIABLE] = "{}/{}".format(*child.shard)
            child.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                BY_NAME[child.service].module,
                *arguments,
                env=environment,
                stderr=asyncio.subprocess.PIPE,
                limit=1 << 20,  # longest log line relayed
                preexec_fn=die_with_parent(),
            )
            child.started = time.monotonic()
            child.ready, child.unresponsive, child.last_health = False, False, None  # a new process: nothing known
            log.info("service started", extra={"child": child.name, "pid": child.process.pid})
            last_words = await self._relay_stderr(child)
            code = await child.process.wait()
            if code is not None and code > 0 and last_words and not child.last_error:  # not killed: its last words
                child.last_error = last_words
            if self._stopping.is_set():
                return
            ran_for = time.monotonic() - child.started
            wait = backoff.next(ran_for)
            child.restarts += 1
            child.backoff_s = wait
            SUPERVISOR_RESTARTS.labels(service=child.name).inc()
            log.warning(
                "service exited; restarting",
                extra={"child": child.name, "code": code, "ran_s": round(ran_for, 1), "backoff_s": wait},
            )
            await wait_at_most(self._stopping.wait(), wait)

    async def _relay_stderr(self, child: _Child) -> str:
        """Passes the child's log lines on to ours, keeping its last error line for the status table;
        returns its last line (a crash's last words) once the pipe closes."""
        assert child.process is not None and child.process.stderr is not None
        last = ""
        async for raw in child.process.stderr:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            line = raw.decode(errors="replace").strip()
            if line:
                last = line
                if _ERROR_LINE.search(line):
                    child.last_error = line
        return last

    async def _check_liveness(self, child: _Child) -> None:
        """Kills a child whose /healthz has not answered 200 for ``liveness_timeout_s``: a stalled loop
        still answers /readyz from its HTTP thread, and never exits by itself."""
        timeout_s = self.config.run.liveness_timeout_s
        host = "127.0.0.1" if self.config.metrics.host in ("0.0.0.0", "::", "") else self.config.metrics.host
        healthy_at, process, answered = time.monotonic(), None, False
        while True:
            await asyncio.sleep(min(1.0, timeout_s / 4))
            if child.process is not process:  # (re)started: a new grace period
                process, healthy_at, answered = child.process, time.monotonic(), False
            if process is None or process.returncode is not None:
                continue
            if not child.ready and await _answers(host, child.metrics_port, "/readyz"):
                child.ready = child.was_ready = True  # asked directly: Health on the bus needs a broker
            if await _answers(host, child.metrics_port, "/healthz"):
                healthy_at, answered, child.unresponsive = time.monotonic(), True, False
                continue
            child.unresponsive = answered  # never answered yet: still starting
            if time.monotonic() - healthy_at >= timeout_s:
                child.last_error = f"/healthz failed for {timeout_s:g} s: killed and restarted"
                log.warning("service unresponsive; killing it", extra={"child": child.name, "seconds": timeout_s})
                process.kill()
                healthy_at = time.monotonic()

    async def _terminate(self, child: _Child) -> None:
        if await stop(child.process, self.config.run.stop_grace_s):
            log.warning("service ignored SIGTERM; it was killed", extra={"child": child.name})

    async def _status_loop(self) -> None:
        """Shows progress: one status table every ``status_interval_s`` from the services' Health."""
        security.configure_curve(self.config.bus.curve, "run")
        async with Subscriber(self.config.bus.subscribe, "run", [topic("health")]) as health:
            next_print = time.monotonic() + self.status_interval_s
            while True:
                receiving = asyncio.ensure_future(health.receive())
                if await wait_at_most(receiving, max(0.05, next_print - time.monotonic())):
                    message = receiving.result().message
                    if isinstance(message, Health):
                        self._take_health(message)
                if time.monotonic() >= next_print:
                    self._print_status()
                    next_print = time.monotonic() + self.status_interval_s

    def _take_health(self, message: Health) -> None:
        for child in self.children.values():
            if (message.service, message.instance) != (child.service, self._instance(child)):
                continue
            # one sent before a restart can arrive after it: it is older than the process now running
            if message.uptime_s > time.monotonic() - child.started + 1.0:
                continue
            child.last_health = message
            if message.state == "ready":
                child.ready = child.was_ready = True

    @staticmethod
    def _instance(child: _Child) -> str:
        if child.group not in (None, DEFAULT_INGEST_GROUP):
            return f"{child.service}-{child.group}"
        if child.shard is not None:
            return f"{child.service}-{child.shard[0]}"
        return f"{child.service}-0"

    def _state(self, child: _Child) -> str:
        """starting (its process is up, not yet ready), ready, degraded or stopping (as its Health says),
        unresponsive (its /healthz stopped answering), restarting (it died: waiting its backoff), exited (for good)."""
        process = child.process
        if process is None:
            return "exited" if self._stopping.is_set() else "starting"
        if process.returncode is not None:
            return "exited" if self._stopping.is_set() else "restarting"
        if child.unresponsive:
            return "unresponsive"
        health = child.last_health
        if health is not None and health.state != "starting":
            return health.state
        return "ready" if child.ready else "starting"  # /readyz is asked directly: newer than a Health

    def _print_status(self, *, final: bool = False) -> None:
        rows = [f"{'service':<14} {'pid':>7} {'state':<12} {'up s':>7} {'restarts':>8}  counters"]
        errors = []
        for child in self.children.values():
            health = child.last_health
            alive = child.process is not None and child.process.returncode is None
            state = "stopped" if final else self._state(child)
            counters = " ".join(f"{k}={v:g}" for k, v in sorted((health.counters if health else {}).items()))
            pid = child.process.pid if child.process else "-"
            uptime = f"{time.monotonic() - child.started:.0f}" if alive else "-"
            rows.append(f"{child.name:<14} {pid!s:>7} {state:<12} {uptime:>7} {child.restarts:>8}  {counters}")
            if child.last_error:
                errors.append(f"  {child.name} last error: {child.last_error[:300]}")
        print("\n".join(rows + errors), flush=True)


_ERROR_LINE = re.compile(r'level=(error|critical)\b|"level": ?"(error|critical)"')


_TCP_PORT = re.compile(r"^[a-z]+(?:\+(?:bind|connect))?:tcp://.*:(\d+)$")


def _configured_ports(config: SiteConfig) -> set[int]:
    """Every port the site file gives a service: metrics ports, the console's, the bus's tcp endpoints."""
    metrics, bus = config.metrics, config.bus
    ports = {metrics.port(name) for name in {*DEFAULT_PORTS, *metrics.ports}}
    if config.console is not None:
        ports.add(config.console.port)
    endpoints = [bus.publish, *bus.subscribe, bus.broker.frontend, bus.broker.backend, bus.events.send]
    for spec in [*endpoints, bus.events.receive]:
        found = _TCP_PORT.match(spec.strip())
        if found:
            ports.add(int(found[1]))
    ports.discard(0)
    return ports


def child_environment() -> dict[str, str]:
    """This process's environment for a ``python -m services.<name>`` child, with the working folder kept
    off its import path (Python 3.11+): a user's own ``common.py`` there must not shadow the package."""
    return {**os.environ, "PYTHONSAFEPATH": "1"}


def _free_port(taken: set[int]) -> int:
    """A port nothing listens on now and not in ``taken``: the kernel hands a released port out again, so
    two picks in a row can be one port."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


async def _answers(host: str, port: int, path: str, timeout_s: float = 2.0) -> bool:
    """True when ``GET path`` answers 200 within ``timeout_s``."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        status = await asyncio.wait_for(reader.readline(), timeout_s)
        return status.split()[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()
