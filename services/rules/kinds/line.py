"""Line rules: each object counted once per line, in or out, into the camera's ``CountStore``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from common.config.rules import LineRule
from services.rules.counts import CountStore
from services.rules.geometry import anchor_point, depth_past_line, segment_crossing, side_of_line
from services.rules.kinds.base import RuleState, Zone
from services.rules.moment import Draft, Moment, Observed

__all__ = ["LineState"]


@dataclasses.dataclass
class _LineTrack:
    side: int  # the side the object was last settled on
    point: tuple[float, float]  # its last anchor on that side
    crossed_to: tuple[float, float] | None = None  # its first anchor on the other side, while undecided
    frames: int = 0  # frames seen on the other side since
    deep: bool = False  # its last anchor there was min_distance past the line
    counted: bool = False


class LineState(RuleState):
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

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        drafts = []
        for track in moment.tracks:
            if not self.wants(track):
                continue
            point = anchor_point(track.box, "bottom_center")
            side = side_of_line(point, self.config.line)
            state = self.tracks.get(track.track_id)
            if state is None:
                state = self._first_seen(track, point, side)
            if state is None or side == 0:
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

    def _first_seen(self, track: Observed, point: tuple[float, float], side: int) -> _LineTrack | None:
        """An object new to this line starts on the side it was first seen on; none while on the line."""
        from_origin = track.origin is not None and not self.from_now
        start = anchor_point(track.origin, "bottom_center") if from_origin else point  # type: ignore[arg-type]
        start_side = side_of_line(start, self.config.line) or side
        if start_side == 0:
            return None  # on the line: no side yet
        state = self.tracks[track.track_id] = _LineTrack(start_side, start)
        return state

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
        label = self.store.label_for(self.camera, self.name, track.label)  # ``other`` past the line's labels
        self.store.add(self.camera, self.name, label, direction, int(moment.wall.timestamp() * 1e9))
        return [
            Draft(
                "line_cross",
                "new",
                self.name,
                track,
                counts=self.counts(label),
                attributes={"line": self.name, "direction": direction},
                start_t=moment.t,
            )
        ]

    def counts(self, label: str) -> dict[str, int]:
        return {key: self.store.get(self.camera, self.name, label, key) for key in ("in", "out")}
