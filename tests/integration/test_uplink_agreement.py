"""The uplink as a process, sent to as an integrator's client would (#31): every event is answered, an
Ack or a refusal with its reason; what disagrees with its topic or the site file is refused; an id is
stored and delivered once, however often it is sent, across a restart too."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
import yaml
import zmq
import zmq.auth

from common.bus import Endpoint, security
from common.config import load_config
from contracts import Ack, Event, Snapshot, decode, encode, topic
from tests.conftest import free_port
from tests.integration.conftest import Services
from tests.support import curve_bus, deadline, http_get, scaled

pytestmark = pytest.mark.slow

SECRET = "hunter2-in-the-url"
RULES = {
    "door": {"type": "line", "line": [[0, 0.5], [1, 0.5]]},
    "bay": {"type": "presence"},
    "plates": {"type": "external"},  # an integrator's own events
}
SITE = {
    "cameras": {"dock": {"url": f"rtsp://admin:{SECRET}@10.0.0.5/1", "rules": RULES}},
    "uplink": {"jsonl": {"path": "events.jsonl"}},
}


def make_event(name: str, **fields: Any) -> Event:
    values: dict[str, Any] = {"event_type": "line_cross", "site": "test", "camera": "dock", "rule": "door"}
    return Event(id=name, ts_ns=time.time_ns(), **{**values, **fields})


class Client:
    """A DEALER speaking the wire format by hand; every message sent waits for its one answer."""

    def __init__(self, site: Services, key: str | None = None) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.RCVTIMEO, int(scaled(20) * 1000))
        curve = site.config.bus.curve
        if key is not None and curve is not None:  # a Curve client with the key pair named ``key``
            self.socket.curve_serverkey, _ = zmq.auth.load_certificate(curve.server_key)
            pair = zmq.auth.load_certificate(curve.client_key.replace("{service}", key))
            self.socket.curve_publickey, self.socket.curve_secretkey = pair
        self.socket.connect(Endpoint.parse(site.config.bus.events.send).address)

    def send(self, item: Event | bytes, topic_frame: bytes | None = None) -> Ack:
        if isinstance(item, Event):
            topic_frame = topic("events", item.camera) if topic_frame is None else topic_frame
            item = encode(item)
        self.socket.send_multipart([topic_frame or topic("events", "dock"), item])
        frames = self.socket.recv_multipart()
        assert len(frames) == 2 and frames[0] == b"acks/uplink/", frames
        return decode(frames[1], Ack)

    def close(self) -> None:
        self.socket.close(linger=0)


@contextmanager
def client(site: Services, key: str | None = None) -> Iterator[Client]:
    made = Client(site, key)
    try:
        yield made
    finally:
        made.close()


def delivered_events(site: Services) -> list[dict[str, Any]]:
    """The jsonl sink's lines, in order (the uplink's own audit events left out)."""
    path = Path(site.config.site.state_dir) / "events.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("event_type") != "audit"]


def delivered(site: Services) -> list[str]:
    """Ids in the jsonl sink's file, in order (the uplink's own audit events left out)."""
    return [line["id"] for line in delivered_events(site)]


def wait_delivered(site: Services, event_id: str) -> list[str]:
    end = deadline(30)
    while event_id not in (ids := delivered(site)):
        assert time.monotonic() < end, f"{event_id} never delivered; log:\n{site.log('uplink')[-3000:]}"
        time.sleep(0.1)
    return ids


def metric(base: str, name: str) -> float:
    _, body = http_get(f"{base}/metrics")
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name))


def test_every_disagreement_is_refused_with_its_reason_and_duplicates_are_stored_once(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    site = services(SITE)
    (Path(site.config.site.state_dir) / "events.jsonl").mkdir(parents=True)  # the sink fails until removed
    base = site.start("uplink")
    refusals = {
        "wrong_topic": (make_event("bad-topic"), topic("events", "gate")),
        "wrong_site": (make_event("bad-site", site="other-site"), None),
        "unknown_camera": (make_event("bad-camera", camera="attic"), None),
        "unknown_rule": (make_event("bad-rule", rule="fence"), None),
        "invalid": (msgpack.packb({"type": "event", "v": 1, "id": "bad-body", "camera": ["dock"]}), None),
    }
    forged = make_event("forged-audit", camera="_site", event_type="audit", rule="config.save")
    first = make_event("evt-1")
    with client(site) as uplink:
        assert uplink.send(first).ids == ["evt-1"]
        assert uplink.send(first).ids == ["evt-1"]  # before delivery: acked again
        shutil.rmtree(Path(site.config.site.state_dir) / "events.jsonl")
        wait_delivered(site, "evt-1")
        assert uplink.send(first).ids == ["evt-1"]  # after delivery: acked again
        conflict = uplink.send(make_event("evt-1", counts={"in": 5}))  # the same id, another event
        answers = {reason: uplink.send(item, topic_frame) for reason, (item, topic_frame) in refusals.items()}
        forged_answer = uplink.send(forged)
        assert uplink.send(make_event("plates:evt-ext", rule="plates", event_type="plate_read")).ids == [
            "plates:evt-ext"
        ]
        assert uplink.send(make_event("evt-2")).ids == ["evt-2"]
    for reason, answer in [*answers.items(), ("unknown_camera", forged_answer), ("conflict", conflict)]:
        assert answer.ids == [], reason
        assert [r.reason for r in answer.refused] == [reason]
        assert SECRET not in answer.refused[0].detail and "admin" not in answer.refused[0].detail
    assert answers["invalid"].refused[0].id == "bad-body"
    ids = wait_delivered(site, "evt-2")
    time.sleep(1.5)  # anything delivered twice would be there by now
    assert sorted(delivered(site)) == ["evt-1", "evt-2", "plates:evt-ext"], ids
    assert metric(base, "edgesight_uplink_events_duplicate_total") == 2
    counts = {"wrong_topic": 1, "wrong_site": 1, "unknown_camera": 2, "unknown_rule": 1, "conflict": 1}
    for reason, count in counts.items():
        assert metric(base, f'edgesight_uplink_events_refused_total{{reason="{reason}"}}') == count
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="invalid"}') == 1
    assert "event refused" in site.log("uplink")


def test_a_rule_added_after_the_start_is_taken_and_a_restart_keeps_the_ids(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    site = services(SITE)
    base = site.start("uplink")
    document = yaml.safe_load(site.site.read_text())
    document["cameras"]["dock"]["rules"]["fence"] = {"type": "presence"}
    site.site.write_text(yaml.safe_dump(document, sort_keys=False))  # as the console's rule editor saves it
    fence, first = make_event("evt-fence", rule="fence", event_type="presence"), make_event("evt-1")
    with client(site) as uplink:
        assert uplink.send(fence).ids == ["evt-fence"]
        assert uplink.send(first).ids == ["evt-1"]
    wait_delivered(site, "evt-1")
    wait_spool_empty(site, base)
    site.processes["uplink"].terminate()
    assert site.processes["uplink"].wait(timeout=30) == 0
    site.start("uplink")
    with client(site) as uplink:
        assert uplink.send(first).ids == ["evt-1"]  # remembered across the restart
        assert uplink.send(fence).ids == ["evt-fence"]
        assert uplink.send(make_event("evt-2")).ids == ["evt-2"]
    wait_delivered(site, "evt-2")
    time.sleep(1.5)
    assert sorted(delivered(site)) == ["evt-1", "evt-2", "evt-fence"]


def test_a_flood_of_refused_bodies_is_answered_and_the_uplink_keeps_serving(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    """An attacker's flood of bodies with ids (invalid, and of made-up cameras): one refusal each, no growth
    of the spool, and a good event still goes through."""
    site = services(SITE)
    base = site.start("uplink")
    with client(site) as uplink:
        for i in range(300):
            bad = msgpack.packb({"type": "event", "v": 1, "id": f"flood-{i}", "ts_ns": -1})
            assert [r.id for r in uplink.send(bad).refused] == [f"flood-{i}"]
            made_up = uplink.send(make_event(f"made-up-{i}", camera=f"cam-{i}"))
            assert [r.reason for r in made_up.refused] == ["unknown_camera"]
        assert uplink.send(make_event("evt-after")).ids == ["evt-after"]
    wait_delivered(site, "evt-after")
    assert delivered(site) == ["evt-after"]
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="invalid"}') == 300
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="unknown_camera"}') == 300


def refused_reasons(answer: Ack) -> list[str]:
    assert answer.ids == [], answer
    return [refusal.reason for refusal in answer.refused]


def wait_spool_empty(site: Services, base: str) -> None:
    end = deadline(30)  # its delivery recorded too: a stop between the write and the record sends it again
    while metric(base, "edgesight_spool_events ") != 0:
        assert time.monotonic() < end, site.log("uplink")[-3000:]
        time.sleep(0.2)


def test_the_same_id_with_another_body_is_refused_as_a_conflict_before_and_after_a_restart(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    site = services(SITE)
    base = site.start("uplink")
    first = make_event("evt-x", counts={"in": 1, "out": 0})
    other = msgspec.structs.replace(first, counts={"in": 7, "out": 0})
    with client(site) as uplink:
        assert uplink.send(first).ids == ["evt-x"]
        answer = uplink.send(other)
        assert refused_reasons(answer) == ["conflict"]
        assert answer.refused[0].id == "evt-x" and "different event" in answer.refused[0].detail
        assert "line_cross" not in answer.refused[0].detail and "door" not in answer.refused[0].detail
        assert uplink.send(encode(first)).ids == ["evt-x"]  # the same bytes again: a duplicate, acked
    wait_delivered(site, "evt-x")
    wait_spool_empty(site, base)
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="conflict"}') == 1
    assert metric(base, "edgesight_uplink_events_duplicate_total") == 1
    site.processes["uplink"].terminate()
    assert site.processes["uplink"].wait(timeout=30) == 0
    base = site.start("uplink")
    with client(site) as uplink:
        assert refused_reasons(uplink.send(other)) == ["conflict"]  # remembered with its digest
        assert uplink.send(first).ids == ["evt-x"]
        assert uplink.send(make_event("evt-2")).ids == ["evt-2"]
    wait_delivered(site, "evt-2")
    time.sleep(1.5)  # anything delivered twice would be there by now
    assert [(e["id"], e.get("counts")) for e in delivered_events(site)] == [
        ("evt-x", {"in": 1, "out": 0}),
        ("evt-2", {}),
    ]
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="conflict"}') == 1


def count_report(counts: dict[str, int]) -> Event:
    """A line rule's count report: its id has a documented, predictable form."""
    return make_event("report.dock.door.1700000000", event_type="count_report", counts=counts)


