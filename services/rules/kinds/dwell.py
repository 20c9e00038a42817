"""Dwell rules: one ``dwell`` event per visit of an object that stays ``seconds`` in a zone; and the
time each visit lasted, once it ends, for the rule's dwell histogram (``take_departures``)."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import DwellRule
from services.rules.kinds.base import RuleState, Zone, ZoneTrack
from services.rules.moment import Draft, Moment

__all__ = ["DwellState"]

MAX_DEPARTURES = 4096  # kept until taken; nobody taking them (series off) must not grow without bound


class DwellState(RuleState):
    config: DwellRule

    def __init__(self, name: str, config: DwellRule) -> None:
        super().__init__(name, config)
        self.fired: set[tuple[int, float]] = set()  # (track, visit start): one event per visit
        self.visits: dict[int, tuple[float, str]] = {}  # track -> (visit start, label) of wanted objects inside
        self.departures: list[tuple[str, float]] = []  # (label, seconds inside) of visits ended, until taken

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        drafts = []
        inside = zones[self.config.zone].inside()
        for track_id, state in inside.items():
            track = state.track
            if track is None or not self.wants(track):
                continue
            self.visits.setdefault(track_id, (state.entered, track.label))
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
        self._ended(inside, moment.t)
        return drafts

    def _ended(self, inside: Mapping[int, ZoneTrack], t: float) -> None:
        """Visits that ended with this frame (the object settled outside, or is gone): their lengths."""
        for track_id, (entered, label) in list(self.visits.items()):
            now = inside.get(track_id)
            if now is None or now.entered != entered:
                del self.visits[track_id]
                if len(self.departures) < MAX_DEPARTURES:
                    self.departures.append((label, t - entered))

    def take_departures(self) -> list[tuple[str, float]]:
        """(label, seconds inside) of the visits ended since the last call."""
        taken, self.departures = self.departures, []
        return taken
