"""The rules service as a process: Detections in, events acknowledged by a stand-in uplink, counts
that survive a restart, snapshots that keep the privacy mask."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from common._compat import timeout
from common.bus import EventReceiver, Publisher, Subscriber
from common.shm import FrameRingWriter, frame_bytes
from contracts import Control, Detections, Event, Scene, topic
from tests.integration.conftest import Services
from tests.support import bus_handshake, control_handshake, scaled

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 320, 240
MASK = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]  # the top-left quarter


def site_sections() -> dict[str, Any]:
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "min_frames": 2, "snapshot": True},
        "bay": {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 2},
    }
    camera = {"url": "rtsp://unused/1", "rules": rules, "privacy_masks": [{"polygon": MASK, "mode": "fill"}]}
    return {
        "cameras": {"dock": camera},
        "tracker": {"min_hits": 2, "max_age_s": 0.5},
        "events": {"jsonl": "events.jsonl"},
    }


async def walk_across(
    site: Services, ring: FrameRingWriter, events: EventReceiver, start_ms: int, expected: int = 3
) -> list[Event]:
    """One person walks down across the line into the bay and leaves; returns the events (acknowledged)."""
    config = site.config
    received: list[Event] = []
    async with Publisher(config.bus.publish, "test") as publisher:
        await bus_handshake(publisher=publisher, bus=config.bus)  # our connection reaches the broker
        for step in range(12):
            y = 0.3 + step * 0.05
            frame = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)  # bright everywhere: the mask must darken it
            ref = ring.write(frame, monotonic_ns=(start_ms + step * 100) * 1_000_000)
            detections = Detections.from_arrays(
                ref, "people", boxes=[[0.45, y - 0.2, 0.55, y]], class_ids=[0], scores=[0.9], labels={0: "person"}
            )
            await publisher.publish("detections", "dock", detections)
            await asyncio.sleep(0.05)
        later = ring.write(np.zeros((HEIGHT, WIDTH, 3), np.uint8), monotonic_ns=(start_ms + 3000) * 1_000_000)
        empty = Detections.from_arrays(later, "people", boxes=np.zeros((0, 4)), class_ids=[], scores=[])
        await publisher.publish("detections", "dock", empty)  # the person has gone: the visit ends
        async with timeout(scaled(30)):
            while len(received) < expected:
                delivery = await events.receive()
                received.append(delivery.event)
                await events.ack([delivery])
    return received


def test_events_snapshots_and_counts_across_a_restart(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(site_sections())
    config = site.config
    site.start("broker")

    async def scenario(start_ms: int) -> list[Event]:
        ring = FrameRingWriter.create(
            "test", "dock", slots=8, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=config.site.shm_dir
        )
        try:
            async with EventReceiver(config.bus.events.receive, "uplink-standin") as events:
                return await walk_across(site, ring, events, start_ms)
        finally:
            ring.close()

    site.start("rules")
    first = asyncio.run(scenario(0))
    crossing = next(e for e in first if e.event_type == "line_cross")
    assert crossing.counts == {"in": 1, "out": 0}
    assert crossing.attributes["direction"] == "in"
    assert crossing.object is not None and crossing.object.label == "person"
    assert crossing.frame is not None and crossing.frame.camera == "dock"
    assert sorted(e.event_type for e in first) == ["line_cross", "zone_enter", "zone_exit"]
    entered = next(e for e in first if e.event_type == "zone_enter")
    left = next(e for e in first if e.event_type == "zone_exit")
    assert (entered.lifecycle, entered.before) == ("new", None)
    assert (left.lifecycle, left.before) == ("end", entered.object)  # Frigate's before/after
    assert left.attributes["before"] == "inside" and left.attributes["after"] == "outside"

    # the snapshot: the masked quarter is the fill value (black), the rest is the frame
    assert crossing.snapshot is not None
    picture = cv2.imdecode(np.frombuffer(crossing.snapshot.data, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (HEIGHT, WIDTH, 3)
    masked_away_from_the_drawn_box = picture[5 : HEIGHT // 2 - 5, 5 : int(WIDTH * 0.4)]
    assert masked_away_from_the_drawn_box.max() <= 8
    assert picture[HEIGHT // 2 + 5 :, int(WIDTH * 0.6) :].min() >= 180  # unmasked, away from the box

    # restart: the cumulative count goes on
    process = site.processes["rules"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    site.start("rules")
    second = asyncio.run(scenario(60_000))
    crossing_again = next(e for e in second if e.event_type == "line_cross")
    assert crossing_again.counts == {"in": 2, "out": 0}
    assert crossing_again.id != crossing.id

    lines = (Path(config.site.state_dir) / "events.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    assert [e["id"] for e in logged if e["event_type"] == "line_cross"] == [crossing.id, crossing_again.id]
    assert logged[0]["snapshot"]["bytes"] > 0 and "data" not in logged[0]["snapshot"]


def test_reload_applies_new_rules_and_keeps_counts(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """A `reload` Control makes rules read the site file again: a new line counts from then on, the
    unchanged line's count goes on, and both show in the Scene; every event also goes out on events/."""
    site = services(site_sections())
    config = site.config
    site.start("broker")
    site.start("rules")

    async def scenario() -> tuple[list[Event], list[Scene], set[str]]:
        ring = FrameRingWriter.create(
            "test", "dock", slots=8, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=config.site.shm_dir
        )
        try:
            async with (
                EventReceiver(config.bus.events.receive, "uplink-standin") as events,
                Subscriber(config.bus.subscribe, "test", [topic("events", "dock"), topic("scene", "dock")]) as local,
                Publisher(config.bus.publish, "test-control") as control,
            ):
                # our subscription and rules' control subscription reach the broker
                await bus_handshake(publisher=control, subscriber=local)
                await control_handshake(control, "rules", site.base("rules"))
                await walk_across(site, ring, events, 0)
                door2 = "      door2: {type: line, line: [[0.0, 0.55], [1.0, 0.55]], min_frames: 2}\n"
                site.site.write_text(site.site.read_text().replace("      door:", door2 + "      door:", 1))
                await control.publish("control", "rules", Control(id="reload-1", command="reload"))
                async with timeout(scaled(30)):
                    while "rules reloaded" not in site.log("rules"):  # noqa: ASYNC110 - a log file, not an event
                        await asyncio.sleep(0.1)
                second = await walk_across(site, ring, events, 60_000, expected=4)
                scenes: list[Scene] = []
                published: set[str] = set()
                async with timeout(scaled(30)):
                    while not {e.id for e in second} <= published or not any("door2" in s.lines for s in scenes):
                        message = (await local.receive()).message
                        if isinstance(message, Scene):
                            scenes.append(message)
                        elif isinstance(message, Event):
                            published.add(message.id)
                return second, scenes, published
        finally:
            ring.close()

    second, scenes, published = asyncio.run(scenario())
    crossings = {e.rule: e.counts for e in second if e.event_type == "line_cross"}
    assert crossings == {"door": {"in": 2, "out": 0}, "door2": {"in": 1, "out": 0}}
    newest = scenes[-1]
    assert newest.lines["door"]["person"].in_ == 2 and newest.lines["door2"]["person"].in_ == 1
    assert set(newest.zones) == {"bay"}
    assert {e.id for e in second} <= published
