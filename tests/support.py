"""Small helpers for tests: deadlines scaled for a loaded machine, HTTP polling, bus handshakes, tool lookup,
placeholder bus messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq.asyncio

from common.bus import Publisher, Received, Subscriber
from common.config.bus import BusConfig
from contracts import Control, FrameRef, Message, encode, topic
from contracts.topics import Stream

# Deadlines are multiplied by this (e.g. EDGESIGHT_TEST_SLOWDOWN=3 on a machine shared with other test runs).
# They are generous even at 1: a deadline is only reached on a failure, so a long one costs nothing.
SLOWDOWN = max(1.0, float(os.environ.get("EDGESIGHT_TEST_SLOWDOWN") or 1))


def scaled(seconds: float) -> float:
    """``seconds`` for a machine slowed down by EDGESIGHT_TEST_SLOWDOWN."""
    return seconds * SLOWDOWN


def deadline(seconds: float) -> float:
    """The ``time.monotonic()`` ``scaled(seconds)`` from now."""
    return time.monotonic() + scaled(seconds)


def wait_until(condition: Callable[[], object], seconds: float = 60, what: str = "condition") -> None:
    """Polls ``condition`` until it is true; fails after ``scaled(seconds)``."""
    end = deadline(seconds)
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not met within {scaled(seconds):g} s")
        time.sleep(0.1)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=scaled(5)) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, status: int = 200, seconds: float = 60) -> str:
    end = deadline(seconds)
    while time.monotonic() < end:
        try:
            code, body = http_get(url)
            if code == status:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {scaled(seconds):g}s")


async def bus_handshake(
    *,
    publisher: Publisher | zmq.asyncio.Socket | None = None,
    subscriber: Subscriber | None = None,
    bus: BusConfig | None = None,
    seconds: float = 60,
) -> list[Received]:
    """Returns once the test's own bus sockets carry messages. ZeroMQ drops what a PUB sends before its
    connection, or a SUB's subscription, has reached the other side (the "slow joiner"): a fixed sleep
    was too short on a loaded machine.

    Publishes probes from ``publisher`` (a Publisher or a raw PUB socket; else one of its own on
    ``bus.publish``) until ``subscriber`` (else one of its own on ``bus.subscribe``) receives one, then
    reads on up to the last probe sent, so that none is left queued. The probes are Control messages on
    ``control/probe-<random>/``, a topic no service subscribes to. A subscriber's earlier subscriptions
    travel the same path ahead of the probe's, and so do those a service made before it said ready: once
    a probe arrives, so do messages on them. (A service that subscribes later, the broker to its own
    control topic among them, needs :func:`publish_until_counted`.) Returns what else ``subscriber``
    received meanwhile.
    """
    key = f"probe-{secrets.token_hex(6)}"
    probe_topic = topic("control", key)
    others: list[Received] = []
    async with contextlib.AsyncExitStack() as stack:
        if publisher is None:
            assert bus is not None, "give the site's bus to probe from a publisher of its own"
            publisher = await stack.enter_async_context(Publisher(bus.publish, "test-probe"))
        if subscriber is None:
            assert bus is not None, "give the site's bus to probe with a subscriber of its own"
            subscriber = await stack.enter_async_context(Subscriber(bus.subscribe, "test-probe", [probe_topic]))
        else:
            subscriber.subscribe(probe_topic)
        sent, heard = 0, False
        end = deadline(seconds)
        receiving = asyncio.ensure_future(subscriber.receive())
        try:
            while True:
                if not heard:  # one probe each round until one comes back; then only the rest are awaited
                    sent += 1
                    probe = Control(id=f"{key}-{sent}", command="resume", instance=key)
                    if isinstance(publisher, Publisher):
                        await publisher.publish("control", key, probe)
                    else:
                        await publisher.send_multipart([probe_topic, encode(probe)])
                # never a timeout on the receive itself: a message taken off the socket could be lost with it
                await asyncio.wait({receiving}, timeout=0.05 if not heard else max(0.0, end - time.monotonic()))
                if receiving.done():
                    received = receiving.result()
                    message = received.message
                    if isinstance(message, Control) and message.instance == key:
                        heard = True
                        if message.id == f"{key}-{sent}":  # the last one sent: nothing of ours is in flight
                            return others
                    else:
                        others.append(received)
                    receiving = asyncio.ensure_future(subscriber.receive())
                if time.monotonic() > end:
                    raise AssertionError(
                        f"no bus probe {'drained' if heard else 'got through'} in {scaled(seconds):g} s"
                    )
        finally:
            receiving.cancel()


def received_count(base: str, service: str, stream: str) -> float:
    """What ``service`` (its metrics at ``base``) has received on ``stream`` of the bus."""
    wanted = {f'service="{service}"', f'stream="{stream}"', 'direction="in"'}
    for found in re.finditer(r"^edgesight_bus_messages_total\{(.*)\} (\S+)$", http_get(f"{base}/metrics")[1], re.M):
        if set(found.group(1).split(",")) == wanted:
            return float(found.group(2))
    return 0.0


async def publish_until_counted(
    publisher: Publisher, stream: Stream, key: str, message: Message, base: str, service: str, seconds: float = 60
) -> None:
    """Publishes ``message`` (again every 0.2 s) until ``service`` has counted it received: the handshake with
    a service's own subscription, which can reach the broker after the service says ready (the broker's
    own does: it connects before the broker binds; the uplink subscribes once running). Only for a message
    the service may receive more than once."""
    before = await asyncio.to_thread(received_count, base, service, stream)
    end = deadline(seconds)
    while True:
        await publisher.publish(stream, key, message)
        await asyncio.sleep(0.2)
        if await asyncio.to_thread(received_count, base, service, stream) > before:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{service} did not hear {stream}/{key}/ in {scaled(seconds):g} s")


async def control_handshake(publisher: Publisher, service: str, base: str, seconds: float = 60) -> None:
    """Returns once ``service`` (its metrics at ``base``) hears Control messages from ``publisher``. The probe is
    a Control for an instance that does not exist: the service counts it, then ignores it."""
    instance = f"probe-{secrets.token_hex(6)}"
    probe = Control(id=instance, command="resume", instance=instance)
    await publish_until_counted(publisher, "control", service, probe, base, service, seconds)


def tool(name: str) -> str:
    """The path of a command the suite needs; a failure that says how to get it."""
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make bootstrap`"
    return path


def frame_ref(camera: str = "cam1", seq: int = 0, **fields: Any) -> FrameRef:
    """A FrameRef of a tiny 2x2 frame that lies nowhere: for tests of the bus, not of shared memory."""
    defaults: dict[str, Any] = {"capture_ns": 1, "monotonic_ns": 1, "slot": 0, "generation": 2}
    defaults["segment"] = "edgesight.site.cam"
    geometry = {"width": 2, "height": 2, "stride": 6}
    return FrameRef(camera=camera, seq=seq, **(defaults | geometry | fields))


def hall_camera(**overrides: Any) -> dict[str, Any]:
    """The shared crowd clip as a looping 5 fps camera with a line across its middle and a zone in its centre."""
    rules = {
        "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"]},
        "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]},
    }
    return {"url": "people.mp4", "loop": True, "fps": 5, "rules": rules, **overrides}


def prometheus_query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    """An instant PromQL query through Prometheus' HTTP API; the result vector."""
    import json
    import urllib.parse

    status, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expression})}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", (expression, answer)
    return list(answer["data"]["result"])


def curve_bus(keys: Path, ports: tuple[int, int, int]) -> dict[str, Any]:
    """A ``bus:`` section on tcp (frontend, backend, events ports) with CurveZMQ keys as
    `edgesight bus keygen` lays them out under ``keys``."""
    front, back, events = ports
    return {
        "publish": f"pub+connect:tcp://127.0.0.1:{front}",
        "subscribe": [f"sub+connect:tcp://127.0.0.1:{back}"],
        "broker": {"frontend": f"xsub+bind:tcp://127.0.0.1:{front}", "backend": f"xpub+bind:tcp://127.0.0.1:{back}"},
        "events": {
            "send": f"dealer+connect:tcp://127.0.0.1:{events}",
            "receive": f"router+bind:tcp://127.0.0.1:{events}",
        },
        "health_interval_s": 0.5,
        "curve": {
            "server_key": str(keys / "server.key"),
            "server_secret_key": str(keys / "server.key_secret"),
            "client_key": str(keys / "{service}.key_secret"),
            "authorized_keys": str(keys / "clients"),
        },
    }
