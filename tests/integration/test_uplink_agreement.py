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
import pytest
import yaml
import zmq

from common.bus import Endpoint
from contracts import Ack, Event, decode, encode, topic
from tests.integration.conftest import Services
from tests.support import deadline, http_get, scaled

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

    def __init__(self, site: Services) -> None:
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.RCVTIMEO, int(scaled(20) * 1000))
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
def client(site: Services) -> Iterator[Client]:
    made = Client(site)
    try:
        yield made
    finally:
        made.close()


def delivered(site: Services) -> list[str]:
    """Ids in the jsonl sink's file, in order (the uplink's own audit events left out)."""
    path = Path(site.config.site.state_dir) / "events.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line["id"] for line in lines if line.get("event_type") != "audit"]


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
    with client(site) as uplink:
        assert uplink.send(make_event("evt-1")).ids == ["evt-1"]
        assert uplink.send(make_event("evt-1")).ids == ["evt-1"]  # before delivery: acked again
        shutil.rmtree(Path(site.config.site.state_dir) / "events.jsonl")
        wait_delivered(site, "evt-1")
        assert uplink.send(make_event("evt-1", counts={"in": 5})).ids == ["evt-1"]  # after delivery: acked again
        answers = {reason: uplink.send(item, topic_frame) for reason, (item, topic_frame) in refusals.items()}
        forged_answer = uplink.send(forged)
        assert uplink.send(make_event("evt-ext", rule="plates", event_type="plate_read")).ids == ["evt-ext"]
        assert uplink.send(make_event("evt-2")).ids == ["evt-2"]
    for reason, answer in [*answers.items(), ("unknown_camera", forged_answer)]:
        assert answer.ids == [], reason
        assert [r.reason for r in answer.refused] == [reason]
        assert SECRET not in answer.refused[0].detail and "admin" not in answer.refused[0].detail
    assert answers["invalid"].refused[0].id == "bad-body"
    ids = wait_delivered(site, "evt-2")
    time.sleep(1.5)  # anything delivered twice would be there by now
    assert sorted(delivered(site)) == ["evt-1", "evt-2", "evt-ext"], ids
    assert metric(base, "edgesight_uplink_events_duplicate_total") == 2
    for reason, count in {"wrong_topic": 1, "wrong_site": 1, "unknown_camera": 2, "unknown_rule": 1}.items():
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
    with client(site) as uplink:
        assert uplink.send(make_event("evt-fence", rule="fence")).ids == ["evt-fence"]
        assert uplink.send(make_event("evt-1")).ids == ["evt-1"]
    wait_delivered(site, "evt-1")
    end = deadline(30)  # its delivery recorded too: a stop between the write and the record sends it again
    while metric(base, "edgesight_spool_events ") != 0:
        assert time.monotonic() < end, site.log("uplink")[-3000:]
        time.sleep(0.2)
    site.processes["uplink"].terminate()
    assert site.processes["uplink"].wait(timeout=30) == 0
    site.start("uplink")
    with client(site) as uplink:
        assert uplink.send(make_event("evt-1")).ids == ["evt-1"]  # remembered across the restart
        assert uplink.send(make_event("evt-fence", rule="fence")).ids == ["evt-fence"]
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