def test_an_attacker_pre_claiming_a_count_report_id_is_seen_on_ipc(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    """Without Curve nobody is told apart: the forged report, sent first, is delivered; but the real one is
    refused as a conflict (never silently acked as a duplicate), counted, so the refusals alert fires."""
    site = services(SITE)
    base = site.start("uplink")
    with client(site) as attacker, client(site) as rules:
        assert attacker.send(count_report({"in": 1000, "out": 0})).ids == ["report.dock.door.1700000000"]
        assert refused_reasons(rules.send(count_report({"in": 3, "out": 1}))) == ["conflict"]
    wait_delivered(site, "report.dock.door.1700000000")
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="conflict"}') == 1  # the alert's series
    time.sleep(1.0)
    assert [e["counts"] for e in delivered_events(site)] == [{"in": 1000, "out": 0}]


def test_on_curve_only_the_rules_key_speaks_for_the_rules_it_decides(
    services: Callable[[dict[str, Any]], Services], tmp_path: Path
) -> None:
    """On a Curve bus the uplink knows each event's key: another key's events for a line rule (a forged count
    report among them) are refused ``wrong_sender``, so the real report from the rules key is delivered;
    any key's events for an external rule are taken."""
    site = services(SITE)
    keys = tmp_path / "keys"
    security.generate_bus_keys(keys, ["uplink", "rules", "integrator"])
    document = yaml.safe_load(site.site.read_text())
    document["bus"] = curve_bus(keys, (free_port(), free_port(), free_port()))
    site.site.write_text(yaml.safe_dump(document, sort_keys=False))
    site.config = load_config(site.site)
    base = site.start("uplink")
    real = count_report({"in": 3, "out": 1})
    with client(site, "integrator") as integrator, client(site, "rules") as rules:
        assert refused_reasons(integrator.send(count_report({"in": 1000, "out": 0}))) == ["wrong_sender"]
        assert refused_reasons(integrator.send(make_event("int-line"))) == ["wrong_sender"]
        assert integrator.send(make_event("plates:int", rule="plates", event_type="plate_read")).ids == ["plates:int"]
        assert rules.send(real).ids == [real.id]
        assert rules.send(make_event("plates:rules", rule="plates", event_type="plate_read")).ids == ["plates:rules"]
        assert rules.send(make_event("rules-line")).ids == ["rules-line"]
    wait_delivered(site, "rules-line")
    time.sleep(1.0)
    assert sorted(delivered(site)) == sorted(["plates:int", real.id, "plates:rules", "rules-line"])
    assert next(e["counts"] for e in delivered_events(site) if e["id"] == real.id) == {"in": 3, "out": 1}
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="wrong_sender"}') == 2


