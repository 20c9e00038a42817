"""Home Assistant discovery (issue #27) against a real Mosquitto: the uplink announces the site, and a
client that subscribes as Home Assistant does (``homeassistant/#``, then each config's state and
availability topics) finds valid configs and the values the events carried; a rule removed by a reload
and the feature switched off leave no entity behind. Also the retained ``count_report`` per rule, and
that a rule removed (by a reload, or while the uplink was down: Home Assistant on or off) leaves no
retained count or report on the broker."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from common._compat import timeout
from common.audit import AuditTrail
from common.bus import Publisher
from contracts import CameraStatus, Event, TrackedObject
from services.uplink.home_assistant_feed import STATE_FILE
from tests.home_assistant_schema import config_problems, discovery_topic_problems
from tests.integration.conftest import Mosquitto, Services
from tests.integration.test_uplink import send
from tests.support import deadline, publish_until_counted, scaled

pytestmark = pytest.mark.slow

RULES = {
    "door": {"type": "line", "line": [[0, 0.5], [1, 0.5]], "classes": ["person"]},
    "gate": {"type": "line", "line": [[0.5, 0], [0.5, 1]]},  # no classes: a label is announced when seen
    "bay": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["person"]},
}


def sections(broker: Mosquitto) -> dict[str, Any]:
    return {
        "cameras": {"dock": {"url": "rtsp://unused/1", "rules": RULES}},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "home_assistant": True}},
    }


def make_event(index: int, kind: str, rule: str, label: str, counts: dict[str, int], **attributes: Any) -> Event:
    return Event(
        id=f"evt-{rule}-{index:04d}",
        event_type=kind,
        site="test",
        camera="dock",
        rule=rule,
        ts_ns=time.time_ns(),
        object=TrackedObject(track_id=index, label=label, score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
        counts=counts,
        attributes=attributes,
    )


def report(start_s: int, total_in: int, rule: str = "door", label: str = "person") -> Event:
    """A count_report as rules makes one for a line (the door's, unless told)."""
    return Event(
        id=f"report.dock.{rule}.{start_s}",
        event_type="count_report",
        site="test",
        camera="dock",
        rule=rule,
        ts_ns=(start_s + 900) * 10**9,
        start_ns=start_s * 10**9,
        end_ns=(start_s + 900) * 10**9,
        counts={label: 2},
        attributes={"kind": "line", "interval_s": 900, f"{label}.in": 2, f"{label}.out": 0,
                    f"{label}.total_in": total_in, f"{label}.total_out": 0},
    )  # fmt: skip


async def retained(port: int, patterns: list[str]) -> dict[str, bytes]:
    """Every retained message on ``patterns`` now, read as Home Assistant would read them. Complete: the
    broker sends a subscription's retained messages before it handles the client's next publish, so
    once our own marker comes back, nothing retained is still to come."""
    import aiomqtt

    marker = f"test/marker/{secrets.token_hex(4)}"
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"ha-{secrets.token_hex(4)}") as client:
        for pattern in [*patterns, marker]:
            await client.subscribe(pattern, qos=1)
        await client.publish(marker, b"end", qos=1)
        async with timeout(scaled(30)):
            async for message in client.messages:
                if message.topic.value == marker:
                    return seen
                assert isinstance(message.payload, bytes)
                seen[message.topic.value] = message.payload
    raise AssertionError("unreachable")


def wait_retained(port: int, patterns: list[str], done: Callable[[dict[str, bytes]], bool]) -> dict[str, bytes]:
    end = deadline(60)
    while True:
        seen = asyncio.run(retained(port, patterns))
        if done(seen):
            return seen
        assert time.monotonic() < end, seen
        time.sleep(0.3)


