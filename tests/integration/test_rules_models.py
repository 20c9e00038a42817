"""The rules service as a process (issue #31): the tracks gauge of a model that stopped sending drops to 0
while another model's stays; an event the uplink refuses leaves rules' outbox for good; made-up model names
and made-up labels do not shut out the site's own objects."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common._compat import timeout
from common.bus import EventReceiver, Publisher
from contracts import Detections, Event, Refusal
from tests.integration.conftest import Services
from tests.support import bus_handshake, frame_ref, http_get, scaled

pytestmark = pytest.mark.slow

MAX_AGE_S = 0.5
LINE = {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}


def _sample(base: str, name: str, labels: dict[str, str]) -> float | None:
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for found in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", http_get(f"{base}/metrics")[1], re.M):
        if set(filter(None, (found.group(1) or "").split(","))) == wanted:
            return float(found.group(2))
    return None


def _detections(model: str, seq: int, y: float = 0.3) -> Detections:
    at_ns = seq * 100_000_000
    ref = frame_ref("dock", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=320, height=240)
    boxes = np.array([[0.45, y - 0.2, 0.55, y]], "<f4")
    return Detections.from_arrays(ref, model, boxes, [0], [0.9], labels={0: "person"})


def test_a_silent_models_tracks_gauge_drops_to_zero(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(
        {"cameras": {"dock": {"url": "rtsp://unused/1", "rules": {"door": LINE}}}, "tracker": {"max_age_s": MAX_AGE_S}}
    )
    site.start("broker")
    base = site.start("rules")

    def tracks(model: str) -> float | None:
        return _sample(base, "edgesight_tracks_active", {"camera": "dock", "model": model})

    async def scenario() -> tuple[float, float | None]:
        async with Publisher(site.config.bus.publish, "test") as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            seq = 0
            async with timeout(scaled(30)):  # both models' person confirmed (rules' subscription may be late)
                while tracks("stops") != 1 or tracks("goes-on") != 1:
                    seq += 1
                    for model in ("stops", "goes-on"):
                        await publisher.publish("detections", "dock", _detections(model, seq))
                    await asyncio.sleep(0.1)
            silent_since = time.monotonic()
            async with timeout(scaled(30)):
                while tracks("stops") != 0:
                    seq += 1
                    await publisher.publish("detections", "dock", _detections("goes-on", seq))
                    await asyncio.sleep(0.1)
            return time.monotonic() - silent_since, tracks("goes-on")

    waited, still_heard = asyncio.run(scenario())
    assert waited >= MAX_AGE_S  # not before the tracker would have given its tracks up
    assert still_heard == 1


def test_a_refused_event_leaves_the_outbox_and_is_not_sent_again(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services({"cameras": {"dock": {"url": "rtsp://unused/1", "rules": {"door": LINE}}}})
    site.start("broker")
    base = site.start("rules")
    outbox = Path(site.config.site.state_dir) / "rules-outbox.sqlite"

    async def cross(events: EventReceiver, start: int) -> str:
        async with Publisher(site.config.bus.publish, "test") as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            for step in range(12):
                await publisher.publish("detections", "dock", _detections("people", start + step, 0.3 + step * 0.05))
                await asyncio.sleep(0.05)
            async with timeout(scaled(30)):
                delivery = await events.receive()
            await events.refuse(delivery.peer, [Refusal(id=delivery.event.id, reason="unknown_rule", detail="test")])
            return delivery.event.id

    async def scenario() -> tuple[str, list[str]]:
        async with EventReceiver(site.config.bus.events.receive, "uplink-standin") as events:
            refused = await cross(events, 1)
            async with timeout(scaled(30)):
                while _sample(base, "edgesight_events_queued", {}) != 0:  # noqa: ASYNC110 - a metric, not an event
                    await asyncio.sleep(0.1)
            labels = {"service": "rules", "reason": "unknown_rule"}
            assert _sample(base, "edgesight_events_refused_total", labels) == 1
            process = site.processes["rules"]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            site.start("rules")  # whatever is left in the outbox is sent again now
            again: list[str] = []
            try:
                async with timeout(scaled(3)):
                    while True:
                        again.append((await events.receive()).event.id)
            except TimeoutError:
                pass
            return refused, again

    refused, again = asyncio.run(scenario())
    assert refused not in again  # before #31: resent until acknowledged, for ever
    with sqlite3.connect(outbox) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE id = ?", (refused,)).fetchone()[0] == 0


def test_made_up_model_names_do_not_shut_out_the_sites_model(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """An attacker's scenario against the process: sixteen made-up model names on detections/dock/
    (kept sending all along), then the site's model sees a person cross the line: it is counted."""
    site = services(
        {
            "models": {"people": {"path": "people.onnx"}},
            "cameras": {"dock": {"url": "rtsp://unused/1", "rules": {"door": LINE}}},
        }
    )
    site.start("broker")
    base = site.start("rules")
    junk = [f"junk-{n}" for n in range(16)]

    def crossed() -> float | None:
        labels = {"camera": "dock", "line": "door", "direction": "in", "label": "person"}
        return _sample(base, "edgesight_line_crossings_total", labels)

    async def scenario() -> tuple[float | None, float | None]:
        # bursts of 17: a queue deeper than the default 8, or ZeroMQ drops the overflow (the person's frames)
        async with Publisher(site.config.bus.publish, "test", hwm=1000) as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            seq = 0
            async with timeout(scaled(30)):  # every made-up name holds a slot (rules' subscription may be late)
                while any(
                    _sample(base, "edgesight_tracks_active", {"camera": "dock", "model": m}) is None for m in junk
                ):
                    seq += 1
                    for model in junk:
                        await publisher.publish("detections", "dock", _still(model, seq))
                    await asyncio.sleep(0.05)
            for step in range(12):
                seq += 1
                await publisher.publish("detections", "dock", _detections("people", seq, 0.3 + step * 0.05))
                for model in junk:  # never silent: their slots are not given up
                    await publisher.publish("detections", "dock", _still(model, seq))
                await asyncio.sleep(0.05)
            async with timeout(scaled(30)):
                while crossed() is None:  # noqa: ASYNC110 - a metric, not an event
                    await asyncio.sleep(0.1)
            dropped = _sample(base, "edgesight_rules_detections_dropped_total", {"camera": "dock", "reason": "models"})
            return crossed(), dropped

    counted, dropped = asyncio.run(scenario())
    assert counted == 1  # before #31: never (every Detections of people dropped for want of a slot)
    assert dropped is None or dropped == 0  # the made-up names fit in the shared slots; people has its own


