"""Home Assistant discovery (issue #27): the configs a site announces validate against Home Assistant's
MQTT sensor schema, values follow the events without stepping back, and what the site file no longer
has is deleted. Publishing to a real broker is tests/integration/test_home_assistant.py."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from common.config import SiteConfig, parse_config
from common.errors import ConfigError
from contracts import CameraStatus, Event, TrackedObject
from services.uplink.home_assistant import Availability, Discovery, EntityKey
from services.uplink.home_assistant_feed import STATE_FILE, HomeAssistantFeed, retained_topic
from tests.home_assistant_schema import config_problems, discovery_topic_problems, valid_subscribe_topic

RULES: dict[str, Any] = {
    "door": {"type": "line", "line": [[0, 0.5], [1, 0.5]], "classes": ["person", "traffic light"]},
    "gate": {"type": "line", "line": [[0.5, 0], [0.5, 1]]},  # no classes: labels as events name them
    "bay": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["person"]},
    "lobby": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]]},
    "stay": {"type": "dwell", "zone": "bay", "seconds": 5},
}


def site(tmp_path: Path, rules: dict[str, Any] | None = None, **mqtt: Any) -> SiteConfig:
    document = {
        "site": {"name": "hq.east", "state_dir": str(tmp_path / "state")},
        "cameras": {
            "dock": {"url": "rtsp://h/1", "rules": RULES if rules is None else rules},
            "yard": {"url": "rtsp://h/2"},
            "spare": {"url": "rtsp://h/3", "enabled": False},
        },
        "uplink": {"mqtt": {"host": "127.0.0.1", "home_assistant": True, **mqtt}},
    }
    (tmp_path / "state").mkdir(exist_ok=True)
    config: SiteConfig = parse_config(json.dumps(document))
    return config


def feed_of(config: SiteConfig) -> HomeAssistantFeed:
    availability = Availability("edgesight/hq.east/available", "online", "offline")
    feed = HomeAssistantFeed.for_site(config, "edgesight/hq.east", availability)
    assert feed is not None
    return feed


def configs(feed: HomeAssistantFeed) -> dict[str, dict[str, Any]]:
    """The retained configs the feed wants published, by topic (deletions left out)."""
    return {
        topic: json.loads(payload) for topic, payload in feed.wanted.items() if topic.endswith("/config") and payload
    }


def event(kind: str, rule: str, label: str, counts: dict[str, int], ts_ns: int, **fields: Any) -> Event:
    box = (0.1, 0.1, 0.2, 0.3)
    return Event(
        id=f"{rule}-{ts_ns}",
        event_type=kind,
        site="hq.east",
        camera="dock",
        rule=rule,
        ts_ns=ts_ns,
        object=TrackedObject(track_id=1, label=label, score=0.9, box=box),
        counts=counts,
        **fields,
    )


def test_every_config_the_site_announces_validates_against_home_assistants_sensor_schema(tmp_path: Path) -> None:
    feed = feed_of(site(tmp_path))
    announced = configs(feed)
    keys = {(c["name"]) for c in announced.values()}
    assert keys == {
        "dock door person in", "dock door person out", "dock door traffic light in", "dock door traffic light out",
        "dock bay person occupancy", "dock state", "yard state",
    }  # fmt: skip  # no entity for the disabled camera, the dwell rule, or rules without classes (yet)
    for topic, config in announced.items():
        assert discovery_topic_problems(topic) == []
        assert config_problems(config) == [], topic
        assert valid_subscribe_topic(config["state_topic"]) and not set("+#") & set(config["state_topic"])
        assert config["availability"] == [
            {"topic": "edgesight/hq.east/available", "payload_available": "online", "payload_not_available": "offline"}
        ]
        assert config["device"]["identifiers"] == ["edgesight_hq_east"]
        assert config["device"]["manufacturer"] == "EdgeSight" and config["device"]["sw_version"]
    by_name = {c["name"]: c for c in announced.values()}
    assert by_name["dock door person in"]["state_class"] == "total_increasing"
    assert by_name["dock bay person occupancy"]["state_class"] == "measurement"
    assert by_name["dock state"]["device_class"] == "enum" and "streaming" in by_name["dock state"]["options"]
    assert by_name["dock door traffic light in"]["state_topic"] == "edgesight/hq.east/dock/door/traffic light/in"
    unique_ids = [c["unique_id"] for c in announced.values()]
    assert len(set(unique_ids)) == len(unique_ids) == len(announced)


def test_unique_ids_and_topics_are_stable_and_apart_for_names_that_slug_alike() -> None:
    discovery = Discovery("homeassistant", "hq", "edgesight/hq", Availability("a", "online", "offline"), "1")
    dotted, underscored = EntityKey("in", "dock", "a.b", "person"), EntityKey("in", "dock", "a_b", "person")
    assert discovery.config_topic(dotted) != discovery.config_topic(underscored)
    assert discovery.config(dotted)["unique_id"] != discovery.config(underscored)["unique_id"]
    again = Discovery("homeassistant", "hq", "edgesight/hq", Availability("a", "online", "offline"), "2")
    assert again.config_topic(dotted) == discovery.config_topic(dotted)  # a new version keeps the entity
    assert again.config(dotted)["unique_id"] == discovery.config(dotted)["unique_id"]


BROKEN: list[tuple[str, dict[str, Any], str]] = [
    ("no state topic", {"name": "x"}, "state_topic: required"),
    ("unknown key", {"state_topic": "a/b", "stat_class": "measurement"}, "not a key"),
    ("abbreviation", {"state_topic": "a/b", "uniq_id": "x"}, "abbreviation"),
    ("object_id", {"state_topic": "a/b", "object_id": "x"}, "not a key"),
    ("bad state class", {"state_topic": "a/b", "state_class": "increasing"}, "invalid value"),
    ("wildcard mid-topic", {"state_topic": "a/#/b"}, "invalid value"),
    ("both availabilities", {"state_topic": "a", "availability_topic": "b", "availability": [{"topic": "b"}]},
     "exclude"),
    ("availability without topic", {"state_topic": "a", "availability": [{"payload_available": "up"}]}, "required"),
    ("device without ids", {"state_topic": "a", "device": {"name": "x"}}, "identifiers or connections"),
    ("options with unit", {"state_topic": "a", "device_class": "enum", "options": ["a"], "unit_of_measurement": "x"},
     "not with"),
    ("config category", {"state_topic": "a", "entity_category": "config"}, "invalid value"),
    ("entity id of another domain", {"state_topic": "a", "default_entity_id": "light.x"}, "invalid value"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "config", "problem"), BROKEN, ids=[b[0] for b in BROKEN])
def test_the_schema_refuses_what_home_assistant_would(why: str, config: dict[str, Any], problem: str) -> None:
    problems = config_problems(config)
    assert any(problem in p for p in problems), (why, problems)


def test_values_follow_events_and_never_step_back(tmp_path: Path) -> None:
    feed = feed_of(site(tmp_path))
    discovery = feed.discovery
    door_in = discovery.state_topic(EntityKey("in", "dock", "door", "person"))
    now = time.time_ns()
    for index in range(1, 6):
        feed.observe(event("line_cross", "door", "person", {"in": index, "out": 2}, now + index))
    assert feed.wanted[door_in] == b"5"
    feed.observe(event("line_cross", "door", "person", {"in": 3, "out": 2}, now + 2))  # a resend, older
    assert feed.wanted[door_in] == b"5"
    feed.observe(event("line_cross", "door", "bicycle", {"in": 1, "out": 0}, now + 9))  # not among its classes
    assert not any("bicycle" in topic for topic in feed.wanted)
    feed.observe(event("line_cross", "gate", "car", {"in": 0, "out": 4}, now + 10))  # a rule without classes
    gate_out = discovery.state_topic(EntityKey("out", "dock", "gate", "car"))
    assert feed.wanted[gate_out] == b"4"
    assert {"dock gate car in", "dock gate car out"} <= {c["name"] for c in configs(feed).values()}

    bay = discovery.state_topic(EntityKey("occupancy", "dock", "bay", "person"))
    feed.observe(event("zone_enter", "bay", "person", {"person": 2}, now + 11))
    assert feed.wanted[bay] == b"2"
    feed.observe(event("zone_exit", "bay", "person", {}, now + 12))  # the last one left: the label is 0
    assert feed.wanted[bay] == b"0"
    feed.observe(event("zone_enter", "lobby", "dog", {"dog": 1, "cat": 1}, now + 13))
    assert feed.wanted[discovery.state_topic(EntityKey("occupancy", "dock", "lobby", "cat"))] == b"1"

    status = CameraStatus(camera="dock", state="stalled", instance="i", ts_ns=now, since_ns=now)
    feed.camera(status)
    assert feed.wanted["edgesight/hq.east/dock/state"] == b"stalled"
    feed.camera(CameraStatus(camera="nowhere", state="streaming", instance="i", ts_ns=now, since_ns=now))
    assert "edgesight/hq.east/nowhere/state" not in feed.wanted  # not a camera of the site file


def test_a_count_report_gives_totals_as_of_its_intervals_end(tmp_path: Path) -> None:
    feed = feed_of(site(tmp_path))
    now = time.time_ns()
    feed.observe(event("line_cross", "door", "traffic light", {"in": 7, "out": 1}, now))
    report = Event(
        id="report.dock.door.1",
        event_type="count_report",
        site="hq.east",
        camera="dock",
        rule="door",
        ts_ns=now + 10,
        start_ns=now - 900 * 10**9,
        end_ns=now - 1,  # the interval ended before that crossing: its totals are older
        counts={"traffic light": 3},
        attributes={"kind": "line", "interval_s": 900, "traffic_light.total_in": 6, "traffic_light.total_out": 1,
                    "person.total_in": 4, "person.total_out": 0},
    )  # fmt: skip
    feed.observe(report)
    discovery = feed.discovery
    assert feed.wanted[discovery.state_topic(EntityKey("in", "dock", "door", "traffic light"))] == b"7"
    assert feed.wanted[discovery.state_topic(EntityKey("in", "dock", "door", "person"))] == b"4"
    values = [topic for topic in feed.wanted if topic.startswith("edgesight/")]
    assert not any("traffic_light" in topic for topic in values)  # the attribute's name, mapped back


def test_what_the_site_file_no_longer_has_is_deleted_at_the_next_start(tmp_path: Path) -> None:
    first = feed_of(site(tmp_path))
    first.observe(event("line_cross", "gate", "car", {"in": 1, "out": 0}, time.time_ns()))
    gate_topics = [t for t, c in configs(first).items() if c["name"].startswith("dock gate car")]
    door_topics = [t for t, c in configs(first).items() if c["name"].startswith("dock door")]
    assert len(gate_topics) == 2 and len(door_topics) == 4
    assert (tmp_path / "state" / STATE_FILE).exists()

    kept = {name: rule for name, rule in RULES.items() if name != "door"}
    second = feed_of(site(tmp_path, kept))  # a restart with the door line removed
    for topic in door_topics:
        assert second.wanted[topic] == b"", topic  # an empty retained config: gone from Home Assistant
    assert second.wanted["edgesight/hq.east/dock/door/person/in"] == b""  # and its value
    for topic in gate_topics:  # a label seen in an event is remembered across the restart
        assert json.loads(second.wanted[topic])["name"].startswith("dock gate car")

    third = feed_of(site(tmp_path, kept, home_assistant_prefix="ha"))  # a new prefix: moved, not doubled
    assert all(third.wanted[topic] == b"" for topic in gate_topics)
    assert {c["name"] for t, c in configs(third).items() if t.startswith("ha/")} >= {"dock gate car in"}


def test_switched_off_it_deletes_everything_it_announced(tmp_path: Path) -> None:
    announced = list(configs(feed_of(site(tmp_path))))
    off = site(tmp_path, home_assistant=False)
    feed = feed_of(off)
    assert not feed.enabled
    assert all(feed.wanted[topic] == b"" for topic in announced)
    assert configs(feed) == {}
    feed.observe(event("line_cross", "door", "person", {"in": 1, "out": 0}, time.time_ns()))
    assert configs(feed) == {}
    asyncio.run(feed.publish(Broker(), qos=1))
    assert not (tmp_path / "state" / STATE_FILE).exists()  # every deletion confirmed: nothing left to remember
    again = feed_of(off)
    assert again.pending() == [] and not (tmp_path / "state" / STATE_FILE).exists()  # nothing left to do


def test_a_state_file_edited_by_hand_is_survived(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = site(tmp_path)
    (tmp_path / "state" / STATE_FILE).write_text('{"announced": {"homeassistant/x": ["exec", "a", "b", "c"]}}')
    feed = feed_of(config)
    assert "homeassistant/x" not in feed.wanted
    assert "Home Assistant state unreadable" in caplog.text
    assert len(configs(feed)) == 7


def test_the_discovery_prefix_is_a_topic_and_it_is_off_by_default(tmp_path: Path) -> None:
    plain = parse_config(json.dumps({"site": {"name": "s"}, "uplink": {"mqtt": {"host": "h"}}}))
    assert plain.uplink.mqtt.home_assistant is False
    assert plain.uplink.mqtt.home_assistant_prefix == "homeassistant"
    with pytest.raises(ConfigError, match="home_assistant_prefix"):
        site(tmp_path, home_assistant_prefix="home/#")


class Broker:
    """A client as aiomqtt's: each publish confirmed, retained ones kept; paho's refusal of a wildcard topic."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, timeout: float) -> None:
        if any(c in topic for c in "+#"):
            raise ValueError("Publish topic cannot contain wildcards.")
        self.sent.append((topic, payload))
        if retain:
            self.retained[topic] = payload
            if not payload:
                del self.retained[topic]


