"""The uplink's own checks (#31), without a process: the spool is idempotent by event id (remembered,
bounded, across restarts), and events must agree with their topic and the site file (``SiteNames``)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest
from prometheus_client import REGISTRY

from common.bus import Delivery
from common.config import SiteConfig, load_config, parse_config
from common.errors import ConfigError
from contracts import Event, Refusal, Snapshot, decode
from services.uplink import spool as spool_module
from services.uplink.agreement import REREAD_S, SiteNames
from services.uplink.spool import REMEMBER_S, Spool, digest


def event(i: int | str, **fields: Any) -> Event:
    values: dict[str, Any] = {"event_type": "presence", "site": "yard", "camera": "dock", "rule": "bay", "ts_ns": 1}
    return Event(id=i if isinstance(i, str) else f"evt-{i}", **{**values, **fields})


def add(spool: Spool, *events: Event) -> int:
    return spool.add(list(events), {e.id: ["jsonl"] for e in events})


def deliver_all(spool: Spool) -> list[str]:
    items = spool.pending("jsonl", 1000)
    spool.done("jsonl", [item.seq for item in items])
    return [item.event.id for item in items]


# --- the spool: idempotent by id ---------------------------------------------------------------------


def test_the_same_id_is_stored_and_delivered_once_before_and_after_delivery(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    assert add(spool, event(1), event(1)) == 1  # twice in one batch
    assert add(spool, event(1)) == 0  # again while spooled
    assert deliver_all(spool) == ["evt-1"]
    assert add(spool, event(1, counts={"in": 9})) == 0  # again once delivered, another body: a conflict, not stored
    assert deliver_all(spool) == []
    spool.close()
    again = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)  # a restart remembers
    assert add(again, event(1)) == 0
    assert deliver_all(again) == []
    assert add(again, event(2)) == 1


def test_an_id_is_forgotten_after_24_hours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    add(spool, event(1))
    deliver_all(spool)
    later = time.time() + REMEMBER_S + 60
    monkeypatch.setattr(spool_module.time, "time", lambda: later)
    assert add(spool, event(2)) == 1  # any add forgets what is past 24 h
    assert add(spool, event(1)) == 1  # so the old id is new again
    assert spool.remembers() == 2


def test_a_flood_of_new_ids_forgets_the_oldest_and_stays_bounded(tmp_path: Path) -> None:
    """An attacker (or a runaway sender) sending fresh ids cannot grow the table past its bound."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    assert spool.remembered == 1000  # max(1000, min(100 000, max_bytes // 2000))
    for start in range(0, 2500, 250):
        add(spool, *(event(i) for i in range(start, start + 250)))
        deliver_all(spool)
        assert spool.remembers() <= spool.remembered * 1.1  # pruned back to the bound once a tenth over
    assert spool.remembers() == 1000
    assert add(spool, event(2499)) == 0  # the newest are remembered
    assert add(spool, event(0)) == 1  # the oldest were forgotten first


def test_a_flood_of_external_ids_never_makes_the_uplink_forget_the_rules_services(tmp_path: Path) -> None:
    """Each class keeps its own bound: external rules' fresh ids push out older external ids only."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    add(spool, event(1))  # the rules service's
    deliver_all(spool)
    for start in range(0, 3000, 250):
        flood = [event(f"plates:{i}", rule="plates") for i in range(start, start + 250)]
        spool.store(flood, {e.id: ["jsonl"] for e in flood}, external=[True] * len(flood))
        deliver_all(spool)
    assert spool.remembers() <= 1 + spool.remembered * 1.1
    assert spool.store([event(1)], {"evt-1": ["jsonl"]}) == ["duplicate"]  # still known: not delivered twice
    assert spool.store([event(1, counts={"in": 9})], {"evt-1": ["jsonl"]}) == ["conflict"]


@pytest.mark.parametrize(("max_bytes", "bound"), [(1 << 20, 1000), (100 << 20, 52428), (10 << 30, 100_000)])
def test_how_many_ids_a_spool_remembers(tmp_path: Path, max_bytes: int, bound: int) -> None:
    assert Spool(tmp_path / "spool.sqlite", max_bytes=max_bytes).remembered == bound


def test_an_event_held_by_an_older_spool_is_a_duplicate_too(tmp_path: Path) -> None:
    """A spool written before ``seen`` existed holds events whose ids were never remembered."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    add(spool, event(1))
    spool.close()
    with sqlite3.connect(tmp_path / "spool.sqlite") as db:
        db.execute("DROP TABLE seen")
    again = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    assert add(again, event(1)) == 0
    assert deliver_all(again) == ["evt-1"]


