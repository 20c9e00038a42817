"""Zone rules: an object settles inside (or outside) after ``inertia_frames`` on that side of the
polygon, and each change is a ``zone_enter`` or ``zone_exit`` with the zone's occupancy."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import ZoneRule
from services.rules.geometry import anchor_point, inside_polygon
from services.rules.kinds.base import RuleState, Zone, ZoneTrack
from services.rules.moment import Draft, Moment, Observed

__all__ = ["ZoneState"]


class ZoneState(RuleState):
    config: ZoneRule

    def __init__(self, name: str, config: ZoneRule) -> None:
        super().__init__(name, config)
        self.tracks: dict[int, ZoneTrack] = {}

    def inside(self) -> dict[int, ZoneTrack]:
        return {track_id: state for track_id, state in self.tracks.items() if state.inside}

    def occupancy(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.inside().values():
            assert state.track is not None
            counts[state.track.label] = counts.get(state.track.label, 0) + 1
        return counts

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        drafts = []
        for track in moment.tracks:
            if not self.wants(track):
                continue
            state = self.tracks.setdefault(track.track_id, ZoneTrack())
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

    def _exit(self, track: Observed, state: ZoneTrack, moment: Moment) -> Draft:
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