COUNT, REPORT = "edgesight/hq.east/dock/door/count", "edgesight/hq.east/reports/dock/door"


def sink_retains(feed: HomeAssistantFeed, broker: Broker, what: str, rule: str) -> None:
    """What the MQTT sink does for a line_cross (``count``) or a count_report (``report``) of ``rule``."""
    assert what in ("count", "report")
    feed.track(what, "dock", rule)  # type: ignore[arg-type]
    broker.retained[retained_topic("edgesight/hq.east", what, "dock", rule)] = b"{}"  # type: ignore[arg-type]


def saved(tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((tmp_path / "state" / STATE_FILE).read_text())
    return document


@pytest.mark.parametrize("home_assistant", [True, False])
def test_the_retained_count_and_report_of_a_rule_gone_are_cleared_at_the_next_start(
    tmp_path: Path, home_assistant: bool
) -> None:
    broker = Broker()
    first = feed_of(site(tmp_path, home_assistant=home_assistant))
    for what, rule in [("count", "door"), ("report", "door"), ("count", "gate"), ("report", "bay")]:
        sink_retains(first, broker, what, rule)
    assert saved(tmp_path)["retained"][COUNT] == ["count", "dock", "door"]  # on disk before it is published
    assert not {t for t, _ in first.pending() if t.endswith("/count") or "/reports/" in t}  # the rules are there
    asyncio.run(first.publish(broker, qos=1))

    renamed = {("entry" if name == "door" else name): rule for name, rule in RULES.items()}
    renamed["gate"] = {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]]}  # a line no more: its count goes
    second = feed_of(site(tmp_path, renamed, home_assistant=home_assistant))  # a restart
    pending = dict(second.pending())
    assert pending[COUNT] == pending[REPORT] == pending["edgesight/hq.east/dock/gate/count"] == b""
    assert "edgesight/hq.east/reports/dock/bay" not in pending  # its rule is still there
    asyncio.run(second.publish(broker, qos=1))
    sinks = {t for t in broker.retained if t.endswith("/count") or "/reports/" in t}
    assert sinks == {"edgesight/hq.east/reports/dock/bay"}
    assert list(saved(tmp_path)["retained"]) == ["edgesight/hq.east/reports/dock/bay"]  # the rest forgotten
    third = feed_of(site(tmp_path, renamed, home_assistant=home_assistant))
    assert not {t for t, _ in third.pending() if t.endswith("/count") or "/reports/" in t}  # nothing to clear again