# --- the same id, another body: a conflict ----------------------------------------------------------


def store(spool: Spool, *events: Event) -> list[str]:
    return list(spool.store(list(events), {e.id: ["jsonl"] for e in events}))


def test_the_same_id_with_another_body_is_a_conflict_never_stored_before_and_after_a_restart(tmp_path: Path) -> None:
    """An attacker who sent an id first keeps it, but cannot make the real event vanish silently: the real one
    is a conflict (refused, so counted and alerted on), never a duplicate (acknowledged and lost)."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    first, other = event(1, counts={"in": 1}), event(1, counts={"in": 99})
    assert store(spool, first, other, first) == ["new", "conflict", "duplicate"]  # within one batch too
    assert store(spool, other) == ["conflict"]  # while spooled
    assert [item.event for item in spool.pending("jsonl")] == [first]
    deliver_all(spool)
    assert store(spool, other, first) == ["conflict", "duplicate"]  # once delivered
    spool.close()
    again = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    assert store(again, other, first, event(2)) == ["conflict", "duplicate", "new"]
    assert deliver_all(again) == ["evt-2"]


def test_the_digest_is_of_the_event_as_decoded_so_key_order_does_not_matter() -> None:
    """A client may put its keys in any order: the same event is the same digest. The snapshot counts (the
    uplink takes the digest before the privacy guard, whose outcome may change with the site file)."""
    fields = {"id": "e", "event_type": "presence", "site": "s", "camera": "c", "rule": "r", "ts_ns": 1}
    forward = decode(msgpack.packb({"type": "event", "v": 1, **fields}), Event)
    backward = decode(msgpack.packb({**dict(reversed(fields.items())), "v": 1, "type": "event"}), Event)
    assert digest(forward) == digest(backward) == digest(Event(**fields))  # type: ignore[arg-type]
    assert digest(forward) != digest(msgspec.structs.replace(forward, ts_ns=2))
    with_image = msgspec.structs.replace(forward, snapshot=Snapshot(width=2, height=2, data=b"\xff\xd8jpeg"))
    assert digest(with_image) != digest(forward)


def test_a_spool_made_before_digests_were_kept_is_migrated_and_its_ids_are_duplicates(tmp_path: Path) -> None:
    """A spool made before digests were kept (``seen`` without ``digest``): opened as is, its ids are
    duplicates whatever the body (nothing to compare with), and ids stored from now on are compared."""
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=1 << 20)
    add(spool, event(1))
    deliver_all(spool)
    spool.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX seen_class")
        db.execute("ALTER TABLE seen DROP COLUMN external")  # as such a spool had it
        db.execute("ALTER TABLE seen DROP COLUMN digest")
    again = Spool(path, max_bytes=1 << 20)
    assert store(again, event(1, counts={"in": 5}), event(2)) == ["duplicate", "new"]
    assert store(again, event(2, counts={"in": 5})) == ["conflict"]
    again.close()
    with sqlite3.connect(path) as db:
        assert {row[1] for row in db.execute("PRAGMA table_info(seen)")} == {"n", "id", "stored", "digest", "external"}


def test_an_id_still_held_is_never_forgotten_so_a_flood_cannot_turn_a_conflict_into_a_duplicate(
    tmp_path: Path,
) -> None:
    """While a sink is down, a flood of fresh ids past the bound forgets nothing still spooled: the id taken
    first is still compared (an event only held, not in ``seen``, would be acknowledged and lost)."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=8 << 20)
    assert store(spool, event("claimed", counts={"in": 1})) == ["new"]
    for start in range(0, 2 * spool.remembered, 500):
        add(spool, *(event(i) for i in range(start, start + 500)))
    assert store(spool, event("claimed", counts={"in": 2})) == ["conflict"]
    while deliver_all(spool):
        pass
    add(spool, event("after"))
    assert spool.remembers() <= spool.remembered  # delivered: forgotten again past the bound


# --- agreement with the topic and the site file ---------------------------------------------------------

