"""Security issue #23, as a local attacker would try it: who may steer the services over the bus
(a forged ``shutdown`` from a service's key, a plain client), who may read the state on disk, and
how far the state on disk may grow past its quota."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from common._compat import timeout
from common.bus import EventSender, Publisher, Subscriber, security
from common.shm import FrameRingWriter, frame_bytes
from contracts import AppStatus, AppVideo, Control, Detections, Event, Snapshot, TrackedObject, topic
from tests.conftest import free_port, write_site
from tests.integration.conftest import Services
from tests.support import bus_handshake, curve_bus, deadline, http_get, wait_until

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
KEYS = ["broker", "rules", "uplink", "apps", "console", "run", "cli"]


def metric(base: str, name: str, **labels: str) -> float:
    """The value of one series on a service's /metrics (0 when absent)."""
    _, text = http_get(f"{base}/metrics")
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        found, _, rest = series.partition("{")
        if found == name and wanted <= set(rest.rstrip("}").split(",")) - {""}:
            return float(value)
    return 0.0


# -- 10: bus authorization ----------------------------------------------------------------------


def curve_services(tmp_path: Path, python_env: dict[str, str]) -> Services:
    """A site whose bus is tcp + CurveZMQ with a key pair per service (as `edgesight bus keygen` makes them)."""
    keys = tmp_path / "keys"
    security.generate_bus_keys(keys, KEYS)
    site = write_site(
        tmp_path, {"cameras": {"dock": {"url": "rtsp://unused/1", "rules": {"bay": {"type": "presence"}}}}}
    )
    data = yaml.safe_load(site.read_text())
    data["bus"] = curve_bus(keys, (free_port(), free_port(), free_port()))
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return Services(site, python_env)


def send_control(services: Services, key: str, controls: list[tuple[str, Control]], seconds: float = 3.0) -> None:
    """Publishes ``controls`` (topic key, command) with ``key``'s own key pair, again and again for
    ``seconds``: a PUB's first messages are lost until its handshake and the subscriptions are through."""
    config = services.config

    async def run() -> None:
        security.configure_curve(config.bus.curve, key)  # a socket takes the keys in force when it opens
        try:
            async with Publisher(config.bus.publish_endpoint(key), key) as publisher:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for target, control in controls:
                        await publisher.publish("control", target, control)
                    await asyncio.sleep(0.2)
        finally:
            security.configure_curve(None, "test")

    asyncio.run(run())


def test_only_allowed_keys_steer_the_services(tmp_path: Path, python_env: dict[str, str]) -> None:
    site = curve_services(tmp_path, python_env)
    try:
        broker = site.start("broker")
        for name in ("rules", "uplink"):
            site.start(name)

        # the apps key (a Panorama app's host) forges a shutdown for everyone and for rules
        forged = [
            ("*", Control(id="forged-all", command="shutdown")),
            ("rules", Control(id="forged-rules", command="shutdown")),
        ]
        send_control(site, "apps", forged)
        time.sleep(1.0)
        assert site.processes["rules"].poll() is None, site.log("rules")[-2000:]
        assert site.processes["uplink"].poll() is None, site.log("uplink")[-2000:]
        assert "forged-" not in site.log("rules") + site.log("uplink")
        assert metric(broker, "edgesight_bus_denied_total", service="broker", reason="control") >= 2
        assert "apps" in site.log("broker") and "control" in site.log("broker")

        # the console may have rules reload, and nothing else
        console = [
            ("rules", Control(id="console-reload", command="reload")),
            ("*", Control(id="console-shutdown", command="shutdown")),
            ("uplink", Control(id="console-pause", command="pause")),
        ]
        denied = metric(broker, "edgesight_bus_denied_total", service="broker", reason="control")
        send_control(site, "console", console)
        wait_until(lambda: "console-reload" in site.log("rules"), 60, "rules hears the console's reload")
        assert site.processes["rules"].poll() is None and site.processes["uplink"].poll() is None
        assert "console-shutdown" not in site.log("rules") + site.log("uplink")
        assert "console-pause" not in site.log("uplink")
        assert metric(broker, "edgesight_bus_denied_total", service="broker", reason="control") > denied

        # a plain client (no Curve key at all) hears nothing, and is counted
        async def plain() -> None:
            async with Subscriber(site.config.bus.subscribe, "plain", [topic("health")]) as subscriber:
                with pytest.raises(TimeoutError):
                    async with timeout(2):
                        await subscriber.receive()
            # counted from its failed handshake; on a loaded machine one attempt was seen to go uncounted
            # (no handshake event at all), so the client comes again, a fresh connection each time
            end = deadline(60)
            while metric(broker, "edgesight_bus_denied_total", service="broker", reason="no_key") < 1:
                assert time.monotonic() < end, "the plain client was never counted"
                async with Subscriber(site.config.bus.subscribe, "plain", [topic("health")]) as subscriber:
                    with pytest.raises(TimeoutError):
                        async with timeout(3):
                            await subscriber.receive()

        asyncio.run(plain())

        # the operator's CLI key still stops a service
        send_control(site, "cli", [("uplink", Control(id="cli-shutdown", command="shutdown"))], 1.0)
        assert site.processes["uplink"].wait(timeout=20) == 0
        assert site.processes["rules"].poll() is None
    finally:
        site.stop_all()