def test_a_reload_clears_the_retained_topics_of_a_rule_removed_with_home_assistant_off(tmp_path: Path) -> None:
    broker = Broker()
    feed = feed_of(site(tmp_path, home_assistant=False))
    sink_retains(feed, broker, "count", "door")
    sink_retains(feed, broker, "report", "door")
    assert feed.pending() == []
    kept = {name: rule for name, rule in RULES.items() if name != "door"}
    feed.apply_site(site(tmp_path, kept, home_assistant=False).cameras)  # what reload_site does
    assert feed.changed.is_set() and dict(feed.pending()) == {COUNT: b"", REPORT: b""}
    asyncio.run(feed.publish(broker, qos=1))
    assert broker.retained == {}
    assert not (tmp_path / "state" / STATE_FILE).exists()  # off, and nothing left to clear


def test_a_value_retained_again_wins_over_a_deletion_not_yet_sent(tmp_path: Path) -> None:
    broker = Broker()
    feed = feed_of(site(tmp_path, home_assistant=False))
    sink_retains(feed, broker, "count", "door")
    kept = {name: rule for name, rule in RULES.items() if name != "door"}
    feed.apply_site(site(tmp_path, kept).cameras)
    assert dict(feed.pending()) == {COUNT: b""}
    feed.apply_site(site(tmp_path).cameras)  # the door line back before the deletion went out
    sink_retains(feed, broker, "count", "door")
    assert feed.pending() == []
    asyncio.run(feed.publish(broker, qos=1))
    assert broker.retained == {COUNT: b"{}"} and COUNT in saved(tmp_path)["retained"]