SITE = """\
site: {name: yard}
cameras:
  dock:
    url: rtsp://admin:hunter2@10.0.0.5/stream
    rules: {bay: {type: presence}, door: {type: line, line: [[0, 0.5], [1, 0.5]]}}
  gate:
    url: rtsp://10.0.0.6/stream
    rules: {entry: {type: presence}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names_from(tmp_path: Path, text: str = SITE) -> tuple[SiteNames, Path, Clock, list[str]]:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    loads: list[str] = []

    def load(source: str) -> SiteConfig:
        loads.append(source)
        return load_config(source)  # type: ignore[no-any-return]

    clock = Clock()
    return SiteNames(load_config(path), load=load, clock=clock), path, clock, loads


def check(names: SiteNames, item: Event, topic: bytes | None = None, sender: str | None = None) -> Refusal | None:
    delivery = Delivery(item, b"peer", f"events/{item.camera}/".encode() if topic is None else topic, sender)
    return asyncio.run(names.check(delivery))


@pytest.mark.parametrize(
    ("fields", "topic", "reason"),
    [
        ({}, None, None),
        ({"camera": "gate", "rule": "entry"}, None, None),
        ({}, b"events/gate/", "wrong_topic"),
        ({}, b"events/dock", "wrong_topic"),
        ({}, b"detections/dock/", "wrong_topic"),
        ({"site": "elsewhere"}, None, "wrong_site"),
        ({"camera": "attic"}, None, "unknown_camera"),
        ({"camera": "_site", "event_type": "audit"}, None, "unknown_camera"),  # audit events are not forged
        ({"rule": "entry"}, None, "unknown_rule"),  # a rule of another camera
        ({"rule": "gate"}, None, "unknown_rule"),
        ({"rule": "door", "event_type": "line_cross"}, None, None),
        ({"rule": "door", "event_type": "count_report"}, None, None),
        ({"rule": "door", "event_type": "forklift_near_person"}, None, "wrong_event_type"),  # rules' own rule
        ({"event_type": "line_cross"}, None, "wrong_event_type"),  # a presence rule never crosses
        ({"event_type": "audit"}, None, "invalid"),  # on a real camera and rule: still the uplink's own
    ],
)
def test_each_disagreement_has_its_reason(
    tmp_path: Path, fields: dict[str, Any], topic: bytes | None, reason: str | None
) -> None:
    names, *_ = names_from(tmp_path)
    refusal = check(names, event(1, **fields), topic)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert refusal.id == "evt-1" and refusal.detail


def test_a_refusal_echoes_only_what_the_sender_sent(tmp_path: Path) -> None:
    """Nothing of the site file (its site name, other cameras and rules, a password in a URL) leaks."""
    names, *_ = names_from(tmp_path)
    cases = [
        (event(1, site="elsewhere"), None),
        (event(1, camera="attic"), None),
        (event(1, rule="nope"), None),
        (event(1), b"events/" + b"x" * 5000 + b"/"),
    ]
    details = [refusal.detail for item, topic in cases if (refusal := check(names, item, topic)) is not None]
    assert len(details) == 4
    for detail in details:
        assert len(detail) <= 300
        for secret in ("yard", "hunter2", "admin", "gate", "entry", "door", "10.0.0"):
            assert secret not in detail, detail


def test_a_camera_named_like_the_audit_camera_in_the_site_file_still_cannot_forge_audit_events(
    tmp_path: Path,
) -> None:
    text = SITE + "  _site:\n    url: rtsp://10.0.0.7/s\n    rules: {bay: {type: presence}}\n"
    names, _, _, loads = names_from(tmp_path, text)
    refusal = check(names, event(1, camera="_site", event_type="audit"))
    assert refusal is not None and refusal.reason == "unknown_camera"
    assert loads == []  # nothing to read again for: it is never taken


def test_a_rule_added_later_is_taken_after_one_read_and_reads_are_rate_limited(tmp_path: Path) -> None:
    names, path, clock, loads = names_from(tmp_path)
    assert check(names, event(1, rule="fence")) is not None
    assert len(loads) == 1  # the first miss reads at once
    path.write_text(SITE.replace("entry: {type: presence}", "entry: {type: presence}, fence: {type: presence}"))
    clock.now += REREAD_S / 2
    assert check(names, event(2, camera="gate", rule="fence")) is not None  # too soon to read again
    assert len(loads) == 1
    clock.now += REREAD_S
    assert check(names, event(3, camera="gate", rule="fence")) is None
    assert len(loads) == 2


def test_a_flood_of_unknown_names_costs_one_read_per_interval_and_no_memory(tmp_path: Path) -> None:
    names, _, clock, loads = names_from(tmp_path)
    for i in range(2000):
        refusal = check(names, event(i, camera=f"cam-{i}"))
        assert refusal is not None and refusal.reason == "unknown_camera"
        clock.now += 0.01  # 20 s in all
    assert len(loads) <= 20 / REREAD_S + 1
    assert set(names.rules) == {"dock", "gate"} and names.sites == {"yard"}


def test_names_removed_from_the_site_file_are_still_taken(tmp_path: Path) -> None:
    """An event decided just before a reload removed its rule (or camera) is still taken: a union."""
    names, path, clock, _ = names_from(tmp_path)
    path.write_text("site: {name: yard}\ncameras: {dock: {url: 'rtsp://h/1', rules: {hall: {type: presence}}}}\n")
    clock.now += REREAD_S
    assert check(names, event(1, rule="hall")) is None  # read again: hall is known now
    assert check(names, event(2, rule="bay")) is None  # and bay still
    assert check(names, event(3, camera="gate", rule="entry")) is None


def test_a_site_file_broken_mid_edit_keeps_the_names_known(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names, path, _, loads = names_from(tmp_path)
    path.write_text("site: {name: yard\n")
    with caplog.at_level(logging.WARNING):
        refusal = check(names, event(1, rule="fence"))
    assert refusal is not None and refusal.reason == "unknown_rule" and len(loads) == 1
    assert "site file not read again" in caplog.text
    assert check(names, event(2)) is None


def test_an_external_rule_is_a_rule_of_its_camera() -> None:
    config = parse_config(
        "site: {name: yard}\ncameras: {dock: {url: 'rtsp://h/1', rules: {plates: {type: external}}}}\n"
    )
    names = SiteNames(config)
    assert check(names, event("plates:1", rule="plates")) is None
    assert check(names, event("plates:3", rule="plates", event_type="forklift_near_person")) is None  # any type
    assert check(names, event("plates:2", rule="other")) is not None


def test_a_config_not_read_from_a_file_is_never_read_again() -> None:
    names = SiteNames(parse_config("site: {name: yard}\n"))
    calls: list[str] = []

    def load(source: str) -> Any:
        calls.append(source)
        raise ConfigError(["never"])

    names.load = load
    assert check(names, event(1)) is not None and calls == []


# --- who may speak for a rule (Curve: the sender's key name) ---------------------------------------------

SENDERS_SITE = SITE.replace("entry: {type: presence}", "entry: {type: presence}, plates: {type: external}")


@pytest.mark.parametrize(
    ("sender", "fields", "reason"),
    [
        (None, {"rule": "door", "event_type": "count_report"}, None),  # no Curve: nobody is told apart
        ("rules", {"rule": "door", "event_type": "count_report"}, None),
        ("rules", {"id": "plates:1", "camera": "gate", "rule": "plates", "event_type": "plate_read"}, None),
        ("integrator", {"id": "plates:1", "camera": "gate", "rule": "plates", "event_type": "plate_read"}, None),
        ("integrator", {"rule": "door", "event_type": "count_report"}, "wrong_sender"),  # a forged count report
        ("integrator", {"rule": "door", "event_type": "line_cross"}, "wrong_sender"),
        ("integrator", {}, "wrong_sender"),  # a presence rule
        ("uplink", {}, "wrong_sender"),  # another service's key is no more the rules service than any other
        ("integrator", {"rule": "gate"}, "unknown_rule"),  # the names first: what it says of the file is the same
    ],
)
def test_only_the_rules_key_speaks_for_the_rules_it_decides(
    tmp_path: Path, sender: str | None, fields: dict[str, Any], reason: str | None
) -> None:
    names, *_ = names_from(tmp_path, SENDERS_SITE)
    refusal = check(names, event(fields.pop("id", 1), **fields), sender=sender)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None and reason == "wrong_sender":
        assert "integrator" not in refusal.detail and "yard" not in refusal.detail


def test_a_rule_made_external_is_taken_from_any_key_and_one_made_decided_is_not(tmp_path: Path) -> None:
    """A rule's kind is the one it had when the file was last read; a wrong_sender reads the file again first."""
    names, path, clock, _ = names_from(tmp_path, SENDERS_SITE)
    path.write_text(
        SENDERS_SITE.replace("bay: {type: presence}", "bay: {type: external}").replace(
            "plates: {type: external}", "plates: {type: presence}"
        )
    )
    assert check(names, event("bay:1"), sender="integrator") is None  # read again: bay is external now
    clock.now += REREAD_S
    refusal = check(names, event(2, camera="gate", rule="plates"), sender="integrator")
    assert refusal is not None and refusal.reason == "wrong_sender"


