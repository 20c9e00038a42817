"""Dwell rules: one ``dwell`` event per visit of an object that stays ``seconds`` in a zone."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import DwellRule
from services.rules.kinds.base import RuleState, Zone
from services.rules.moment import Draft, Moment

__all__ = ["DwellState"]


class DwellState(RuleState):
    config: DwellRule

    def __init__(self, name: str, config: DwellRule) -> None:
        super().__init__(name, config)
        self.fired: set[tuple[int, float]] = set()  # (track, visit start): one event per visit

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
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
