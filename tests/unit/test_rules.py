"""Every rule on synthetic tracks with known geometry."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import yaml

from common.config import parse_config
from common.config.rules import ScheduleWindow
from services.rules.counts import CountStore
from services.rules.engine import CameraRules
from services.rules.moment import Draft, Moment, Observed
from services.rules.schedule import in_schedule

MONDAY_NOON = dt.datetime(2026, 11, 23, 12, 0)


def feet(x: float, y: float, track_id: int = 1, label: str = "person", score: float = 0.9) -> Observed:
    """A track whose box has its bottom centre (the default anchor) at (x, y)."""
    return Observed(track_id, label, score, (x - 0.02, y - 0.1, x + 0.02, y))


def camera(rules: dict[str, Any]) -> CameraRules:
    config = parse_config(
        yaml.safe_dump({"site": {"name": "s"}, "cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})
    )
    return CameraRules("cam", config.cameras["cam"], CountStore())


def run(rules: CameraRules, path: list[tuple[float, float]], *, fps: float = 10, gone: bool = True) -> list[Draft]:
    """Walks track 1 along ``path`` (one point per frame); it disappears after the last one."""
    drafts: list[Draft] = []
    for index, (x, y) in enumerate(path):
        drafts += rules.step(Moment(index / fps, MONDAY_NOON, [feet(x, y)]))
    if gone:
        last = feet(*path[-1])
        drafts += rules.step(Moment(len(path) / fps, MONDAY_NOON, [], gone=[last]))
    return drafts


LINE = {"door": {"type": "line", "line": [[0.2, 0.5], [0.8, 0.5]], "in_side": "right", "min_frames": 2}}
DEFAULT_LINE = {"door": {"type": "line", "line": [[0.2, 0.5], [0.8, 0.5]]}}  # min_frames 1, min_distance 0.2


def crossings(drafts: list[Draft]) -> list[str]:
    return [d.attributes["direction"] for d in drafts if d.event_type == "line_cross"]


def test_line_crossing_in_and_out() -> None:
    down = [(0.5, y) for y in (0.3, 0.4, 0.45, 0.55, 0.6, 0.7)]  # walking east, right is down: "in"
    rules = camera(LINE)
    drafts = run(rules, down)
    assert crossings(drafts) == ["in"]
    assert drafts[0].counts == {"in": 1, "out": 0}
    assert crossings(run(camera(LINE), list(reversed(down)))) == ["out"]


def test_moving_along_the_line_or_beyond_its_end_never_counts() -> None:
    along = [(x, 0.45) for x in (0.1, 0.3, 0.5, 0.7, 0.9)]
    assert crossings(run(camera(LINE), along)) == []
    beyond = [(0.9, y) for y in (0.3, 0.4, 0.55, 0.6, 0.7)]  # crosses y=0.5 right of the segment's end
    assert crossings(run(camera(LINE), beyond)) == []


@pytest.mark.parametrize("line", [LINE, DEFAULT_LINE])
def test_jitter_on_the_line_never_counts(line: dict[str, Any]) -> None:
    jitter = [(0.5, 0.49 if i % 2 else 0.51) for i in range(30)]
    assert crossings(run(camera(line), jitter)) == []


def test_a_crossing_two_far_apart_frames_span_counts() -> None:
    """At a low frame rate one frame is before the line and the next well past it."""
    assert crossings(run(camera(DEFAULT_LINE), [(0.5, 0.3), (0.5, 0.8)], fps=2)) == ["in"]


def test_a_crossing_made_before_the_tracker_confirmed_the_object_counts() -> None:
    rules = camera(DEFAULT_LINE)
    first_report = feet(0.5, 0.7)
    seen_first_above = Observed(1, "person", 0.9, first_report.box, origin=feet(0.5, 0.35).box)
    drafts = rules.step(Moment(0.0, MONDAY_NOON, [seen_first_above]))
    assert crossings(drafts) == ["in"]
    assert crossings(run(camera(DEFAULT_LINE), [(0.5, 0.7), (0.5, 0.8)])) == []  # no origin: nothing to judge


def test_an_object_vanishing_just_after_the_line_counts_with_min_frames() -> None:
    door = {"door": {**LINE["door"], "min_frames": 3}}
    assert crossings(run(camera(door), [(0.5, 0.3), (0.5, 0.4), (0.5, 0.6)])) == ["in"]  # counted when it is gone
    assert crossings(run(camera(door), [(0.5, 0.3), (0.5, 0.4), (0.5, 0.6)], gone=False)) == []


@pytest.mark.parametrize(("past", "counted"), [(0.01, False), (0.03, True)])
def test_min_distance_in_box_sizes(past: float, counted: bool) -> None:
    """The feet must get 0.2 of the box's height (0.1 here) past the line: 0.01 is jitter, 0.03 a step."""
    path = [(0.5, 0.45), (0.5, 0.5 + past), (0.5, 0.5 + past)]
    assert crossings(run(camera(DEFAULT_LINE), path, gone=False)) == (["in"] if counted else [])