# --- an external rule's ids are its own (#31, a second attacker) ------------------------------------------


@pytest.mark.parametrize(
    ("event_id", "sender", "reason"),
    [
        ("plates:cam1-0001", "integrator", None),
        ("plates:1", None, None),  # ipc: nobody is told apart, the ids are all the same
        ("plates:1", "rules", None),
        ("plates:a:b", "integrator", None),  # the part after the colon is the sender's own
        ("0b4f3a9e-2c1d-5e6f-8a7b-9c0d1e2f3a4b", "integrator", "invalid"),  # an id of rules' (seen on events/)
        ("report.gate.plates.1700000000", "integrator", "invalid"),  # a count report's form
        ("report.dock.door.1700000000", None, "invalid"),
        ("0b4f3a9e-2c1d-5e6f-8a7b-9c0d1e2f3a4b", "rules", "invalid"),  # rules never decides an external rule
        ("plates", "integrator", "invalid"),
        ("plate:1", "integrator", "invalid"),  # another rule's prefix
        ("platesx:1", "integrator", "invalid"),
        ("entry:1", "integrator", "invalid"),  # a rule of the rules service: no id of its can be made
        ("Plates:1", "integrator", "invalid"),
    ],
)
def test_an_external_rule_takes_only_ids_that_start_with_its_name_and_a_colon(
    tmp_path: Path, event_id: str, sender: str | None, reason: str | None
) -> None:
    """Any key may send events of an external rule: with its own ids only, so none can take an id the rules
    service will use (a count report's is predictable; its keyed ids are on ``events/`` before the uplink
    stores them) and have rules' real event refused as a ``conflict``."""
    names, *_ = names_from(tmp_path, SENDERS_SITE)
    refusal = check(names, event(event_id, camera="gate", rule="plates", event_type="plate_read"), sender=sender)
    assert (refusal.reason if refusal else None) == reason
    if refusal is not None:
        assert refusal.id == event_id and "'plates:'" in refusal.detail and "colon" in refusal.detail
        assert "yard" not in refusal.detail and "entry" not in refusal.detail


