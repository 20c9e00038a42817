"""The whole path to a real Mosquitto: file camera -> ingest -> inference -> rules -> uplink -> MQTT,
every event id that rules decided received by a persistent QoS 1 subscriber — plainly, and with
rules SIGKILLed while the uplink is down and the uplink SIGKILLed while it delivers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mosquitto, Services
from tests.integration.test_uplink import Subscriber, wait_for_ids
from tests.support import deadline, http_get, scaled

pytestmark = pytest.mark.slow
ServicesFactory = Callable[[dict[str, Any]], Services]


def pipeline_site(shared_dir: Path, broker: Mosquitto) -> dict[str, Any]:
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.55], [1.0, 0.55]], "classes": ["person"]},
        "hall": {"type": "zone", "polygon": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], "classes": ["person"]},
    }
    camera = {"url": str(shared_dir / "media" / "people.mp4"), "fps": 8, "loop": True, "rules": rules}
    return {
        "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "score_threshold": 0.3}},
        "cameras": {"hall": camera},
        "events": {"jsonl": "events.jsonl"},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "edgesight"}},
    }


def decided(site: Services) -> list[str]:
    """The ids rules wrote to its events.jsonl: every event it decided."""
    path = Path(site.config.site.state_dir) / "events.jsonl"
    return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_decisions(site: Services, count: int, seconds: float = 60) -> None:
    end = deadline(seconds)
    while len(decided(site)) < count:
        assert time.monotonic() < end, f"rules decided only {len(decided(site))} events:\n{site.log('rules')}"
        time.sleep(0.2)


def settled(site: Services, quiet_s: float = 1.5, seconds: float = 60) -> list[str]:
    """The decided ids once no new one has come for ``quiet_s`` (the last frames have drained)."""
    ids, changed = decided(site), time.monotonic()
    end = deadline(seconds)
    while time.monotonic() - changed < scaled(quiet_s):
        assert time.monotonic() < end, "rules kept deciding"
        time.sleep(0.2)
        now = decided(site)
        if len(now) != len(ids):
            ids, changed = now, time.monotonic()
    return ids


def queued(site: Services) -> float:
    _, body = http_get(f"{site.base('rules')}/metrics")
    line = next(line for line in body.splitlines() if line.startswith("edgesight_events_queued "))
    return float(line.split()[1])


def start_pipeline(
    tmp_path: Path, shared_dir: Path, mosquitto: Callable[..., Mosquitto], services: ServicesFactory
) -> tuple[Services, Subscriber]:
    broker = mosquitto()
    subscriber = Subscriber(broker, "edgesight/test/events", tmp_path / "received.jsonl")
    site = services(pipeline_site(shared_dir, broker))
    for name in ("broker", "inference", "rules", "ingest"):
        site.start(name)
    return site, subscriber


def test_every_decided_event_reaches_mqtt(
    tmp_path: Path, shared_dir: Path, mosquitto: Callable[..., Mosquitto], services: ServicesFactory
) -> None:
    site, subscriber = start_pipeline(tmp_path, shared_dir, mosquitto, services)
    try:
        site.start("uplink")
        wait_for_decisions(site, 30)
        site.processes["ingest"].terminate()  # no new decisions: a fixed set to look for
        site.processes["ingest"].wait(10)
        expected = settled(site)
        received = wait_for_ids(subscriber, set(expected), 60)
    finally:
        subscriber.stop()
    assert {"zone_enter", "line_cross"} <= {
        json.loads(line)["event_type"] for line in (Path(site.config.site.state_dir) / "events.jsonl").open()
    }
    assert len(set(received)) == len(set(expected)) == len(expected)


def test_events_decided_while_the_uplink_is_down_survive_sigkill_of_rules_then_uplink(
    tmp_path: Path, shared_dir: Path, mosquitto: Callable[..., Mosquitto], services: ServicesFactory
) -> None:
    """On the old in-memory outbox a SIGKILL of rules at 20 s of an uplink outage lost 54 of 237 events."""
    site, subscriber = start_pipeline(tmp_path, shared_dir, mosquitto, services)
    try:
        wait_for_decisions(site, 25)  # the uplink is down: all of them wait in the outbox
        assert queued(site) >= 20
        site.processes["rules"].kill()
        site.processes["rules"].wait()
        before_kill = decided(site)
        site.start("rules")  # resends what its outbox holds, then goes on deciding
        site.start("uplink")
        wait_for_decisions(site, len(before_kill) + 15)
        site.processes["uplink"].kill()  # while it is delivering
        site.processes["uplink"].wait()
        site.start("uplink")
        site.processes["ingest"].terminate()
        site.processes["ingest"].wait(10)
        expected = settled(site)
        received = wait_for_ids(subscriber, set(expected), 90)
    finally:
        subscriber.stop()
    assert set(before_kill) <= set(received)
    assert len(set(received)) == len(set(expected))
    end = deadline(30)
    while queued(site) != 0:  # every ack came back and emptied the outbox
        assert time.monotonic() < end, queued(site)
        time.sleep(0.2)
