"""The rules of one camera: tracked objects in, event drafts out.

Every rule sees the confirmed tracks of each frame (``Moment``) and keeps its own per-object state;
zones are evaluated first, so dwell, crowd, PPE and presence rules can ask which objects are in them.
Times are seconds on the frame's monotonic clock; wall time only decides schedules and timestamps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from common.config import CameraConfig
from common.config.rules import (
    CrowdRule,
    DwellRule,
    LineRule,
    PpeRule,
    PresenceRule,
    ScheduleWindow,
    ZoneRule,
)
from services.rules.geometry import (
    anchor_point,
    depth_past_line,
    inside_polygon,
    overlap_share,
    segment_crossing,
    side_of_line,
)

__all__ = ["CameraRules", "CountStore", "Draft", "Moment", "Observed", "in_schedule"]


@dataclasses.dataclass(frozen=True)
class Observed:
    """One confirmed track in one frame."""

    track_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    origin: tuple[float, float, float, float] | None = None  # the box the tracker first saw it with


@dataclasses.dataclass(frozen=True)
class Moment:
    t: float  # seconds, monotonic (the frame's)
    wall: dt.datetime  # the frame's wall-clock time in the site's time zone
    tracks: Sequence[Observed]
    gone: Sequence[Observed] = ()  # tracks that ended with this frame (their last state)
    items: Sequence[tuple[str, tuple[float, float, float, float]]] = ()  # every detection: for PPE


@dataclasses.dataclass
class Draft:
    """An event decided by a rule; the service adds id, site, timestamps, frame and snapshot."""

    event_type: str
    lifecycle: str
    rule: str
    track: Observed | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_t: float | None = None


class CountStore:
    """Cumulative counts (line crossings); the service gives it a persistent implementation."""

    def __init__(self) -> None:
        # (camera, rule) -> label -> key -> count: a rule's counts are one lookup (a Scene per frame reads them)
        self.counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}

    def set(self, camera: str, rule: str, label: str, key: str, value: int) -> None:
        self.counts.setdefault((camera, rule), {}).setdefault(label, {})[key] = value

    def add(self, camera: str, rule: str, label: str, key: str) -> int:
        value = self.get(camera, rule, label, key) + 1
        self.set(camera, rule, label, key, value)
        return value

    def get(self, camera: str, rule: str, label: str, key: str) -> int:
        return self.counts.get((camera, rule), {}).get(label, {}).get(key, 0)

    def of_rule(self, camera: str, rule: str) -> dict[str, dict[str, int]]:
        """label -> key -> count of one rule of one camera (the store's own: read, do not change)."""
        return self.counts.get((camera, rule), {})


def in_schedule(windows: Iterable[ScheduleWindow], when: dt.datetime) -> bool:
    """Whether ``when`` falls in any window; no windows means always. A window whose end is before its
    start wraps midnight and belongs to the day it starts on."""
    windows = list(windows)
    if not windows:
        return True
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    minute = when.hour * 60 + when.minute
    today, yesterday = days[when.weekday()], days[(when.weekday() - 1) % 7]
    for window in windows:
        start = int(window.start[:2]) * 60 + int(window.start[3:])
        end = int(window.end[:2]) * 60 + int(window.end[3:])
        if start <= end:
            if today in window.days and start <= minute < end:
                return True
        elif (today in window.days and minute >= start) or (yesterday in window.days and minute < end):
            return True
    return False


class _Rule:
    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    def wants(self, track: Observed) -> bool:
        classes = self.config.classes
        return (not classes or track.label in classes) and track.score >= self.config.min_score

    def active(self, moment: Moment) -> bool:
        return in_schedule(self.config.schedule, moment.wall)

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        raise NotImplementedError


@dataclasses.dataclass
class _ZoneTrack:
    inside: bool = False
    streak: int = 0
    entered: float = 0.0
    track: Observed | None = None


class ZoneState(_Rule):
    config: ZoneRule

    def __init__(self, name: str, config: ZoneRule) -> None:
        super().__init__(name, config)
        self.tracks: dict[int, _ZoneTrack] = {}

    def inside(self) -> dict[int, _ZoneTrack]:
        return {track_id: state for track_id, state in self.tracks.items() if state.inside}

    def occupancy(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.inside().values():
            assert state.track is not None
            counts[state.track.label] = counts.get(state.track.label, 0) + 1
        return counts

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        drafts = []
        for track in moment.tracks:
            if not self.wants(track):
                continue
            state = self.tracks.setdefault(track.track_id, _ZoneTrack())
            state.track = track
            now_inside = inside_polygon(anchor_point(track.box, self.config.anchor), self.config.polygon)
            if now_inside == state.inside:
                state.streak = 0
                continue
            state.streak += 1
            if state.streak < self.config.inertia_frames:
                continue
            state.inside, state.streak = now_inside, 0
            if now_inside:
                state.entered = moment.t
                drafts.append(self._draft("zone_enter", "new", track, moment, "outside", "inside"))
            else:
                drafts.append(self._exit(track, state, moment))
        for track in moment.gone:
            gone = self.tracks.pop(track.track_id, None)
            if gone is not None and gone.inside:
                drafts.append(self._exit(track, gone, moment))
        return drafts

    def _exit(self, track: Observed, state: _ZoneTrack, moment: Moment) -> Draft:
        draft = self._draft("zone_exit", "end", track, moment, "inside", "outside")
        draft.attributes["dwell_s"] = round(moment.t - state.entered, 3)
        draft.start_t = state.entered
        return draft

    def _draft(self, kind: str, lifecycle: str, track: Observed, moment: Moment, before: str, after: str) -> Draft:
        return Draft(
            kind,
            lifecycle,
            self.name,
            track,
            counts=self.occupancy(),
            attributes={"zone": self.name, "before": before, "after": after},
            start_t=moment.t,
        )


@dataclasses.dataclass
class _LineTrack:
    side: int  # the side the object was last settled on
    point: tuple[float, float]  # its last anchor on that side
    crossed_to: tuple[float, float] | None = None  # its first anchor on the other side, while undecided
    frames: int = 0  # frames seen on the other side since
    deep: bool = False  # its last anchor there was min_distance past the line
    counted: bool = False


class LineState(_Rule):
    """Counts each object once per line, from the segment between its last anchor on one side and its
    first on the other, however far apart in time (a low frame rate, frames skipped, a track re-found).
    An object first reported by the tracker already past the line is judged from where it was first seen."""

    config: LineRule

    def __init__(self, name: str, config: LineRule, camera: str, store: CountStore) -> None:
        super().__init__(name, config)
        self.camera = camera
        self.store = store
        self.tracks: dict[int, _LineTrack] = {}
        self.in_sign = 1 if config.in_side == "right" else -1
        # A line added or moved by a reload counts from its next frame: the objects then in view start
        # where they are, not where the tracker first saw them (which would count walks made before it existed).
        self.from_now = False

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        drafts = []
        for track in moment.tracks:
            if not self.wants(track):
                continue
            point = anchor_point(track.box, "bottom_center")
            side = side_of_line(point, self.config.line)
            state = self.tracks.get(track.track_id)
            if state is None:
                from_origin = track.origin is not None and not self.from_now
                start = anchor_point(track.origin, "bottom_center") if from_origin else point  # type: ignore[arg-type]
                start_side = side_of_line(start, self.config.line) or side
                if start_side == 0:
                    continue  # on the line: no side yet
                state = self.tracks[track.track_id] = _LineTrack(start_side, start)
            if side == 0:
                continue
            if side == state.side:
                state.point, state.crossed_to, state.frames, state.deep = point, None, 0, False  # jitter back
                continue
            if state.crossed_to is None:
                state.crossed_to = point
            state.frames += 1
            state.deep = depth_past_line(point, track.box, self.config.line) >= self.config.min_distance
            if state.frames >= self.config.min_frames and state.deep:
                drafts.extend(self._settle(state, side, point, track, moment))
        self.from_now = False
        for track in moment.gone:
            state = self.tracks.pop(track.track_id, None)
            if state is not None and state.crossed_to is not None and state.deep:  # vanished well past the line
                point = anchor_point(track.box, "bottom_center")
                drafts.extend(self._settle(state, -state.side, point, track, moment))
        return drafts

    def _settle(
        self, state: _LineTrack, side: int, point: tuple[float, float], track: Observed, moment: Moment
    ) -> list[Draft]:
        """The object now belongs to ``side``; a count if it passed through the segment, once per object."""
        assert state.crossed_to is not None
        crossed_segment = segment_crossing(state.point, state.crossed_to, self.config.line)
        state.side, state.point, state.crossed_to, state.frames, state.deep = side, point, None, 0, False
        if not crossed_segment or state.counted:
            return []  # passed beyond the segment's ends, or this object has been counted on this line
        state.counted = True
        direction = "in" if side == self.in_sign else "out"
        self.store.add(self.camera, self.name, track.label, direction)
        return [
            Draft(
                "line_cross",
                "new",
                self.name,
                track,
                counts=self.counts(track.label),
                attributes={"line": self.name, "direction": direction},
                start_t=moment.t,
            )
        ]

    def counts(self, label: str) -> dict[str, int]:
        return {key: self.store.get(self.camera, self.name, label, key) for key in ("in", "out")}


class DwellState(_Rule):
    config: DwellRule

    def __init__(self, name: str, config: DwellRule) -> None:
        super().__init__(name, config)
        self.fired: set[tuple[int, float]] = set()  # (track, visit start): one event per visit

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        drafts = []
        inside = zones[self.config.zone].inside()
        for track_id, state in inside.items():
            track = state.track
            if track is None or not self.wants(track):
                continue
            visit = (track_id, state.entered)
            stayed = moment.t - state.entered
            if stayed >= self.config.seconds and visit not in self.fired:
                self.fired.add(visit)
                drafts.append(
                    Draft(
                        "dwell",
                        "update",
                        self.name,
                        track,
                        attributes={"zone": self.config.zone, "seconds": round(stayed, 3)},
                        start_t=state.entered,
                    )
                )
        self.fired = {visit for visit in self.fired if visit[0] in inside}
        return drafts


class CrowdState(_Rule):
    config: CrowdRule

    def __init__(self, name: str, config: CrowdRule) -> None:
        super().__init__(name, config)
        self.since: float | None = None
        self.crowded = False

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        tracks = [s.track for s in zones[self.config.zone].inside().values() if s.track and self.wants(s.track)]
        count = len(tracks)
        counts = {"occupancy": count}
        attributes = {"zone": self.config.zone, "min_count": self.config.min_count}
        if count >= self.config.min_count:
            self.since = moment.t if self.since is None else self.since
            if not self.crowded and moment.t - self.since >= self.config.seconds:
                self.crowded = True
                return [Draft("overcrowded", "new", self.name, None, counts, attributes, self.since)]
        else:
            self.since = None
            if self.crowded:
                self.crowded = False
                return [Draft("cleared", "end", self.name, None, counts, attributes, moment.t)]
        return []


class PpeState(_Rule):
    config: PpeRule

    def __init__(self, name: str, config: PpeRule) -> None:
        super().__init__(name, config)
        self.missing_frames: dict[int, int] = {}
        self.reported: set[int] = set()

    def wants(self, track: Observed) -> bool:
        return track.label == self.config.person_class and track.score >= self.config.min_score

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        drafts = []
        people = [t for t in moment.tracks if self.wants(t)]
        if self.config.zone is not None:
            inside = zones[self.config.zone].inside()
            people = [t for t in people if t.track_id in inside]
        for person in people:
            worn = {
                label
                for label, box in moment.items
                if label in self.config.required and overlap_share(box, person.box) >= self.config.overlap
            }
            missing = sorted(set(self.config.required) - worn)
            if not missing:
                self.missing_frames.pop(person.track_id, None)
                self.reported.discard(person.track_id)
                continue
            frames = self.missing_frames[person.track_id] = self.missing_frames.get(person.track_id, 0) + 1
            if frames >= self.config.min_frames and person.track_id not in self.reported:
                self.reported.add(person.track_id)
                attributes = {"missing": ",".join(missing), "zone": self.config.zone}
                drafts.append(Draft("ppe_violation", "new", self.name, person, {}, attributes, moment.t))
        for track in moment.gone:
            self.missing_frames.pop(track.track_id, None)
            self.reported.discard(track.track_id)
        return drafts


class PresenceState(_Rule):
    config: PresenceRule

    def __init__(self, name: str, config: PresenceRule) -> None:
        super().__init__(name, config)
        self.present = False
        self.since = 0.0

    def step(self, moment: Moment, zones: dict[str, ZoneState]) -> list[Draft]:
        tracks = [t for t in moment.tracks if self.wants(t)]
        if self.config.zone is not None:
            inside = zones[self.config.zone].inside()
            tracks = [t for t in tracks if t.track_id in inside]
        attributes = {"zone": self.config.zone}
        if tracks and not self.present:
            self.present, self.since = True, moment.t
            best = max(tracks, key=lambda t: t.score)
            return [Draft("presence", "new", self.name, best, {"count": len(tracks)}, attributes, moment.t)]
        if not tracks and self.present:
            self.present = False
            return [Draft("presence", "end", self.name, None, {"count": 0}, attributes, self.since)]
        return []


class CameraRules:
    """All rules of one camera, in dependency order, with per-object cooldown."""

    def __init__(self, camera: str, config: CameraConfig, store: CountStore) -> None:
        self.camera = camera
        self.zones: dict[str, ZoneState] = {}
        self.rules: list[_Rule] = []
        for name, rule in config.rules.items():
            if isinstance(rule, ZoneRule):
                self.zones[name] = ZoneState(name, rule)
        self.rules.extend(self.zones.values())
        for name, rule in config.rules.items():
            if isinstance(rule, LineRule):
                self.rules.append(LineState(name, rule, camera, store))
            elif isinstance(rule, DwellRule):
                self.rules.append(DwellState(name, rule))
            elif isinstance(rule, CrowdRule):
                self.rules.append(CrowdState(name, rule))
            elif isinstance(rule, PpeRule):
                self.rules.append(PpeState(name, rule))
            elif isinstance(rule, PresenceRule):
                self.rules.append(PresenceState(name, rule))
        # object -> (rule, event type) -> when its last event went out; object -> rules whose start the
        # cooldown dropped. Per object so that an object's state goes when it does: ids never come back.
        self._last_event: dict[int, dict[tuple[str, str], float]] = {}
        self._suppressed: dict[int, set[str]] = {}

    def carry_over(self, old: CameraRules) -> list[str]:
        """Takes the state of every rule of ``old`` whose name, kind and settings this one has unchanged
        (objects in zones, lines' sides, dwell timers, cooldowns): a reload restarts only what changed.
        Returns the names of the rules carried over."""
        previous = {rule.name: rule for rule in old.rules}
        kept = []
        for index, rule in enumerate(self.rules):
            before = previous.get(rule.name)
            if before is not None and type(before) is type(rule) and before.config == rule.config:
                self.rules[index] = before
                if isinstance(before, ZoneState):
                    self.zones[rule.name] = before
                kept.append(rule.name)
            elif isinstance(rule, LineState):
                rule.from_now = True
        self._last_event, self._suppressed = old._last_event, old._suppressed
        return kept

    def line_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """line rule -> label -> {"in", "out"}: cumulative, as stored."""
        return {
            rule.name: rule.store.of_rule(self.camera, rule.name) for rule in self.rules if isinstance(rule, LineState)
        }

    def step(self, moment: Moment) -> list[Draft]:
        drafts: list[Draft] = []
        for rule in self.rules:
            if rule.active(moment):
                drafts.extend(self._cooled(rule, rule.step(moment, self.zones), moment.t))
        for track in moment.gone:
            self._last_event.pop(track.track_id, None)
            self._suppressed.pop(track.track_id, None)
        return drafts

    def tracked_objects(self) -> int:
        """Objects this camera's cooldowns hold state for (bounded by the live tracks)."""
        return len(self._last_event.keys() | self._suppressed.keys())

    def _cooled(self, rule: _Rule, drafts: list[Draft], t: float) -> list[Draft]:
        """Drops an object's repeated events within ``cooldown_s``, and the end of any start it dropped."""
        cooldown = rule.config.cooldown_s
        if not cooldown:
            return drafts
        kept = []
        for draft in drafts:
            if draft.track is None:
                kept.append(draft)  # camera-level events (crowd, presence end) are not per object
                continue
            track_id = draft.track.track_id
            last = self._last_event.setdefault(track_id, {})
            quiet = self._suppressed.setdefault(track_id, set())
            if draft.lifecycle == "end":
                if rule.name in quiet:
                    quiet.discard(rule.name)
                else:
                    kept.append(draft)
            elif t - last.get((rule.name, draft.event_type), -1e18) >= cooldown:
                last[rule.name, draft.event_type] = t
                kept.append(draft)
            else:
                quiet.add(rule.name)
        return kept

    def occupancy(self) -> dict[str, dict[str, int]]:
        return {name: zone.occupancy() for name, zone in self.zones.items()}
