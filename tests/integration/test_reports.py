"""Interval reports through real services: rules (restarted by SIGKILL) and the uplink (down for an
interval) to a real Mosquitto, each interval's report exactly once; their metric data in CloudWatch (moto)."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.bus import Publisher
from common.shm import FrameRingWriter, frame_bytes
from contracts import Detections
from services.rules.reports import GRACE_S
from tests.integration.conftest import Mosquitto, Services
from tests.integration.test_uplink import Subscriber, moto_server  # noqa: F401 - moto_server is a fixture
from tests.support import bus_handshake, http_get, wait_until

pytestmark = pytest.mark.slow

INTERVAL_S = 60  # the shortest analytics.report_interval_s
WIDTH, HEIGHT = 320, 240
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-1"}


def site_sections(broker: Mosquitto, moto: str, actions: Path) -> dict[str, Any]:
    """A door (line, with a command action that records what it is given) and a bay (zone) below it."""
    record = {"type": "command", "argv": ["sh", "-c", f"cat >> {actions}; echo >> {actions}"]}
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "min_frames": 2, "actions": [record]},
        "bay": {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 2},
    }
    return {
        "cameras": {"dock": {"url": "rtsp://unused/1", "rules": rules}},
        "tracker": {"min_hits": 2, "max_age_s": 0.5},
        "events": {"jsonl": "events.jsonl"},
        "analytics": {"report_interval_s": INTERVAL_S},
        "uplink": {
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "edgesight"},
            "cloudwatch": {"endpoint_url": moto, "namespace": "EdgeSightReports", "metrics_interval_s": 1},
            "jsonl": {"path": "uplink.jsonl"},
        },
    }


async def walk_across(site: Services, ring: FrameRingWriter) -> None:
    """One person walks down across the door into the bay, and is gone 3 s later."""
    async with Publisher(site.config.bus.publish, "detections-standin") as publisher:
        await bus_handshake(publisher=publisher, bus=site.config.bus)
        start = time.monotonic_ns()
        for step in range(12):
            y = 0.3 + step * 0.05
            ref = ring.write(np.full((HEIGHT, WIDTH, 3), 90, np.uint8), monotonic_ns=start + step * 100_000_000)
            detections = Detections.from_arrays(
                ref, "people", boxes=[[0.45, y - 0.2, 0.55, y]], class_ids=[0], scores=[0.9], labels={0: "person"}
            )
            await publisher.publish("detections", "dock", detections)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        later = ring.write(np.zeros((HEIGHT, WIDTH, 3), np.uint8), monotonic_ns=start + 3_000_000_000)
        empty = Detections.from_arrays(later, "people", boxes=np.zeros((0, 4)), class_ids=[], scores=[])
        await publisher.publish("detections", "dock", empty)


def jsonl(path: Path) -> list[dict[str, Any]]:
    """The whole lines of ``path`` (one being written is left for the next look)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def reports_in(path: Path) -> list[dict[str, Any]]:
    return [event for event in jsonl(path) if event.get("event_type") == "count_report"]


def crossings_in(path: Path) -> int:
    return sum(1 for event in jsonl(path) if event.get("event_type") == "line_cross")


def door_report_covering(path: Path, at_s: float) -> bool:
    """Whether ``path`` holds the door's report of the interval holding ``at_s``."""
    return any(r["rule"] == "door" and r["start_ns"] <= at_s * 1e9 < r["end_ns"] for r in reports_in(path))


def spool_empty(site: Services) -> bool:
    metrics = http_get(f"{site.base('uplink')}/metrics")[1]
    return re.search(r"^edgesight_spool_events 0\.0$", metrics, re.M) is not None


def sleep_until(epoch_s: float) -> None:
    time.sleep(max(0.0, epoch_s - time.time()))


