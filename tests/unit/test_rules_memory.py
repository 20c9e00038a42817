"""Per-object state in the rules service lives as long as its object: a long day of traffic does not
grow it, and a zone's gauge reads 0 for a label once its last object has left."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from common.config import load_config
from contracts import Detections
from services.rules import metrics
from services.rules.kinds import DwellState, LineState, ZoneState
from services.rules.service import RulesService, _outbox_max_bytes
from tests.conftest import write_site
from tests.support import frame_ref

WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def test_state_of_gone_objects_is_pruned_and_occupancy_returns_to_zero(tmp_path: Path) -> None:
    rules = {
        "yard": {"type": "zone", "polygon": WHOLE_FRAME, "classes": ["person", "car"], "cooldown_s": 1},
        "gate": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "cooldown_s": 1},
        "linger": {"type": "dwell", "zone": "yard", "seconds": 0.2},
    }
    site = write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})
    service = RulesService(load_config(site))
    camera = service.cameras["cam"]
    labels = {0: "person", 2: "car"}
    seq = 0

    def frame(boxes: list[tuple[float, float, float, float]], classes: list[int]) -> Detections:
        nonlocal seq
        seq += 1
        ref = frame_ref("cam", seq, capture_ns=seq * 100_000_000, monotonic_ns=seq * 100_000_000, width=640, height=480)
        return Detections.from_arrays(
            ref, "m", boxes=np.array(boxes, "<f4").reshape(-1, 4), class_ids=classes,
            scores=[0.9] * len(classes), labels={c: labels[c] for c in set(classes)},
        )  # fmt: skip

    async def traffic() -> None:
        for wave in range(60):  # 60 objects, one after the other, each crossing the line top to bottom
            label = 2 if wave % 3 == 0 else 0
            for step in range(12):
                y = 0.2 + 0.05 * step
                await service.handle(frame([(0.4, y - 0.1, 0.5, y)], [label]))
            for _ in range(30):  # empty frames: the track ends (max_age_s)
                await service.handle(frame([], []))

    asyncio.run(traffic())
    events = len(service.outbox)
    service.outbox.close()
    service.store.close()
    assert events >= 60 * 3  # enter, cross, exit at least, for every object
    assert camera.last_seen == {}
    assert camera.rules.cooldown.last_event == {}
    assert camera.rules.cooldown.suppressed == {}
    zone, line, dwell = camera.rules.rules
    assert isinstance(zone, ZoneState) and isinstance(line, LineState) and isinstance(dwell, DwellState)
    assert zone.tracks == {} and line.tracks == {} and dwell.fired == set()
    for label in ("person", "car"):
        assert metrics.ZONE_OCCUPANCY.labels("cam", "yard", label)._value.get() == 0  # type: ignore[attr-defined]


def test_local_actions_are_timers_with_a_bound(tmp_path: Path) -> None:
    """A GPIO action used to sleep on a default-executor thread for active_s: a burst of events used
    up the executor. Now it is a timer, and past MAX_RUNNING_ACTIONS actions are dropped and counted."""
    from services.rules.service import MAX_RUNNING_ACTIONS

    gpio = {"type": "gpio", "chip": "/dev/gpiochip-absent", "line": 3, "active_s": 30}
    rules = {"gate": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "actions": [gpio]}}
    site = write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})
    service = RulesService(load_config(site))
    dropped = metrics.ACTIONS_DROPPED.labels("gate", "gpio")
    before = dropped._value.get()  # type: ignore[attr-defined]

    async def burst() -> tuple[int, int]:
        boxes = [(0.01 * i, 0.44, 0.01 * i + 0.008, 0.46) for i in range(90)]  # 90 small objects side by side
        for step in range(20):  # all cross the line together
            dy = 0.005 * step
            moved = [(x1, y1 + dy, x2, y2 + dy) for x1, y1, x2, y2 in boxes]
            ref = frame_ref("cam", step + 1, capture_ns=step * 10**8, monotonic_ns=step * 10**8, width=640, height=480)
            await service.handle(
                Detections.from_arrays(ref, "m", np.array(moved, "<f4"), [0] * 90, [0.9] * 90, labels={0: "person"})
            )
        await asyncio.sleep(0.2)
        running = len(service._actions)
        for task in list(service._actions):
            task.cancel()
        return running, len(asyncio.all_tasks())

    running, _ = asyncio.run(burst())
    service.outbox.close()
    service.store.close()
    assert running == MAX_RUNNING_ACTIONS
    assert dropped._value.get() - before == 90 - MAX_RUNNING_ACTIONS  # type: ignore[attr-defined]


def test_the_outbox_has_its_own_bound_or_the_spools(tmp_path: Path) -> None:
    assert _outbox_max_bytes(load_config(write_site(tmp_path, {"uplink": {"spool": {"max_mb": 7}}}))) == 7 << 20
    both = {"uplink": {"spool": {"max_mb": 7}}, "events": {"outbox_max_mb": 3}}
    assert _outbox_max_bytes(load_config(write_site(tmp_path, both))) == 3 << 20


def test_a_box_past_the_frame_from_another_sender_still_makes_valid_events(tmp_path: Path) -> None:
    """``Detections`` does not bound boxes; an Event's are 0-1, or the uplink would refuse it as invalid."""
    rules = {"gate": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}}
    service = RulesService(
        load_config(write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}}))
    )

    async def cross() -> None:
        for seq in range(1, 13):
            y = 0.2 + 0.05 * seq
            ref = frame_ref("cam", seq, capture_ns=seq * 10**8, monotonic_ns=seq * 10**8, width=640, height=480)
            boxes = np.array([(0.7, y - 0.2, 1.1, y)], "<f4")  # reaches past the right edge
            await service.handle(
                Detections.from_arrays(ref, "m", boxes=boxes, class_ids=[0], scores=[0.9], labels={0: "person"})
            )

    asyncio.run(cross())
    stored = service.outbox.after(0)  # decodes (and so validates) every stored event
    service.outbox.close()
    service.store.close()
    assert [event.event_type for _, event in stored] == ["line_cross"]
    assert all(0.0 <= v <= 1.0 for _, event in stored for v in event.object.box)