# -- 8: files readable by every local user ------------------------------------------------------

WIDTH, HEIGHT = 160, 120


def offenders(root: Path) -> list[str]:
    """Paths under ``root`` (itself included) that another user could read or enter, or the group change."""
    found = []
    for folder, dirs, names in os.walk(root):
        for path in [Path(folder), *(Path(folder) / name for name in names)]:
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISSOCK(info.st_mode):
                continue  # ipc sockets are guarded by their folder (0700)
            if mode & (0o027 if stat.S_ISDIR(info.st_mode) else 0o137):
                found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
        dirs.sort()
    return sorted(set(found))


def test_only_the_apps_service_speaks_on_the_apps_stream(tmp_path: Path, python_env: dict[str, str]) -> None:
    """The console serves what arrives on ``apps/`` as the apps service's word (an app's video): another
    service's key (rules, a compromised uplink) cannot put a picture or a state there."""
    site = curve_services(tmp_path, python_env)
    try:
        broker = site.start("broker")
        heard = hear_the_apps_stream(site)
        assert metric(broker, "edgesight_bus_denied_total", service="broker", reason="stream") >= 1
        assert "bus stream refused" in site.log("broker") and "rules" in site.log("broker")
    finally:
        site.stop_all()
    assert AppStatus(app="viewer", instance="apps-1", state="running", ts_ns=1) in heard, "the apps key is heard"
    assert not any(isinstance(message, AppVideo) for message in heard), "another key's picture is dropped"


def hear_the_apps_stream(site: Services) -> list[object]:
    """What a listener on ``apps/`` hears when rules' key and then the apps key speak there."""
    config = site.config
    forged = AppVideo(app="viewer", camera="dock", ts_ns=1, jpeg=b"\xff\xd8\xff forged")
    real = AppStatus(app="viewer", instance="apps-1", state="running", ts_ns=1)
    heard: list[object] = []

    async def run() -> None:
        security.configure_curve(config.bus.curve, "cli")  # a socket takes the keys in force when it opens
        async with Subscriber(config.bus.subscribe, "cli", [topic("apps")]) as subscriber:
            for key, message in (("rules", forged), ("apps", real)):
                security.configure_curve(config.bus.curve, key)
                async with Publisher(config.bus.publish_endpoint(key), key) as publisher:
                    end = time.monotonic() + 4
                    while time.monotonic() < end and not any(isinstance(m, AppStatus) for m in heard):
                        await publisher.publish("apps", "viewer", message)
                        try:
                            async with timeout(0.2):
                                heard.append((await subscriber.receive()).message)
                        except TimeoutError:
                            pass
            security.configure_curve(None, "test")

    asyncio.run(run())
    return heard