def test_an_object_is_counted_once_per_line() -> None:
    there_and_back = [(0.5, y) for y in (0.3, 0.4, 0.6, 0.7, 0.8, 0.6, 0.4, 0.3, 0.2)]
    assert crossings(run(camera(LINE), there_and_back)) == ["in"]


ZONE = {"bay": {"type": "zone", "polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 2}}


def test_zone_enter_and_exit_with_inertia() -> None:
    rules = camera(ZONE)
    flicker = [(0.5, 0.4), (0.5, 0.6), (0.5, 0.4)]  # one frame inside: not an entry
    assert run(rules, flicker) == []
    rules = camera(ZONE)
    drafts = run(rules, [(0.5, 0.4), (0.5, 0.6), (0.5, 0.7), (0.5, 0.8), (0.5, 0.3), (0.5, 0.2)])
    assert [(d.event_type, d.lifecycle) for d in drafts] == [("zone_enter", "new"), ("zone_exit", "end")]
    assert drafts[0].counts == {"person": 1} and drafts[0].attributes["after"] == "inside"
    assert drafts[1].attributes["dwell_s"] == pytest.approx(0.3)


@pytest.mark.parametrize(("seconds_inside", "events"), [(4.8, 0), (5.2, 1)])
def test_dwell_just_under_and_over(seconds_inside: float, events: int) -> None:
    rules = camera({**ZONE, "loiter": {"type": "dwell", "zone": "bay", "seconds": 5}})
    frames = int(seconds_inside * 10) + 2  # 2 frames of inertia before the visit starts
    drafts = run(rules, [(0.5, 0.7)] * frames, gone=False)
    dwell = [d for d in drafts if d.event_type == "dwell"]
    assert len(dwell) == events
    if events:
        assert dwell[0].attributes["seconds"] >= 5


def test_crowd_overcrowded_then_cleared() -> None:
    rules = camera({**ZONE, "crowding": {"type": "crowd", "zone": "bay", "min_count": 3, "seconds": 1}})
    drafts: list[Draft] = []
    people = [feet(0.1 * i, 0.7, track_id=i) for i in range(1, 4)]
    for frame in range(20):
        drafts += rules.step(Moment(frame / 10, MONDAY_NOON, people))
    drafts += rules.step(Moment(2.0, MONDAY_NOON, people[:1], gone=people[1:]))
    kinds = [d.event_type for d in drafts if d.rule == "crowding"]
    assert kinds == ["overcrowded", "cleared"]


def ppe_rules() -> CameraRules:
    return camera({"vests": {"type": "ppe", "required": ["vest"], "overlap": 0.5, "min_frames": 3}})


def test_ppe_with_the_item_present_and_absent() -> None:
    person = feet(0.5, 0.8)
    vest = ("vest", (0.485, 0.72, 0.515, 0.76))  # on the torso
    elsewhere = ("vest", (0.1, 0.1, 0.15, 0.15))
    wearing = ppe_rules()
    assert all(not wearing.step(Moment(i / 10, MONDAY_NOON, [person], items=[vest])) for i in range(10))
    without = ppe_rules()
    drafts = [d for i in range(10) for d in without.step(Moment(i / 10, MONDAY_NOON, [person], items=[elsewhere]))]
    assert [(d.event_type, d.attributes["missing"]) for d in drafts] == [("ppe_violation", "vest")]


def test_presence_start_and_end() -> None:
    rules = camera({"anyone": {"type": "presence", "classes": ["person"]}})
    drafts = run(rules, [(0.5, 0.5)] * 3)
    assert [(d.event_type, d.lifecycle) for d in drafts] == [("presence", "new"), ("presence", "end")]


def test_schedules() -> None:
    office = ScheduleWindow(days=["mon", "tue", "wed", "thu", "fri"], start="08:00", end="18:00")
    night = ScheduleWindow(days=["fri"], start="22:00", end="06:00")  # wraps midnight
    assert in_schedule([], MONDAY_NOON)
    assert in_schedule([office], MONDAY_NOON)
    assert not in_schedule([office], MONDAY_NOON.replace(hour=19))
    assert not in_schedule([office], MONDAY_NOON + dt.timedelta(days=5))  # saturday
    friday = MONDAY_NOON + dt.timedelta(days=4)
    assert in_schedule([night], friday.replace(hour=23))
    assert in_schedule([night], (friday + dt.timedelta(days=1)).replace(hour=5))  # saturday 05:00
    assert not in_schedule([night], (friday + dt.timedelta(days=1)).replace(hour=23))
    # a rule outside its schedule says nothing
    rules = camera({"door": {**LINE["door"], "schedule": [{"days": ["sat"]}]}})
    assert crossings(run(rules, [(0.5, y) for y in (0.3, 0.4, 0.6, 0.7)])) == []


def test_cooldown_per_object() -> None:
    rules = camera({**ZONE, "bay": {**ZONE["bay"], "cooldown_s": 60}})
    in_out_in = [(0.5, 0.7)] * 3 + [(0.5, 0.3)] * 3 + [(0.5, 0.7)] * 3
    assert [d.event_type for d in run(rules, in_out_in)] == ["zone_enter", "zone_exit"]  # the second visit is quiet
    rules = camera(ZONE)
    assert [d.event_type for d in run(rules, in_out_in)] == ["zone_enter", "zone_exit", "zone_enter", "zone_exit"]


def test_a_reload_keeps_unchanged_rules_and_a_new_line_counts_from_now() -> None:
    zone = {
        "desk": {"type": "zone", "polygon": [[0.0, 0.0], [1.0, 0.0], [1.0, 0.45], [0.0, 0.45]], "inertia_frames": 1}
    }
    old = camera({**zone, **DEFAULT_LINE})
    store = old.rules[1].store  # type: ignore[attr-defined]
    origin = (0.48, 0.2, 0.52, 0.3)  # where the tracker first saw track 1: above the new line
    walker = lambda y: Observed(1, "person", 0.9, (0.48, y - 0.1, 0.52, y), origin)  # noqa: E731
    assert [d.event_type for d in old.step(Moment(0.0, MONDAY_NOON, [walker(0.4)]))] == ["zone_enter"]

    config = parse_config(
        yaml.safe_dump(
            {
                "site": {"name": "s"},
                "cameras": {
                    "cam": {
                        "url": "rtsp://h/1",
                        "rules": {
                            **zone,
                            **DEFAULT_LINE,
                            "upper": {"type": "line", "line": [[0.2, 0.35], [0.8, 0.35]]},
                        },
                    }
                },
            }
        )
    )
    new = CameraRules("cam", config.cameras["cam"], store)
    assert new.carry_over(old) == ["desk", "door"]
    assert new.zones["desk"] is old.zones["desk"]  # track 1 is still inside: no second zone_enter
    # track 1 is already past "upper" (judged from its origin it would count now); it has not crossed it
    assert new.step(Moment(0.1, MONDAY_NOON, [walker(0.42)])) == []
    # a new object crossing it afterwards counts
    drafts: list[Draft] = []
    for step, y in enumerate((0.25, 0.3, 0.33, 0.4, 0.44)):
        drafts += new.step(Moment(0.2 + step / 10, MONDAY_NOON, [walker(0.43), feet(0.5, y, track_id=2)]))
    assert [(d.rule, d.attributes["direction"]) for d in drafts if d.event_type == "line_cross"] == [("upper", "in")]