def test_a_rule_made_external_takes_only_its_own_ids_once_the_file_is_read_again(tmp_path: Path) -> None:
    names, path, _, _ = names_from(tmp_path, SENDERS_SITE)
    assert check(names, event("evt-1")) is None  # bay decided by rules: its ids are rules' own
    path.write_text(SENDERS_SITE.replace("bay: {type: presence}", "bay: {type: external}"))
    assert check(names, event("evt-2")) is None  # its kind as last read: nothing missed, nothing read
    assert check(names, event("evt-3", rule="fence")) is not None  # a miss reads the file again
    refusal = check(names, event("evt-4"))
    assert refusal is not None and refusal.reason == "invalid"
    assert check(names, event("bay:2")) is None


# --- on overflow, the events of external rules go first (#31, a second attacker) ---------------------------

EXTERNAL_IMAGE = Snapshot(width=64, height=64, data=b"\xff\xd8" + bytes(120_000))  # a large external event


def dropped(what: str) -> float:
    value = REGISTRY.get_sample_value("edgesight_sink_dropped_total", {"sink": "spool", "what": what})
    return value or 0.0


def store_classes(spool: Spool, *items: tuple[Event, bool]) -> list[str]:
    events = [item for item, _ in items]
    return list(spool.store(events, {e.id: ["jsonl"] for e in events}, external=[flag for _, flag in items]))


def external_event(i: int) -> Event:
    return event(f"plates:{i}", rule="plates", event_type="plate_read", snapshot=EXTERNAL_IMAGE)


