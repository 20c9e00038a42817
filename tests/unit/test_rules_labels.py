"""Labels are bounded in rules, as an attacker on the bus would try it: Detections of
300 made-up labels in a zone must not make a person's zone_enter invalid (its ``counts`` past contracts'
256 entries), and labels made up one after another must not grow what rules keeps (gauges, series, line
counts) for ever."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import REGISTRY

from common.config import load_config
from common.config.rules import LineRule
from contracts import Detections, Event, Scene, decode, encode
from contracts.messages import MAX_MAP_ENTRIES
from services.rules.kinds import LineState
from services.rules.labels import MAX_LABELS_PER_MODEL, OTHER, LabelGate, bounded, bounded_lines
from services.rules.moment import Moment, Observed
from services.rules.outputs import SqliteCountStore
from services.rules.scene import scene_of
from services.rules.service import RulesService
from tests.conftest import write_site
from tests.support import frame_ref

ZONE = {"type": "zone", "polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 1}
JUNK = 300


def _service(tmp_path: Path, camera: str, rules: dict[str, Any]) -> tuple[RulesService, list[Event]]:
    site = write_site(tmp_path, {"cameras": {camera: {"url": "rtsp://h/1", "rules": rules}}})
    service = RulesService(load_config(site))
    delivered: list[Event] = []

    async def deliver(camera: str, event: Event, stored: object = None) -> None:
        decode(encode(event), Event)  # what the uplink would refuse fails here
        delivered.append(event)

    service._deliver = deliver  # type: ignore[method-assign]
    return service, delivered


def _run(service: RulesService, frames: Iterable[Detections]) -> None:
    async def handle_all() -> None:
        for detections in frames:
            await service.handle(detections)

    try:
        asyncio.run(handle_all())
    finally:
        service.outbox.close()
        service.store.close()


def _frame(camera: str, model: str, seq: int, boxes: list[list[float]], labels: list[str]) -> Detections:
    at_ns = seq * 100_000_000
    ref = frame_ref(camera, seq, capture_ns=at_ns, monotonic_ns=at_ns, width=640, height=480)
    ids = list(range(len(labels)))
    array = np.array(boxes, "<f4").reshape(-1, 4)
    return Detections.from_arrays(ref, model, array, ids, [0.9] * len(ids), labels=dict(enumerate(labels)))


def _grid(count: int) -> list[list[float]]:
    """``count`` small boxes apart from each other, all inside ZONE (y 0.55-0.95)."""
    return [
        [0.05 * (n % 19), 0.55 + 0.02 * (n // 19), 0.05 * (n % 19) + 0.03, 0.565 + 0.02 * (n // 19)]
        for n in range(count)
    ]


def _dropped(camera: str) -> float:
    labels = {"camera": camera, "reason": "labels"}
    return REGISTRY.get_sample_value("edgesight_rules_detections_dropped_total", labels) or 0.0


def test_a_person_entering_a_zone_full_of_junk_labels_is_still_an_event(tmp_path: Path) -> None:
    """The attacker's scenario: 300 boxes of 300 labels sit in the zone; a real person walks in."""
    service, delivered = _service(tmp_path, "lab1", {"bay": ZONE})
    junk = [f"junk{n}" for n in range(JUNK)]
    frames = []
    for seq in range(1, 16):
        frames.append(_frame("lab1", "junk", seq, _grid(JUNK), junk))
        y = 0.2 + 0.05 * seq
        frames.append(_frame("lab1", "people", seq, [[0.96, y - 0.1, 0.99, y]], ["person"]))
    before = _dropped("lab1")
    _run(service, frames)
    entered = [e for e in delivered if e.event_type == "zone_enter" and e.object and e.object.label == "person"]
    assert len(entered) == 1  # before #31: dropped as invalid (edgesight_outbox_dropped_total{reason="invalid"})
    counts = entered[0].counts
    assert len(counts) <= MAX_MAP_ENTRIES
    assert counts["person"] == 1  # the object's own label always kept
    assert sum(counts.values()) == MAX_LABELS_PER_MODEL + 1  # the junk model's tracked labels, and the person
    assert _dropped("lab1") - before == (JUNK - MAX_LABELS_PER_MODEL) * 15  # the labels past the bound, per frame
    for event in delivered:
        assert len(event.counts) <= MAX_MAP_ENTRIES
    assert all(len(value) <= 1024 for value in service.health_detail().values())  # contracts' Text