def test_state_files_are_private(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services], umask_022: None
) -> None:
    state = tmp_path / "state"
    (state / "console").mkdir(parents=True, mode=0o755)  # as an older version left them: 0755 folders...
    sqlite3.connect(state / "uplink-spool.sqlite").close()  # ...and 0644 files
    (tmp_path / "console_password").write_text(PASSWORD + "\n")
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "min_frames": 2, "snapshot": True},
        "bay": {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 2},
    }
    site = services(
        {
            "cameras": {"dock": {"url": "rtsp://unused/1", "rules": rules}},
            "tracker": {"min_hits": 2, "max_age_s": 0.5},
            "events": {"jsonl": "events.jsonl"},
            "uplink": {"jsonl": {"path": "uplink.jsonl"}},
            "console": {"port": free_port(), "admin_password": f"${{file:{tmp_path / 'console_password'}}}"},
        }
    )
    config = site.config
    for name in ("broker", "rules", "uplink", "console"):
        site.start(name)

    async def walk() -> None:
        """One person walks down across the line into the bay: rules decides, the uplink and the console keep."""
        ring = FrameRingWriter.create(
            "test", "dock", slots=8, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=config.site.shm_dir
        )
        try:
            async with Publisher(config.bus.publish, "test") as publisher:
                await bus_handshake(publisher=publisher, bus=config.bus)  # its connection reaches the broker
                for step in range(12):
                    y = 0.3 + step * 0.05
                    ref = ring.write(np.full((HEIGHT, WIDTH, 3), 200, np.uint8), monotonic_ns=step * 100_000_000)
                    detections = Detections.from_arrays(
                        ref,
                        "people",
                        boxes=[[0.45, y - 0.2, 0.55, y]],
                        class_ids=[0],
                        scores=[0.9],
                        labels={0: "person"},
                    )
                    await publisher.publish("detections", "dock", detections)
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(
                    wait_until,
                    lambda: any((state / "console" / "snapshots").glob("*.jpg")) and (state / "uplink.jsonl").exists(),
                    30,
                    "an event reaches the uplink and the console",
                )
        finally:
            ring.close()

    asyncio.run(walk())
    for name in ("events.jsonl", "uplink.jsonl", "rules-outbox.sqlite", "uplink-spool.sqlite-wal"):
        assert (state / name).exists(), name
    assert offenders(state) == []


# -- 12: quotas enforced when written -----------------------------------------------------------


def disk_bytes(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths if path.exists())


def test_console_history_keeps_to_max_mb_between_prunes(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    (tmp_path / "console_password").write_text(PASSWORD + "\n")
    site = services(
        {
            "console": {
                "port": free_port(),
                "admin_password": f"${{file:{tmp_path / 'console_password'}}}",
                "max_mb": 1,
            }
        }
    )
    site.start("broker")
    base = site.start("console")  # it prunes once at start, then every minute: all below arrives in between
    picture = np.random.default_rng(1).integers(0, 256, 64 * 1024, np.uint8).tobytes()
    count = 240  # 15 MB of snapshots

    async def publish() -> None:
        async with Publisher(site.config.bus.publish, "rules", hwm=1000) as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            for index in range(count):
                event = make_event(index, picture)
                await publisher.publish("events", event.camera, event)
                await asyncio.sleep(0.01)

    asyncio.run(publish())
    wait_until(
        lambda: metric(base, "edgesight_console_events_stored_total") >= count, 60, "the console stores every event"
    )
    folder = Path(site.config.site.state_dir) / "console"
    files = [path for path in folder.rglob("*") if path.is_file()]
    used = disk_bytes(files)
    assert used <= 1.1 * (1 << 20), f"{used / (1 << 20):.1f} MB on disk for max_mb: 1"


def test_uplink_spool_keeps_to_max_mb_and_says_what_it_dropped(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    rules = {"door": {"type": "line", "line": [[0, 0.5], [1, 0.5]], "snapshot": True}}
    site = services(
        {
            "cameras": {"dock": {"url": "rtsp://unused/1", "rules": rules}},
            # nobody listens there: every event stays in the spool
            "uplink": {"mqtt": {"host": "127.0.0.1", "port": free_port()}, "spool": {"max_mb": 1}},
        }
    )
    site.start("broker")
    site.start("uplink")
    picture = np.random.default_rng(2).integers(0, 256, 20 * 1024, np.uint8).tobytes()
    events = [make_event(index, picture) for index in range(300)]  # 6 MB

    async def send() -> None:
        async with EventSender(site.config.bus.events.send, "rules-standin", ack_timeout_s=2) as sender:
            for event in events:
                await sender.send(event)
            async with timeout(120):
                await sender.flush()

    asyncio.run(send())
    state = Path(site.config.site.state_dir)
    spool = [state / f"uplink-spool.sqlite{suffix}" for suffix in ("", "-wal", "-shm", "-journal")]
    used = disk_bytes(spool)
    assert used <= 1.1 * (1 << 20), f"{used / (1 << 20):.1f} MB on disk for spool.max_mb: 1"
    dropped = [line for line in site.log("uplink").splitlines() if "spool full" in line]
    assert dropped and re.search(r"snapshots=[1-9]", dropped[0]), site.log("uplink")[-3000:]  # with the count


def make_event(index: int, picture: bytes) -> Event:
    return Event(
        id=f"evt-{index:05d}",
        event_type="line_cross",
        site="test",
        camera="dock",
        rule="door",
        ts_ns=time.time_ns(),
        object=TrackedObject(track_id=index, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
        counts={"in": index, "out": 0},
        attributes={"direction": "in"},
        snapshot=Snapshot(width=2, height=2, data=picture),
    )
