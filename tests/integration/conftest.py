"""Fixtures for tests that start real services and servers."""

from __future__ import annotations

import getpass
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import load_config
from tests.conftest import free_port, write_site
from tests.integration.browser import browser  # noqa: F401  (a fixture: a real headless Chromium)
from tests.media import repeat_clip
from tests.support import deadline, http_get, scaled, tool, wait_for, wait_until


@pytest.fixture
def broker(site_file: Path, python_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str, Any]]:
    """A broker process, ready; yields (process, metrics base URL, config)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.broker", "--config", str(site_file), "--instance", "b1"],
        env=python_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    config = load_config(site_file)
    base = f"http://127.0.0.1:{config.metrics.port('broker')}"
    try:
        wait_for(f"{base}/readyz")
        yield process, base, config
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


class RtspServer:
    """GStreamer's gst-rtsp-server, run by the system Python (it has the GObject bindings)."""

    SCRIPT = Path(__file__).resolve().parents[1] / "servers" / "rtsp_server.py"

    def __init__(self, mounts: dict[str, Path | str], port: int | None = None) -> None:
        self.mounts = mounts
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None

    def url(self, mount: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}/{mount}"

    def start(self) -> RtspServer:
        python = "/usr/bin/python3"
        assert Path(python).exists(), "the system python3 (with python3-gi) is needed: run `make bootstrap`"
        args = [f"/{mount}={path}" for mount, path in self.mounts.items()]
        self.process = subprocess.Popen(
            [python, str(self.SCRIPT), "--port", str(self.port), *args], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("ready"), f"RTSP server did not start (exit {self.process.poll()}): {line!r}"
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def rtsp_servers() -> Iterator[Callable[..., RtspServer]]:
    """Starts RTSP servers (``rtsp_servers({"cam": path})``) and kills them after the test."""
    started: list[RtspServer] = []

    def start(mounts: dict[str, Path | str], port: int | None = None) -> RtspServer:
        server = RtspServer(mounts, port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def long_clip(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``people.mp4`` four times over (55 s), remuxed without re-encoding: long enough to serve
    over RTSP for a whole test, with the very same frames."""
    path = tmp_path_factory.mktemp("media") / "people_x4.mp4"
    repeat_clip(shared_dir / "media" / "people.mp4", path, times=4)
    return path


class Services:
    """Service processes of one site, started with ``python -m services.<name>``; logs kept."""

    def __init__(self, site: Path, env: dict[str, str]) -> None:
        self.site = site
        self.config = load_config(site)
        self.env = env
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, *, env: dict[str, str] | None = None) -> str:
        """Starts ``name`` and waits until ready; returns its metrics base URL."""
        running = self.processes.get(name)
        # a second one would orphan the first (nothing would stop it) and take over its sockets
        assert running is None or running.poll() is not None, f"{name} is running already"
        log = self.site.parent / f"{name}.log"
        self.logs[name] = log
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}", "--config", str(self.site), "--instance", f"{name}-t"],
            env={**self.env, **(env or {})},
            stderr=log.open("w"),
            text=True,
        )
        base = self.base(name)
        process = self.processes[name]
        end = deadline(60)
        while time.monotonic() < end:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)[-2000:]}")
            try:
                if http_get(f"{base}/readyz")[0] == 200:
                    return base
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{name} did not become ready within {scaled(60):g} s")

    def base(self, name: str) -> str:
        return f"http://127.0.0.1:{self.config.metrics.port(name)}"

    def log(self, name: str) -> str:
        return self.logs[name].read_text()

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def services(tmp_path: Path, python_env: dict[str, str]) -> Iterator[Callable[[dict[str, Any]], Services]]:
    """``services({"cameras": {...}})`` writes a site file with those sections; start processes on it."""
    made: list[Services] = []

    def make(extra: dict[str, Any]) -> Services:
        made.append(Services(write_site(tmp_path, extra), python_env))
        return made[-1]

    yield make
    for group in made:
        group.stop_all()


class Mosquitto:
    """A real Mosquitto broker on a free port, with persistence so that subscriptions survive a restart."""

    def __init__(self, folder: Path, extra: str = "", port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.config = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            # run as whoever runs the tests (as root it would drop to `mosquitto`, who cannot read tmp_path)
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n"
            # the defaults, and subscriptions: a test waits for its subscriber's (see wait_subscribed)
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n"
            f"{extra}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)])
        end = deadline(30)
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port}: {(self.folder / 'mosquitto.log').read_text()}")

    def wait_subscribed(self, topic: str, client: str = r"\S+") -> None:
        """Waits until ``client`` (any client by default) has subscribed to ``topic``: a message published
        before is not delivered (and a fixed sleep was too short on a loaded machine)."""
        line = re.compile(rf"^\d+: {client} \d {re.escape(topic)}$", re.M)
        log = self.folder / "mosquitto.log"
        wait_until(lambda: log.exists() and line.search(log.read_text()), 60, f"a subscription to {topic}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=scaled(30))


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    started: list[Mosquitto] = []

    def start(extra: str = "", name: str = "mosquitto") -> Mosquitto:
        broker = Mosquitto(tmp_path / name, extra).start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """``prometheus(config_file)`` starts a real Prometheus (Debian's) on a free port; returns its URL."""
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(config: Path) -> str:
        port = free_port()
        log = (tmp_path / "prometheus.log").open("w")
        process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append((process, log))
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/-/ready", seconds=60)
        return url

    yield start
    for process, log in started:
        process.terminate()
        process.wait(timeout=10)
        log.close()