# --- a second attacker: ids of rules' taken through an external rule; the spool flooded --------------------

RULES_EVENT_ID = "0b4f3a9e-2c1d-5e6f-8a7b-9c0d1e2f3a4b"  # the form of rules' keyed ids, as seen on events/


def on_curve(site: Services, keys: Path) -> None:
    security.generate_bus_keys(keys, ["uplink", "rules", "integrator"])
    document = yaml.safe_load(site.site.read_text())
    document["bus"] = curve_bus(keys, (free_port(), free_port(), free_port()))
    site.site.write_text(yaml.safe_dump(document, sort_keys=False))
    site.config = load_config(site.site)


@pytest.mark.parametrize("bus", ["curve", "ipc"])
def test_no_key_can_take_an_id_of_rules_through_an_external_rule(
    services: Callable[[dict[str, Any]], Services], tmp_path: Path, bus: str
) -> None:
    """The attacker's way round wrong_sender: an event of an external rule (any key may send those) under an
    id rules will use: a count report's (predictable) or a keyed one seen on ``events/`` before the uplink
    stored it. Refused ``invalid``, so rules' real events are acked and delivered, not refused as conflicts."""
    site = services(SITE)
    if bus == "curve":
        on_curve(site, tmp_path / "keys")
    base = site.start("uplink")
    real_report, real_event = count_report({"in": 3, "out": 1}), make_event(RULES_EVENT_ID)
    key = "integrator" if bus == "curve" else None
    with client(site, key) as integrator, client(site, "rules" if bus == "curve" else None) as rules:
        for taken in (real_report.id, RULES_EVENT_ID):
            forged = make_event(taken, rule="plates", event_type="count_report", counts={"in": 1000, "out": 0})
            answer = integrator.send(forged)
            assert refused_reasons(answer) == ["invalid"]
            assert "'plates:'" in answer.refused[0].detail
        own = make_event("plates:cam1-0001", rule="plates", event_type="plate_read")
        assert integrator.send(own).ids == [own.id]  # an id of its own is taken
        assert rules.send(real_report).ids == [real_report.id]
        assert rules.send(real_event).ids == [RULES_EVENT_ID]
    wait_delivered(site, RULES_EVENT_ID)
    time.sleep(1.0)
    assert sorted(delivered(site)) == sorted([own.id, real_report.id, RULES_EVENT_ID])
    assert next(e["counts"] for e in delivered_events(site) if e["id"] == real_report.id) == {"in": 3, "out": 1}
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="invalid"}') == 2
    assert metric(base, 'edgesight_uplink_events_refused_total{reason="conflict"}') == 0