def _still(model: str, seq: int) -> Detections:
    """A made-up model's person standing still, away from the line."""
    at_ns = seq * 100_000_000
    ref = frame_ref("dock", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=320, height=240)
    boxes = np.array([[0.8, 0.05, 0.9, 0.2]], "<f4")
    return Detections.from_arrays(ref, model, boxes, [0], [0.9], labels={0: "person"})


ZONE = {"type": "zone", "polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 1}
JUNK_LABELS = 300


def _junk(seq: int) -> Detections:
    """A made-up model's 300 boxes of 300 made-up labels, standing still inside ZONE (left of the person)."""
    at_ns = seq * 100_000_000
    ref = frame_ref("dock", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=320, height=240)
    cells = [(n % 19, n // 19) for n in range(JUNK_LABELS)]
    boxes = np.array([[0.045 * x, 0.55 + 0.02 * y, 0.045 * x + 0.03, 0.565 + 0.02 * y] for x, y in cells], "<f4")
    ids = list(range(JUNK_LABELS))
    return Detections.from_arrays(ref, "junk", boxes, ids, [0.9] * len(ids), labels={n: f"junk{n}" for n in ids})


def test_a_person_entering_a_zone_full_of_made_up_labels_is_delivered(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """An attacker's scenario against the process: 300 boxes of 300 labels sit in the zone (from a
    made-up model), then a person walks in: the person's zone_enter reaches the uplink, valid."""
    site = services({"cameras": {"dock": {"url": "rtsp://unused/1", "rules": {"bay": ZONE}}}})
    site.start("broker")
    base = site.start("rules")

    async def scenario() -> Event:
        async with (
            EventReceiver(site.config.bus.events.receive, "uplink-standin") as events,
            Publisher(site.config.bus.publish, "test", hwm=1000) as publisher,
        ):
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            seq = 0
            async with timeout(scaled(30)):  # the junk tracks confirmed (rules' subscription may be late)
                while (_sample(base, "edgesight_tracks_active", {"camera": "dock", "model": "junk"}) or 0) < 256:
                    seq += 1
                    await publisher.publish("detections", "dock", _junk(seq))
                    await asyncio.sleep(0.05)
            for step in range(12):
                seq += 1
                await publisher.publish("detections", "dock", _junk(seq))
                y = 0.3 + step * 0.05
                await publisher.publish("detections", "dock", _person(seq, y))
                await asyncio.sleep(0.05)
            async with timeout(scaled(30)):
                while True:  # acked as the uplink would: the junk's own events come first
                    delivery = await events.receive()
                    await events.ack([delivery])
                    event = delivery.event
                    if event.event_type == "zone_enter" and event.object and event.object.label == "person":
                        return event

    entered = asyncio.run(scenario())
    assert entered.counts["person"] == 1  # before #31: dropped as invalid, never sent (counts of 301 labels)
    assert len(entered.counts) <= 256
    assert sum(entered.counts.values()) == 257  # the junk model's 256 labels tracked, and the person
    assert _sample(base, "edgesight_outbox_dropped_total", {"reason": "invalid"}) in (None, 0.0)
    assert (_sample(base, "edgesight_rules_detections_dropped_total", {"camera": "dock", "reason": "labels"}) or 0) > 0


def _person(seq: int, y: float) -> Detections:
    """A person walking down into ZONE, right of the junk."""
    at_ns = seq * 100_000_000
    ref = frame_ref("dock", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=320, height=240)
    boxes = np.array([[0.9, y - 0.2, 0.98, y]], "<f4")
    return Detections.from_arrays(ref, "people", boxes, [0], [0.9], labels={0: "person"})