def test_a_flood_of_external_events_never_pushes_out_the_rules_services_acknowledged_events(tmp_path: Path) -> None:
    """A sink is down: rules' events acked first, then a sender of external events floods the spool with
    large ones. The external ones go (oldest first, counted), rules' all stay; an external event that would
    cost one of rules' is not stored at all."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    rules = [event(i, snapshot=Snapshot(width=2, height=2, data=b"\xff\xd8" + bytes(1000))) for i in range(50)]
    assert store_classes(spool, *((e, False) for e in rules)) == ["new"] * 50
    before = dropped("external_event"), dropped("event"), dropped("snapshot")
    for i in range(40):  # ~5 MB into a 1 MB spool
        assert store_classes(spool, (external_event(i), True)) == ["new"]
        assert spool.size() <= spool.budget
    held = spool.pending("jsonl", 1000)
    assert [item.event.id for item in held[:50]] == [e.id for e in rules]
    assert all(item.event.snapshot is not None for item in held[:50])  # not even their snapshots
    kept = [item.event.id for item in held[50:]]
    assert kept and kept == [f"plates:{i}" for i in range(40 - len(kept), 40)]  # the newest external ones
    assert dropped("external_event") - before[0] == 40 - len(kept)
    assert (dropped("event"), dropped("snapshot")) == before[1:]
    assert store_classes(spool, (external_event(0), True)) == ["duplicate"]  # dropped, still remembered


def test_an_external_event_that_fits_only_at_rules_expense_is_not_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    rules = [event(i, attributes={"pad": "x" * 1000}) for i in range(1000)]  # fill it with rules' events
    store_classes(spool, *((e, False) for e in rules))
    ids = [item.event.id for item in spool.pending("jsonl", 2000)]
    before = dropped("external_event")
    assert store_classes(spool, (external_event(1), True)) == ["new"]  # acknowledged: dropped on overflow
    assert [item.event.id for item in spool.pending("jsonl", 2000)] == ids
    assert dropped("external_event") == before + 1
    assert spool.size() <= spool.budget


def test_when_only_the_rules_services_events_are_held_the_old_order_holds(tmp_path: Path) -> None:
    """Dead letters, then snapshots, then the oldest events; and a rules' event makes room by dropping
    external events first."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    image = Snapshot(width=2, height=2, data=b"\xff\xd8" + bytes(100_000))
    store_classes(spool, *((event(i, snapshot=image), False) for i in range(3)))
    before = dropped("external_event"), dropped("event"), dropped("snapshot")
    for start in range(3, 800, 100):
        store_classes(spool, *((event(i, attributes={"pad": "x" * 1000}), False) for i in range(start, start + 100)))
    held = spool.pending("jsonl", 2000)
    assert dropped("snapshot") - before[2] == 3  # snapshots first
    lost = int(dropped("event") - before[1])
    assert lost > 0 and dropped("external_event") == before[0]
    assert [item.event.id for item in held] == [f"evt-{i}" for i in range(lost, 803)]  # then the oldest
    assert store_classes(spool, (external_event(1), False), (event("last"), False)) == ["new", "new"]
    store_classes(spool, (external_event(2), True))  # not stored: it would cost one of rules'
    assert dropped("external_event") == before[0] + 1


def test_a_spool_made_before_events_were_told_apart_is_migrated_and_its_events_are_the_rules_services(
    tmp_path: Path,
) -> None:
    """A spool made before events were told apart (``events`` without ``external``): opened as is, what it
    holds is kept before any external event, and the column is there from now on."""
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=1 << 20)
    add(spool, *(event(i) for i in range(5)))
    spool.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX events_external")
        db.execute("ALTER TABLE events DROP COLUMN external")
        assert "external" not in [row[1] for row in db.execute("PRAGMA table_info(events)")]
    again = Spool(path, max_bytes=1 << 20)
    for i in range(20):
        store_classes(again, (external_event(i), True))
    assert [item.event.id for item in again.pending("jsonl", 100)][:5] == [f"evt-{i}" for i in range(5)]
    assert store_classes(again, (event(1), False)) == ["duplicate"]
    again.close()
    with sqlite3.connect(path) as db:
        assert [row[1] for row in db.execute("PRAGMA table_info(events)")][-1] == "external"
        flags = db.execute("SELECT id, external FROM events ORDER BY seq").fetchall()
    assert flags[:5] == [(f"evt-{i}", 0) for i in range(5)] and {flag for _, flag in flags[5:]} == {1}
