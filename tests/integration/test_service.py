"""A real service process (the broker): HTTP endpoints, Health on the bus, control, clean SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from common._compat import timeout
from common.bus import Publisher, Subscriber
from common.config import load_config
from contracts import Control, Health, topic
from tests.conftest import write_site
from tests.support import bus_handshake, control_handshake, deadline, frame_ref, http_get, scaled


def test_endpoints_health_and_clean_sigterm(broker) -> None:  # type: ignore[no-untyped-def]
    process, base, config = broker
    assert http_get(f"{base}/healthz") == (200, "ok\n")
    metrics = http_get(f"{base}/metrics")[1]
    assert 'edgesight_service_ready{service="broker"} 1.0' in metrics

    async def one_health() -> Health:
        async with Subscriber(config.bus.subscribe, "test", [topic("health", "broker")]) as sub, timeout(scaled(30)):
            message = (await sub.receive()).message
            assert isinstance(message, Health)
            return message

    health = asyncio.run(one_health())
    assert (health.service, health.instance, health.state) == ("broker", "b1", "ready")
    assert "messages_in" in health.counters

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=scaled(30)) == 0
    assert "msg=stopped" in process.stderr.read()


def test_frames_flow_through_the_broker_and_garbage_is_counted(broker) -> None:  # type: ignore[no-untyped-def]
    process, base, config = broker

    async def scenario() -> list[int]:
        async with (
            Subscriber(config.bus.subscribe, "test", [topic("frames", "cam1")]) as sub,
            # room for more than the 10 frames: with the default 8 the 9th was dropped now and then under load
            Publisher(config.bus.publish, "test", hwm=100) as pub,
        ):
            context = zmq.asyncio.Context.instance()
            rogue = context.socket(zmq.PUB)
            rogue.connect(config.bus.publish.split(":", 1)[1])
            # subscriptions travel up through the broker (the broker's own too): wait until messages get through
            await bus_handshake(publisher=pub, subscriber=sub)
            await control_handshake(pub, "broker", base)
            await bus_handshake(publisher=rogue, subscriber=sub)
            seqs: list[int] = []
            async with timeout(scaled(30)):
                for seq in range(10):
                    ref = frame_ref("cam1", seq)
                    await rogue.send_multipart([topic("control", "broker"), b"\xc1garbage"])
                    await pub.publish("frames", "cam1", ref)
                    seqs.append((await sub.receive()).message.seq)  # type: ignore[attr-defined]
            rogue.close()
            return seqs

    assert asyncio.run(scenario()) == list(range(10))
    end = deadline(30)
    while time.monotonic() < end:
        metrics = http_get(f"{base}/metrics")[1]
        if 'edgesight_bus_rejected_total{reason="malformed",service="broker"} 10.0' in metrics:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"rejections not counted:\n{[line for line in metrics.splitlines() if 'rejected' in line]}")
    assert process.poll() is None, "garbage must not stop the service"


def test_control_shutdown_stops_the_service(broker) -> None:  # type: ignore[no-untyped-def]
    process, base, config = broker

    async def send() -> None:
        async with Publisher(config.bus.publish, "test") as pub:
            await control_handshake(pub, "broker", base)
            await pub.publish("control", "broker", Control(id="c1", command="shutdown"))

    asyncio.run(send())
    assert process.wait(timeout=scaled(30)) == 0


def test_bad_config_exits_2_with_the_line(tmp_path: Path, python_env: dict[str, str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site: {name: s}\nbus:\n  frames_hwm: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "services.broker", "--config", str(site)],
        env=python_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{site}:3: bus.frames_hwm: Input should be greater than or equal to 1" in result.stderr


def _start_failing(
    tmp_path: Path, python_env: dict[str, str], service: str, extra: dict[str, Any], *, occupy_port: bool = False
) -> tuple[int, str]:
    site = write_site(tmp_path, extra)
    site.write_text(site.read_text().replace(f"shm_dir: {tmp_path / 'shm'}", "shm_dir: /nonexistent/shm"))
    config = load_config(site)
    holder = socket.socket()
    try:
        if occupy_port:
            holder.bind(("127.0.0.1", config.metrics.port(service)))
            holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", f"services.{service}", "--config", str(site)],
            env=python_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        holder.close()
    return result.returncode, result.stderr


STARTUP_FAILURES = {
    "metrics port in use": ("broker", {}, "cannot serve metrics on 127.0.0.1:{port} (metrics.ports.broker)"),
    "shm_dir missing": (  # every site of these tests names /nonexistent/shm; only ingest makes segments
        "ingest",
        {"cameras": {"c": {"url": "rtsp://127.0.0.1:9/x"}}},
        "shared-memory folder /nonexistent/shm does not exist (site.shm_dir)",
    ),
    "missing model": (
        "inference",
        {"models": {"m": {"path": "no_such_model.onnx"}}, "cameras": {"c": {"url": "rtsp://127.0.0.1:9/x"}}},
        "no_such_model.onnx",
    ),
    "unknown class": (
        "inference",
        {
            "models": {"m": {"path": "yolox_nano.onnx", "classes": ["unicorn"]}},
            "cameras": {"c": {"url": "rtsp://127.0.0.1:9/x"}},
        },
        "unicorn",
    ),
}


@pytest.mark.parametrize("case", list(STARTUP_FAILURES))
def test_every_startup_failure_is_one_line_and_exit_1(tmp_path: Path, python_env: dict[str, str], case: str) -> None:
    """Errors raised inside the TaskGroup arrive as an ExceptionGroup: they used to print a traceback."""
    service, extra, expected = STARTUP_FAILURES[case]
    code, stderr = _start_failing(tmp_path, python_env, service, extra, occupy_port=case == "metrics port in use")
    if "{port}" in expected:
        expected = expected.format(port=load_config(tmp_path / "site.yaml").metrics.port(service))
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    failures = [line for line in stderr.splitlines() if 'msg="cannot start"' in line]
    assert len(failures) == 1 and expected in failures[0], stderr


def test_a_bus_endpoint_in_use_is_one_line(tmp_path: Path, python_env: dict[str, str], broker) -> None:  # type: ignore[no-untyped-def]
    """A second broker on the same ipc paths used to bind silently and steal the bus from the first."""
    process, base, _ = broker
    second = subprocess.run(
        [sys.executable, "-m", "services.broker", "--config", str(tmp_path / "site.yaml"), "--metrics-port", "0"],
        env=python_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert "another live process serves" in second.stderr
    assert process.poll() is None and http_get(f"{base}/readyz")[0] == 200