def configs_of(seen: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {topic: json.loads(payload) for topic, payload in seen.items() if topic.endswith("/config")}


def discover(port: int, names: set[str]) -> tuple[dict[str, dict[str, Any]], dict[str, bytes]]:
    """Home Assistant's part: the configs under ``homeassistant/#`` (until ``names`` are all there), each
    validated, then what their state and availability topics hold (until each has a value)."""
    seen = wait_retained(port, ["homeassistant/#"], lambda s: {c["name"] for c in configs_of(s).values()} >= names)
    configs = configs_of(seen)
    for topic, config in configs.items():
        assert discovery_topic_problems(topic) == []
        assert config_problems(config) == [], (topic, config)
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    topics = sorted({c["state_topic"] for c in configs.values()} | {a["topic"] for c in configs.values()
                                                                      for a in c["availability"]})  # fmt: skip
    values = wait_retained(port, topics, lambda s: set(s) >= set(topics))
    return configs, values


def value(configs: dict[str, dict[str, Any]], values: dict[str, bytes], name: str) -> str:
    (config,) = [c for c in configs.values() if c["name"] == name]
    return values[config["state_topic"]].decode()


def test_home_assistant_finds_the_site_its_values_and_no_stale_entity(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    broker = mosquitto()
    site = services(sections(broker))
    site.start("broker")
    site.start("uplink")
    hour_ago = time.time_ns() // 10**9 // 900 * 900 - 3600
    crossings = [
        make_event(i, "line_cross", "door", "person", {"in": i, "out": 0}, direction="in") for i in range(1, 8)
    ]
    others = [
        make_event(1, "line_cross", "gate", "car", {"in": 0, "out": 1}, direction="out"),
        make_event(2, "zone_enter", "bay", "person", {"person": 1}),
        make_event(3, "zone_enter", "bay", "person", {"person": 2}),
        make_event(4, "zone_exit", "bay", "person", {"person": 1}),
        report(hour_ago, 3),
        report(hour_ago + 900, 5),  # its totals are as of its interval's end: older than the crossings
        report(hour_ago, 0, rule="gate", label="car"),
    ]
    asyncio.run(send(site, crossings + others))

    async def camera_streams() -> None:
        async with Publisher(site.config.bus.publish, "ingest-standin") as publisher:
            status = CameraStatus(camera="dock", state="streaming", instance="i", ts_ns=time.time_ns(), since_ns=1)
            await publish_until_counted(publisher, "cameras", "dock", status, site.base("uplink"), "uplink")

    asyncio.run(camera_streams())
    names = {"dock door person in", "dock door person out", "dock gate car in", "dock gate car out",
             "dock bay person occupancy", "dock state"}  # fmt: skip
    configs, values = discover(broker.port, names)
    assert {c["name"] for c in configs.values()} == names
    assert value(configs, values, "dock door person in") == "7"  # 7 crossings; the reports' totals are older
    assert value(configs, values, "dock door person out") == "0"
    assert value(configs, values, "dock gate car out") == "1"
    assert value(configs, values, "dock bay person occupancy") == "1"
    assert value(configs, values, "dock state") == "streaming"
    assert values["edgesight/test/available"] == b"online"
    latest = wait_retained(broker.port, ["edgesight/test/reports/#"], lambda s: len(s) == 2)
    assert sorted(latest) == ["edgesight/test/reports/dock/door", "edgesight/test/reports/dock/gate"]
    assert json.loads(latest["edgesight/test/reports/dock/door"])["id"] == f"report.dock.door.{hour_ago + 900}"
    subscriptions = re.findall(r"^\d+: (edgesight-test) \d (.*)$", (broker.folder / "mosquitto.log").read_text(), re.M)
    assert subscriptions == []  # the uplink listens to nothing over MQTT: nothing there can steer it

    # the console's editor removes the gate line and rules applies it: the uplink reads the site file again
    document = yaml.safe_load(site.site.read_text())
    del document["cameras"]["dock"]["rules"]["gate"]
    site.site.write_text(yaml.safe_dump(document))
    AuditTrail(site.config.site.state_dir, "test", "rules:rules-t").record(
        "rules.reload", str(site.site), result="applied", cameras="dock"
    )
    left = wait_retained(broker.port, ["homeassistant/#"], lambda s: len(configs_of(s)) == len(names) - 2)
    assert {c["name"] for c in configs_of(left).values()} == names - {"dock gate car in", "dock gate car out"}
    gone = wait_retained(broker.port, ["edgesight/test/dock/gate/car/#"], lambda s: not s)
    assert gone == {}  # the removed entities' values are cleared too
    sinks = ["edgesight/test/+/+/count", "edgesight/test/reports/#"]  # and the sink's own retained topics of it
    kept = wait_retained(broker.port, sinks, lambda s: len(s) == 2)
    assert sorted(kept) == ["edgesight/test/dock/door/count", "edgesight/test/reports/dock/door"]

    # stopped: Home Assistant shows the entities unavailable; switched off: they are gone
    site.processes["uplink"].terminate()
    site.processes["uplink"].wait(timeout=scaled(30))
    assert asyncio.run(retained(broker.port, ["edgesight/test/available"])) == {"edgesight/test/available": b"offline"}
    # switched off, and the door line removed while the uplink was down: its count and report go too
    document["uplink"]["mqtt"]["home_assistant"] = False
    del document["cameras"]["dock"]["rules"]["door"]
    site.site.write_text(yaml.safe_dump(document))
    site.start("uplink")
    wait_retained(broker.port, ["homeassistant/#"], lambda s: not s)
    assert wait_retained(broker.port, sinks, lambda s: not s) == {}
    state_file = Path(site.config.site.state_dir) / STATE_FILE
    end = deadline(30)
    while state_file.exists():  # removed once the broker confirmed every deletion
        assert time.monotonic() < end, state_file.read_text()
        time.sleep(0.2)