def test_a_flood_of_large_external_events_drops_them_first_and_never_rules_events(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    """A sink is down and ``spool.max_mb: 1``: rules' events acked first survive a flood of large external
    events (the external ones go first, counted as ``what="external_event"``); once the sink is back, every
    one of rules' events is delivered."""
    rules = {**RULES, "plates": {"type": "external", "snapshot": True}}
    site = services(
        {
            **SITE,
            "cameras": {"dock": {**SITE["cameras"]["dock"], "rules": rules}},
            "uplink": {"jsonl": {"path": "events.jsonl"}, "spool": {"max_mb": 1}},
        }
    )
    sink = Path(site.config.site.state_dir) / "events.jsonl"
    sink.mkdir(parents=True)  # the sink fails until removed
    base = site.start("uplink")
    ours = [make_event(f"evt-{i}", attributes={"pad": "x" * 500}) for i in range(30)]
    image = Snapshot(width=64, height=64, data=b"\xff\xd8" + bytes(150_000))
    with client(site) as rules_client, client(site) as flooder:
        for item in ours:
            assert rules_client.send(item).ids == [item.id]
        for i in range(40):  # 6 MB into a 1 MB spool
            flood = make_event(f"plates:flood-{i}", rule="plates", event_type="plate_read", snapshot=image)
            assert flooder.send(flood).ids == [flood.id]
    assert metric(base, 'edgesight_sink_dropped_total{sink="spool",what="external_event"}') >= 30
    assert metric(base, 'edgesight_sink_dropped_total{sink="spool",what="event"}') == 0
    assert metric(base, 'edgesight_sink_dropped_total{sink="spool",what="snapshot"}') == 0
    shutil.rmtree(sink)
    wait_delivered(site, "evt-29")
    time.sleep(1.5)
    ids = delivered(site)
    assert ids[:30] == [item.id for item in ours], ids
    assert 0 < len(ids) - 30 <= 10 and all(i.startswith("plates:flood-") for i in ids[30:])