def test_labels_made_up_one_after_another_keep_gauges_and_series_bounded(tmp_path: Path) -> None:
    """Three made-up models, each naming 200 new labels ten at a time: 600 labels pass through the zone."""
    service, _ = _service(tmp_path, "lab2", {"bay": ZONE})
    frames = []
    for seq in range(1, 81):
        for model in ("a", "b", "c"):
            group = (seq - 1) // 4  # ten labels for four frames, then ten others
            frames.append(_frame("lab2", model, seq, _grid(10), [f"{model}{group}-{n}" for n in range(10)]))
    _run(service, frames)
    series = {
        sample.labels["label"]
        for metric in REGISTRY.collect()
        if metric.name == "edgesight_zone_occupancy"
        for sample in metric.samples
        if sample.labels["camera"] == "lab2"
    }
    assert 200 < len(series) <= MAX_MAP_ENTRIES  # before #31: 601 (every label ever seen, and person)
    assert 200 < len(service.series.zone_labels[("lab2", "bay")]) <= MAX_MAP_ENTRIES


def test_a_line_counts_at_most_256_labels_and_the_rest_as_other(tmp_path: Path) -> None:
    store = SqliteCountStore(tmp_path / "rules.sqlite")
    line = LineState("door", LineRule(type="line", line=[(0.0, 0.5), (1.0, 0.5)]), "cam", store)
    wall = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    drafts = []
    for step, y in enumerate((0.3, 0.35, 0.7, 0.75, 0.8)):
        tracks = [Observed(n, f"junk{n}", 0.9, (0.4, y - 0.1, 0.5, y)) for n in range(JUNK)]
        drafts += line.step(Moment(step * 0.1, wall, tracks), {})
    assert len(drafts) == JUNK  # every object still counted once
    stored = store.db.execute("SELECT label, SUM(value) FROM counts GROUP BY label").fetchall()
    assert len(stored) == MAX_MAP_ENTRIES  # before #31: 300, and more with every new label
    assert dict(stored)[OTHER] == JUNK - (MAX_MAP_ENTRIES - 1)
    assert drafts[-1].counts == {"in": JUNK - (MAX_MAP_ENTRIES - 1), "out": 0}  # the count it was added to
    store.close()
    with sqlite3.connect(tmp_path / "rules.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM counts").fetchone()[0] == MAX_MAP_ENTRIES


def test_a_scene_of_a_store_written_before_the_bound_is_valid() -> None:
    """rules.sqlite from before #31 may hold a line with 300 labels; a zone may hold 300 labels."""
    lines = {"door": {f"junk{n}": {"in": n, "out": 1} for n in range(JUNK)}}
    zones = {"bay": {f"junk{n}": 1 for n in range(JUNK)}}
    ref = frame_ref("cam", 1, width=640, height=480)
    detections = Detections.from_arrays(ref, "people", np.zeros((0, 4), "<f4"), [], [], labels={})
    scene = decode(encode(scene_of("cam", detections, [], lines, zones)), Scene)  # before: invalid
    assert len(scene.lines["door"]) == len(scene.zones["bay"]) == MAX_MAP_ENTRIES
    assert sum(c.in_ for c in scene.lines["door"].values()) == sum(range(JUNK))
    assert scene.lines["door"]["junk299"].in_ == 299  # the most counted kept by name
    assert sum(scene.zones["bay"].values()) == JUNK


def test_bounded_keeps_the_objects_label_and_sums_the_rest() -> None:
    counts = {f"junk{n}": 2 for n in range(JUNK)} | {"person": 1, OTHER: 5}
    kept = bounded(counts, keep="person")
    assert len(kept) == MAX_MAP_ENTRIES and kept["person"] == 1
    assert sum(kept.values()) == sum(counts.values())
    assert bounded({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    assert bounded_lines({"a": {"in": 1}}) == {"a": {"in": 1}}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_keeps_named_labels_and_frees_labels_gone_quiet() -> None:
    clock = _Clock()
    gate = LabelGate("gate", hold_s=1.0, reserved={"person"}, clock=clock)
    junk = _frame("gate", "m", 1, _grid(JUNK), [f"junk{n}" for n in range(JUNK)])
    keep = gate.admit(junk, junk.class_ids.to_numpy())
    assert keep is not None and int(keep.sum()) == MAX_LABELS_PER_MODEL
    person = _frame("gate", "m", 2, _grid(1), ["person"])
    assert gate.admit(person, person.class_ids.to_numpy()) is None  # a label a rule names: always tracked
    newcomer = _frame("gate", "m", 3, _grid(1), ["cat"])
    refused = gate.admit(newcomer, newcomer.class_ids.to_numpy())
    assert refused is not None and not refused.any()  # every place taken by labels seen just now
    clock.now = 1.5  # the junk labels not detected for longer than hold_s: the oldest gives its place up
    assert gate.admit(newcomer, newcomer.class_ids.to_numpy()) is None