@pytest.mark.timeout(600)  # four 60 s intervals at least: the shortest report_interval_s
def test_each_interval_reaches_mqtt_once_across_an_uplink_outage_and_a_rules_kill(
    tmp_path: Path,
    moto_server: str,  # noqa: F811 - the fixture
    mosquitto: Callable[..., Mosquitto],
    services: Callable[[dict[str, Any]], Services],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    broker = mosquitto()
    subscriber = Subscriber(broker, "edgesight/test/events", tmp_path / "received.jsonl")
    actions = tmp_path / "actions.jsonl"
    site = services(site_sections(broker, moto_server, actions))
    state = Path(site.config.site.state_dir)
    local = state / "events.jsonl"  # rules' own copy of every event, reports included
    site.start("broker")
    site.start("uplink", env=CREDENTIALS)
    site.start("rules")
    ring = FrameRingWriter.create(
        "test", "dock", slots=8, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=site.config.site.shm_dir
    )
    try:
        # 1. a crossing, and its interval's report upstream
        asyncio.run(walk_across(site, ring))
        first_walk = time.time()
        wait_until(lambda: crossings_in(local) == 1, 30, "the first crossing")
        wait_until(lambda: door_report_covering(subscriber.out, first_walk - 1), 2 * INTERVAL_S + 30, "a report")

        # 2. the uplink goes down; a second crossing and the next report wait in rules' outbox. It is stopped
        # once it has recorded what it sent: an uplink stopped between a PUBACK and its record of it sends that
        # event again (at least once, as MQTT's QoS 1), which is not what this test is about
        time.sleep(1.5)  # the spool's gauge is refreshed every second
        wait_until(lambda: spool_empty(site), 30, "the uplink's spool empty")
        site.processes["uplink"].terminate()
        assert site.processes["uplink"].wait(timeout=30) == 0
        asyncio.run(walk_across(site, ring))
        second_walk = time.time()
        wait_until(lambda: crossings_in(local) == 2, 30, "the second crossing")
        wait_until(lambda: door_report_covering(local, second_walk - 1), 2 * INTERVAL_S + 30, "a report made offline")

        # 3. rules is killed, and an interval ends while it is down: made once it is back
        site.processes["rules"].send_signal(signal.SIGKILL)
        site.processes["rules"].wait()
        killed = time.time()
        made_before = {r["id"] for r in reports_in(local)}
        missed_end = (int(killed) // INTERVAL_S + 1) * INTERVAL_S
        sleep_until(missed_end + GRACE_S + 1)
        site.start("rules")
        wait_until(lambda: door_report_covering(local, missed_end - 1), 30, "the missed interval's report")
        missed = [r for r in reports_in(local) if r["end_ns"] == missed_end * 10**9]
        assert {r["rule"] for r in missed} == {"door", "bay"} and not {r["id"] for r in missed} & made_before

        # 4. the uplink is back: every report reaches Mosquitto, once
        site.start("uplink", env=CREDENTIALS)
        waiting = {r["id"] for r in reports_in(local)}
        wait_until(lambda: waiting <= {e["id"] for e in jsonl(subscriber.out)}, 60, "every report on MQTT")
        time.sleep(3)  # a duplicate would come right behind
    finally:
        ring.close()
        subscriber.stop()

    made = reports_in(local)  # by now perhaps one more, made since
    made_ids = [r["id"] for r in made]
    assert len(made_ids) == len(set(made_ids)), "rules made a report twice"
    for rule in ("door", "bay"):  # every interval from the first to the last, none skipped
        starts = sorted(r["start_ns"] // 10**9 for r in made if r["rule"] == rule)
        assert starts == list(range(starts[0], starts[-1] + INTERVAL_S, INTERVAL_S)), (rule, starts)
        assert all(r["id"] == f"report.dock.{rule}.{r['start_ns'] // 10**9}" for r in made if r["rule"] == rule)
    published = collections.Counter(e["id"] for e in jsonl(subscriber.out))
    reports_published = {i: n for i, n in published.items() if i.startswith("report.")}
    assert set(reports_published.values()) == {1}, reports_published  # each exactly once
    assert waiting <= set(reports_published) <= set(made_ids)
    door = sorted((r for r in made if r["rule"] == "door"), key=lambda r: r["start_ns"])
    assert sum(r["attributes"]["person.in"] for r in door) == 2
    assert door[-1]["attributes"]["person.total_in"] == 2 and door[-1]["counts"] == {"person": 0}
    assert any("person.occupancy_max" in r["attributes"] for r in made if r["rule"] == "bay")
    sunk = collections.Counter(r["id"] for r in reports_in(state / "uplink.jsonl"))  # the jsonl sink too
    assert set(sunk.values()) == {1} and waiting <= set(sunk) <= set(made_ids)
    recorded = jsonl(actions)  # the door's action ran for its crossings, never for a report
    assert [e["event_type"] for e in recorded] == ["line_cross", "line_cross"]
    metrics = http_get(f"{site.base('rules')}/metrics")[1]
    assert re.search(r'^edgesight_rule_events_total\{rule="door",type="count_report"\} [1-9]', metrics, re.M)

    # CloudWatch: crossings per label and direction, occupancy per label, at each interval's start
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_server)
    where = [{"Name": "Site", "Value": "test"}, {"Name": "Camera", "Value": "dock"}]
    crossings = [*where, {"Name": "Rule", "Value": "door"}, {"Name": "Label", "Value": "person"}]

    def crossings_sum() -> float:
        datapoints = cloudwatch.get_metric_statistics(
            Namespace="EdgeSightReports",
            MetricName="Crossings",
            Dimensions=[*crossings, {"Name": "Direction", "Value": "in"}],
            StartTime=door[0]["start_ns"] / 1e9 - INTERVAL_S,
            EndTime=time.time() + INTERVAL_S,
            Period=INTERVAL_S,
            Statistics=["Sum"],
        )["Datapoints"]
        return float(sum(point["Sum"] for point in datapoints))

    wait_until(lambda: crossings_sum() == 2, 60, "both crossings in CloudWatch")
    listed = cloudwatch.list_metrics(Namespace="EdgeSightReports")["Metrics"]
    names = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))) for m in listed}
    bay = (("Camera", "dock"), ("Label", "person"), ("Rule", "bay"), ("Site", "test"))
    door_in = (("Camera", "dock"), ("Direction", "in"), ("Label", "person"), ("Rule", "door"), ("Site", "test"))
    assert {("Crossings", door_in), ("OccupancyMean", bay), ("OccupancyMax", bay)} <= names
