"""Presence rules: ``presence`` new when the first wanted object appears (in the zone, if any), end
when the last has gone."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import PresenceRule
from services.rules.kinds.base import RuleState, Zone
from services.rules.moment import Draft, Moment

__all__ = ["PresenceState"]


class PresenceState(RuleState):
    config: PresenceRule

    def __init__(self, name: str, config: PresenceRule) -> None:
        super().__init__(name, config)
        self.present = False
        self.since = 0.0

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
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
