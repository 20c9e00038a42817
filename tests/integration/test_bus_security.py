"""The bus's own guard: CurveZMQ on tcp (an unknown key hears nothing), private ipc sockets."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
import zmq.asyncio

from common.bus import Endpoint, Publisher, Subscriber, open_socket, security
from common.config import load_config
from common.config.bus import CurveConfig
from common.errors import BusError, ConfigError
from contracts import Health, topic
from tests.conftest import free_port, write_site
from tests.support import curve_bus, deadline, http_get, wait_for, wait_until


def curve_site(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A site whose bus is tcp with CurveZMQ, keys made by `edgesight bus keygen`'s code."""
    keys = tmp_path / "keys"
    security.generate_bus_keys(keys, ["broker", "ingest", "rules", "uplink", "run", "cli"])
    security.generate_bus_keys(tmp_path / "stranger", ["rules"])  # a key pair nobody listed
    site = write_site(tmp_path)
    data = yaml.safe_load(site.read_text())
    data["bus"] = curve_bus(keys, (free_port(), free_port(), free_port()))
    curve = data["bus"]["curve"]
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return site, curve


@pytest.fixture
def curve_broker(tmp_path: Path, python_env: dict[str, str]) -> Iterator[tuple[Path, dict[str, Any], str]]:
    site, curve = curve_site(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.broker", "--config", str(site)],
        env=python_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{load_config(site).metrics.port('broker')}"
    try:
        wait_for(f"{base}/readyz")
        yield site, curve, base
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        print(stderr[-3000:])
        security.configure_curve(None, "test")


def test_an_unknown_key_hears_nothing_while_a_known_one_does(curve_broker: tuple[Path, dict[str, Any], str]) -> None:
    site, curve, base = curve_broker
    config = load_config(site)
    stranger = CurveConfig(**{**curve, "client_key": str(site.parent / "stranger" / "rules.key_secret")})

    async def run() -> dict[str, int]:
        heard = {"rules": 0, "stranger": 0, "plain": 0}
        async with contextlib.AsyncExitStack() as stack:
            subscribers = []
            for keys in (config.bus.curve, stranger, None):  # a socket takes the keys in force when it opens
                security.configure_curve(keys, "rules")
                subscribers.append(
                    await stack.enter_async_context(Subscriber(config.bus.subscribe, "rules", [topic("health")]))
                )
            security.configure_curve(config.bus.curve, "ingest")
            async with Publisher(config.bus.publish_endpoint("ingest"), "ingest") as publisher:
                health = Health(service="ingest", instance="i1", state="ready", ts_ns=time.time_ns(), uptime_s=1.0)

                async def count(name: str, subscriber: Subscriber) -> None:
                    async for _ in subscriber:
                        heard[name] += 1

                tasks = [asyncio.create_task(count(n, s)) for n, s in zip(heard, subscribers, strict=True)]
                end = deadline(60)
                while not heard["rules"]:  # the known key's Curve handshake is through (slow on a loaded machine)
                    assert time.monotonic() < end, "the known key heard nothing"
                    await publisher.publish("health", "ingest", health)
                    await asyncio.sleep(0.1)
                before = heard["rules"]
                for _ in range(40):  # 4 s more: long enough for every handshake to have been tried several times
                    await publisher.publish("health", "ingest", health)
                    await asyncio.sleep(0.1)
                for task in tasks:
                    task.cancel()
        return {**heard, "rules": heard["rules"] - before}  # what it heard in those 4 s

    heard = asyncio.run(run())
    assert heard["rules"] >= 20
    assert heard["stranger"] == 0 and heard["plain"] == 0
    metrics = ""

    def denied() -> bool:  # counted by the broker's authenticator thread: polled, not read once
        nonlocal metrics
        _, metrics = http_get(f"{base}/metrics")
        found = [
            line
            for line in metrics.splitlines()
            if line.startswith('edgesight_bus_denied_total{reason="key",service="broker"}')
        ]
        return bool(found) and float(found[0].split()[-1]) >= 1

    try:
        wait_until(denied, 30, "the stranger's key denied")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{metrics[-2000:]}") from None


def test_binding_tcp_needs_the_server_secret(tmp_path: Path) -> None:
    _, curve = curve_site(tmp_path)
    without = CurveConfig(**{**curve, "server_secret_key": None})
    security.configure_curve(without, "rules")
    context = zmq.asyncio.Context.instance()
    try:
        with pytest.raises(BusError, match=r"needs the server's secret key \(bus.curve.server_secret_key\)"):
            open_socket(Endpoint.parse(f"router+bind:tcp://127.0.0.1:{free_port()}"), context)
        with pytest.raises(ConfigError, match=r"bus\.curve\.client_key: .*nobody\.key_secret does not exist"):
            security.configure_curve(CurveConfig(**{**curve, "client_key": str(tmp_path / "nobody.key_secret")}), "x")
        with pytest.raises(ConfigError, match="holds no secret key"):
            security.configure_curve(CurveConfig(**{**curve, "client_key": curve["server_key"]}), "x")
    finally:
        security.configure_curve(None, "test")


def test_ipc_sockets_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # as a hand-made /run/edgesight might be
    context = zmq.asyncio.Context.instance()
    sock = open_socket(Endpoint.parse(f"xsub+bind:ipc://{folder}/bus-in.sock"), context)
    fresh = open_socket(Endpoint.parse(f"xpub+bind:ipc://{tmp_path}/new/bus-out.sock"), context)
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / "bus-in.sock").stat().st_mode) == 0o660
        assert stat.S_IMODE((tmp_path / "new" / "bus-out.sock").stat().st_mode) == 0o660
    finally:
        sock.close(linger=0)
        fresh.close(linger=0)


def test_config_check_names_a_missing_bus_key(tmp_path: Path, python_env: dict[str, str]) -> None:
    site, _ = curve_site(tmp_path)
    (tmp_path / "keys" / "inference.key_secret").unlink(missing_ok=True)  # never made for this site
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "config", "check", str(site)],
        env=python_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "bus.curve.client_key: " in result.stderr and "inference.key_secret does not exist" in result.stderr
    assert "Traceback" not in result.stderr