def test_a_state_file_of_an_older_version_clears_the_count_and_report_topics_of_its_rules(tmp_path: Path) -> None:
    feed_of(site(tmp_path))
    document = saved(tmp_path)
    del document["retained"]  # as an older version wrote it
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(document))
    kept = {name: rule for name, rule in RULES.items() if name not in ("door", "bay", "stay")}
    pending = dict(feed_of(site(tmp_path, kept)).pending())
    assert pending[COUNT] == pending[REPORT] == pending["edgesight/hq.east/reports/dock/bay"] == b""
    assert "edgesight/hq.east/dock/bay/count" not in pending  # a zone has no count topic
    assert saved(tmp_path)["announced"]  # the format keeps its ``announced``: an older version reads it still


def test_a_hand_edited_retained_section_keeps_what_was_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed_of(site(tmp_path))
    document = saved(tmp_path) | {"retained": {COUNT: ["counts", "dock", "door"]}}
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps(document))
    kept = {name: rule for name, rule in RULES.items() if name != "door"}
    feed = feed_of(site(tmp_path, kept))
    assert "retained topics unreadable" in caplog.text
    assert COUNT not in feed.wanted
    assert sum(1 for topic, payload in feed.pending() if topic.endswith("/config") and not payload) == 4


def test_the_camera_state_expires_unless_ingest_keeps_repeating_it(tmp_path: Path) -> None:
    feed = feed_of(site(tmp_path))
    (camera,) = [c for c in configs(feed).values() if c["name"] == "dock state"]
    assert camera["expire_after"] == 60 and config_problems(camera) == []
    assert all(("expire_after" in c) == c["name"].endswith(" state") for c in configs(feed).values())
    broker = Broker()
    asyncio.run(feed.publish(broker, qos=1))
    now = time.time_ns()
    for index in range(2):  # the same state twice: sent twice, so that Home Assistant's timer starts over
        feed.camera(CameraStatus(camera="dock", state="streaming", instance="i", ts_ns=now + index, since_ns=now))
        asyncio.run(feed.publish(broker, qos=1))
    assert broker.sent.count(("edgesight/hq.east/dock/state", b"streaming")) == 2
    feed.camera(CameraStatus(camera="dock", state="stalled", instance="i", ts_ns=now - 1, since_ns=now))  # older
    assert feed.pending() == []


def test_a_label_no_topic_can_carry_has_no_entity_and_blocks_nothing(tmp_path: Path) -> None:
    feed = feed_of(site(tmp_path))
    feed.observe(event("line_cross", "gate", "c++", {"in": 1, "out": 0}, time.time_ns()))
    assert not any("c++" in c["name"] for c in configs(feed).values())
    feed.wanted["edgesight/hq.east/dock/gate/c++/in"] = b"1"  # as an older version may have left it
    broker = Broker()
    asyncio.run(feed.publish(broker, qos=1))  # refused by paho: dropped, not retried forever
    assert feed.pending() == [] and len(broker.sent) == len(configs(feed))  # the rest went out
